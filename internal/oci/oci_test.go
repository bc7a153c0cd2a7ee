package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type entry struct {
	name string
	typ  byte
	mode int64
	body string
	link string
}

func layerOf(t *testing.T, es ...entry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), Linkname: e.link}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if hdr.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testImage has two layers (the second deletes a file with a whiteout), a
// setuid file, a device node, and a configuration.
func testImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image,
		layerOf(t,
			entry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
			entry{name: "bin/app", typ: tar.TypeReg, mode: 0o755, body: "#!app"},
			entry{name: "bin/su", typ: tar.TypeReg, mode: 0o4755, body: "su"},
			entry{name: "dev/null", typ: tar.TypeChar, mode: 0o666},
			entry{name: "etc/gone", typ: tar.TypeReg, mode: 0o644, body: "x"},
		),
		layerOf(t,
			entry{name: "etc/.wh.gone", typ: tar.TypeReg, mode: 0o644},
			entry{name: "etc/passwd", typ: tar.TypeReg, mode: 0o644, body: "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"},
			entry{name: "bin/app2", typ: tar.TypeLink, link: "bin/app"},
		))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Entrypoint = []string{"/bin/app"}
	cf.Config.Cmd = []string{"serve"}
	cf.Config.Env = []string{"PATH=/bin", "A=1"}
	cf.Config.WorkingDir = "/srv"
	cf.Config.User = "app"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// files lists a flattened stream: name → mode (and link target).
func files(t *testing.T, b []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		v := string(hdr.Typeflag) + " " + strings.TrimLeft(os.FileMode(hdr.Mode).String(), "-")
		if hdr.Linkname != "" {
			v += " -> " + hdr.Linkname
		}
		out[hdr.Name] = v
	}
}

func checkFlat(t *testing.T, img v1.Image) {
	t.Helper()
	if err := Verify(img); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	var buf bytes.Buffer
	ch, err := Flatten(img, &buf)
	if err != nil {
		t.Fatalf("Flatten: %v", err)
	}
	fs := files(t, buf.Bytes())
	if _, ok := fs["rootfs/etc/gone"]; ok {
		t.Errorf("whiteout not applied: rootfs/etc/gone is there")
	}
	if _, ok := fs["rootfs/dev/null"]; ok {
		t.Errorf("device node kept")
	}
	if got := fs["rootfs/bin/su"]; got != "0 rwxr-xr-x" {
		t.Errorf("bin/su = %q, want the setuid bit cleared", got)
	}
	if got := fs["rootfs/bin/app2"]; !strings.HasPrefix(got, "1 ") || !strings.HasSuffix(got, " -> rootfs/bin/app") {
		t.Errorf("bin/app2 = %q, want a hard link to rootfs/bin/app", got)
	}
	if _, ok := fs["rootfs/etc/passwd"]; !ok {
		t.Errorf("etc/passwd missing: %v", fs)
	}
	if ch.SetID != 1 || ch.Devices != 1 {
		t.Errorf("changes = %+v, want 1 setid, 1 device", ch)
	}
	if ch.Users["app"] != "1000:1000" || ch.Users["root"] != "0:0" {
		t.Errorf("users = %v, want app 1000:1000 and root 0:0 from etc/passwd", ch.Users)
	}
	if s := ch.String(); !strings.Contains(s, "setuid/setgid bits cleared on 1 files") {
		t.Errorf("changes say %q", s)
	}
	c, err := ConfigOf(img)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Entrypoint, " ") != "/bin/app" || strings.Join(c.Cmd, " ") != "serve" || c.WorkingDir != "/srv" || c.User != "app" || len(c.Env) != 2 {
		t.Errorf("config = %+v", c)
	}
}

func platform() v1.Platform { return v1.Platform{OS: "linux", Architecture: runtime.GOARCH} }

