package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/coat-project/coat/internal/oci"
	"github.com/coat-project/coat/internal/store"
)

// pushed serves a one-layer image at REGISTRY/lab/app:1 and returns the
// record the CLI would have written for it.
func pushed(t *testing.T) store.Image {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "bin/sh", Typeflag: tar.TypeReg, Mode: 0o755, Size: 5})
	tw.Write([]byte("shell"))
	tw.Close()
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", goruntime.GOARCH
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/lab/app:1"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithTransport(http.DefaultTransport)); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	var flat bytes.Buffer
	if _, err := oci.Flatten(img, &flat); err != nil {
		t.Fatal(err)
	}
	return store.Image{Name: ref, Source: ref, Digest: d.String(), RootfsDigest: sha(flat.Bytes()), Insecure: true}
}

// A host that lacks an image pulls it from its registry, flattened as the
// CLI did, only if it is the image recorded; otherwise nothing stays.
func TestPullImage(t *testing.T) {
	good := pushed(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	old := registryAnswer
	registryAnswer = 300 * time.Millisecond
	t.Cleanup(func() { registryAnswer = old })

	moved, badFlat, gone, mute := good, good, good, good
	moved.Digest = "sha256:" + strings.Repeat("0", 64)
	badFlat.RootfsDigest = "sha256:" + strings.Repeat("1", 64)
	gone.Source = "127.0.0.1:1/lab/app:1"
	mute.Source = silent.Addr().String() + "/lab/app:1"
	for _, tc := range []struct {
		what string
		rec  store.Image
		want string
	}{
		{"the image recorded", good, ""},
		{"the tag moved", moved, "not the image recorded"},
		{"flattened differently", badFlat, "the image's record says sha256:1111"},
		{"registry unreachable", gone, "connect"},
		{"registry silent", mute, "did not answer within 300ms"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			a, _ := badInputAgent(t)
			n, err := a.pullImage(context.Background(), tc.rec.Source, tc.rec, "app")
			if tc.want == "" {
				if err != nil || n <= 0 || !a.rt.HasImage("app") {
					t.Fatalf("pull: %d bytes, %v; installed %v", n, err, a.rt.HasImage("app"))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("pull: %v, want an error with %q", err, tc.want)
			}
			if tc.what == "flattened differently" && !errors.Is(err, errBadCopy) {
				t.Errorf("%v is not errBadCopy", err)
			}
			if a.rt.HasImage("app") {
				t.Errorf("installed")
			}
			if l := leftovers(t, a); len(l) != 0 {
				t.Errorf("left %v", l)
			}
		})
	}
}

func TestRegistryRef(t *testing.T) {
	for _, tc := range []struct {
		rec  store.Image
		want string
	}{
		{store.Image{Source: "127.0.0.1:5000/lab/app:1", Digest: "sha256:x"}, "127.0.0.1:5000/lab/app:1"},
		{store.Image{Source: "/tmp/app.tar", Digest: "sha256:x"}, ""},  // loaded from an archive
		{store.Image{Source: "/var/lib/coat/labs/.images/sample"}, ""}, // imported from a directory
		{store.Image{Source: "docker.io/library/busybox"}, ""},         // no manifest digest to check
	} {
		if got := registryRef(tc.rec); got != tc.want {
			t.Errorf("registryRef(%+v) = %q, want %q", tc.rec, got, tc.want)
		}
	}
}