func serve(t *testing.T) string {
	t.Helper()
	s := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestPullFlatten(t *testing.T) {
	host := serve(t)
	ref := host + "/lab/app:1.0"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, testImage(t)); err != nil {
		t.Fatal(err)
	}
	img, err := Pull(ctx(t), ref, true, platform())
	if err != nil {
		t.Fatal(err)
	}
	img, err = Cache(img, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	checkFlat(t, img)
}

func TestPullErrors(t *testing.T) {
	host := serve(t)
	_, err := Pull(ctx(t), host+"/nothing:here", true, platform())
	if err == nil || !strings.Contains(err.Error(), "pull "+host+"/nothing:here") || !strings.Contains(err.Error(), "check the name") {
		t.Errorf("unknown image: err = %v", err)
	}
	_, err = Pull(ctx(t), "127.0.0.1:1/x:1", true, platform())
	if err == nil || !strings.Contains(err.Error(), "reachable") {
		t.Errorf("unreachable registry: err = %v", err)
	}
}

func TestLoadDockerArchive(t *testing.T) {
	file := filepath.Join(t.TempDir(), "img.tar")
	tag, _ := name.NewTag("lab/app:2")
	if err := tarball.WriteToFile(file, tag, testImage(t)); err != nil {
		t.Fatal(err)
	}
	img, ref, cleanup, err := Load(file)
	defer cleanup()
	if err != nil {
		t.Fatal(err)
	}
	if ref != "index.docker.io/lab/app:2" && ref != "lab/app:2" {
		t.Errorf("ref = %q", ref)
	}
	checkFlat(t, img)
}

func TestLoadOCIArchive(t *testing.T) {
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(testImage(t), layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "lab/app:3"})); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "img.tar")
	tarDir(t, dir, file)
	img, ref, cleanup, err := Load(file)
	defer cleanup()
	if err != nil {
		t.Fatal(err)
	}
	if ref != "lab/app:3" {
		t.Errorf("ref = %q", ref)
	}
	checkFlat(t, img)
}

// A layer whose bytes do not match its digest is refused.
func TestDigestMismatchRefused(t *testing.T) {
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	img := testImage(t)
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	d, _ := ls[0].Digest()
	blob := filepath.Join(dir, "blobs", d.Algorithm, d.Hex)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "img.tar")
	tarDir(t, dir, file)
	img2, _, cleanup, err := Load(file)
	defer cleanup()
	if err != nil {
		t.Fatal(err)
	}
	err = Verify(img2)
	if err == nil || !strings.Contains(err.Error(), "does not match its digest") || !strings.Contains(err.Error(), d.String()) {
		t.Errorf("Verify of a corrupt layer: err = %v", err)
	}
}

func TestLoadNotAnArchive(t *testing.T) {
	file := filepath.Join(t.TempDir(), "x.tar")
	os.WriteFile(file, []byte("hello"), 0o644)
	_, _, cleanup, err := Load(file)
	cleanup()
	if err == nil || !strings.Contains(err.Error(), "not an image archive") {
		t.Errorf("err = %v", err)
	}
}

func tarDir(t *testing.T, dir, file string) {
	t.Helper()
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		hdr, _ := tar.FileInfoHeader(fi, "")
		hdr.Name = rel
		if fi.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			tw.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tw.Close()
}

// corrupting serves a registry whose blob with the given digest comes
// back with one byte changed.
type corrupting struct {
	h      http.Handler
	digest string
}

func (c corrupting) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+c.digest) {
		c.h.ServeHTTP(w, r)
		return
	}
	rec := httptest.NewRecorder()
	c.h.ServeHTTP(rec, r)
	b := rec.Body.Bytes()
	if len(b) > 0 {
		b[len(b)/2] ^= 0xff
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(b)
}

// A registry that serves a layer not matching its digest: the pull fails
// before anything is flattened.
func TestPullDigestMismatchRefused(t *testing.T) {
	img := testImage(t)
	ls, _ := img.Layers()
	d, _ := ls[1].Digest()
	s := httptest.NewServer(corrupting{registry.New(registry.Logger(log.New(io.Discard, "", 0))), d.String()})
	t.Cleanup(s.Close)
	ref := strings.TrimPrefix(s.URL, "http://") + "/lab/app:1"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	pulled, err := Pull(ctx(t), ref, true, platform())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Cache(pulled, t.TempDir())
	if err == nil {
		err = Verify(pulled)
	}
	if err == nil || !strings.Contains(err.Error(), d.Hex) {
		t.Errorf("pull of a corrupt layer: err = %v, want an error naming %s", err, d)
	}
}
