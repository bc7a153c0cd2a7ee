package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	goruntime "runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/zstd"

	"github.com/coat-project/coat/internal/pki"
	"github.com/coat-project/coat/internal/store"
	"github.com/coat-project/coat/internal/transfer"
)

// tarLayer is an OCI layer of entries: name -> content (a name ending in
// '/' is a directory).
func tarLayer(t *testing.T, entries ...[2]string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e[0], Mode: 0o755, Size: int64(len(e[1])), Typeflag: tar.TypeReg}
		if strings.HasSuffix(e[0], "/") {
			hdr.Typeflag, hdr.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e[1]))
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// layeredImage is layers (bottom first) with the sample server as its
// command.
func layeredImage(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", goruntime.GOARCH
	cf.Config.Entrypoint = []string{"/bin/coat-sample"}
	cf.Config.Cmd = []string{"server", "--data", "/srv/data"}
	cf.Config.Env = []string{"PATH=/bin"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// lyingLayer is a layer whose compressed blob is sound (the registry and
// go-containerregistry accept it) but whose diffID, as the image's
// configuration records it, is not its content's.
type lyingLayer struct{ v1.Layer }

func (lyingLayer) DiffID() (v1.Hash, error) {
	return v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("e", 64)}, nil
}

// layerList lists a host's layers/ directory.
func (l *testLab) layerList(host string) []string {
	ents, _ := os.ReadDir(filepath.Join("/var/lib/coat/labs", l.name, host, "layers"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// Two images sharing a base layer are stored with the base once per host;
// a container of one migrates to a host that has the base but not its
// top layer, and only that layer moves (from the registry), before the
// freeze, the container's stream intact and its whiteouts kept. A digest
// reference is pulled and run; an image whose layer does not match its
// digest is refused with nothing changed.
func TestLayersSharedAndMigrated(t *testing.T) {
	requireRoot(t)
	bin, err := os.ReadFile(filepath.Join(binDir, "coat-sample"))
	if err != nil {
		t.Fatalf("bin/coat-sample: %v (run `make build`)", err)
	}
	base := tarLayer(t, [2]string{"bin/", ""}, [2]string{"etc/", ""}, [2]string{"srv/", ""}, [2]string{"var/cache/", ""},
		[2]string{"bin/coat-sample", string(bin)}, [2]string{"etc/motd", "base\n"}, [2]string{"var/cache/old", "old\n"},
		[2]string{"etc/passwd", "root:x:0:0::/root:/bin/sh\n"}, [2]string{"etc/group", "root:x:0:\n"})
	top1 := tarLayer(t, [2]string{"app/", ""}, [2]string{"app/one", "1\n"}, [2]string{"etc/.wh.motd", ""},
		[2]string{"var/cache/", ""}, [2]string{"var/cache/.wh..wh..opq", ""}, [2]string{"var/cache/new", "new\n"})
	top2 := tarLayer(t, [2]string{"app/", ""}, [2]string{"app/two", "2\n"})

	l := newLab(t, 2)
	ln, err := net.Listen("tcp", fmt.Sprintf("10.201.%d.1:0", l.labIndex()))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	reg := ln.Addr().String()
	push := func(ref string, img v1.Image) {
		t.Helper()
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img, remote.WithTransport(http.DefaultTransport)); err != nil {
			t.Fatal(err)
		}
	}
	one, two := reg+"/lab/one:1", reg+"/lab/two:1"
	img2 := layeredImage(t, base, top2)
	push(one, layeredImage(t, base, top1))
	push(two, img2)
	key := func(ref string) string { return strings.NewReplacer(":", "@", "/", "+").Replace(ref) }

	out := l.must("image", "pull", "--insecure", one)
	if !strings.Contains(out, "imported on edge-2: 2 of 2 layers sent") {
		t.Errorf("pull %s:\n%s", one, out)
	}
	out = l.must("image", "pull", "--insecure", two)
	if !strings.Contains(out, "imported on edge-1: 1 of 2 layers sent") || !strings.Contains(out, "1 already there") {
		t.Errorf("pull %s: the base layer was sent again:\n%s", two, out)
	}
	for _, h := range []string{"edge-1", "edge-2"} {
		l1, l2 := l.layersOf(h, key(one)), l.layersOf(h, key(two))
		if len(l1) != 2 || len(l2) != 2 || l1[0] != l2[0] || l1[1] == l2[1] {
			t.Fatalf("%s: layers %v and %v, want 2 each sharing the base", h, l1, l2)
		}
		n := 0
		for _, d := range l.layerList(h) {
			if d == filepath.Base(l1[0]) {
				n++
			}
		}
		t.Logf("%s: the 2+2 layers of %s and %s stored as 3, the base (%s) %d time(s)", h, one, two, filepath.Base(l1[0])[:19], n)
	}
	ls := l.must("image", "ls")
	t.Logf("coat image ls:\n%s", ls)
	for _, line := range strings.Split(ls, "\n") {
		if strings.HasPrefix(line, one+" ") && (!strings.Contains(line, " 2 ") || strings.Contains(line, " 0 B ")) {
			t.Errorf("image ls does not show 2 layers, part shared: %q", line)
		}
	}

	// A container of one, as root (see TestOCIPullRunMigrate); its
	// top layer's whiteouts hide the base's etc/motd and var/cache/old.
	l.must("run", "--host", "edge-1", "--name", "app", "--user", "0", one)
	c := l.get("app")
	l.waitCtl(c.IP)
	seen := func(where string) {
		t.Helper()
		root := fmt.Sprintf("/proc/%d/root", l.pid("app"))
		for p, want := range map[string]bool{"app/one": true, "var/cache/new": true, "etc/motd": false, "var/cache/old": false, "bin/coat-sample": true} {
			if _, err := os.Lstat(filepath.Join(root, p)); (err == nil) != want {
				t.Errorf("%s: /%s present %v, want %v", where, p, err == nil, want)
			}
		}
	}
	seen("on edge-1")
	if v, err := l.ctl(c.IP, "put", "k", "v"); err != nil || v != "ok" {
		t.Fatalf("put: %q, %v", v, err)
	}
	// edge-2 loses one's top layer (two still uses the base).
	l.must("image", "rm", "--host", "edge-2", one)
	if got := l.layerList("edge-2"); has(got, filepath.Base(l.layersOf("edge-1", key(one))[1])) || !has(got, filepath.Base(l.layersOf("edge-2", key(two))[0])) {
		t.Errorf("edge-2's layers after rm: %v, want the base kept and one's top gone", got)
	}
	cmd, sout := l.startStream(c.IP, 5*time.Second)
	time.Sleep(time.Second)
	res := l.migrateImage("app", "edge-2")
	t.Logf("app to edge-2: %d bytes of layers from %s in %.0f ms before the freeze; downtime %.0f ms of %.0f ms",
		res.ImageFetchBytes, res.ImageFetchedFrom, res.ImageFetchMS, res.DowntimeMS, res.TotalMS)
	topSize, _ := top1.Size()
	if res.ImageFetchedFrom != one || res.ImageFetchBytes != topSize {
		t.Errorf("migrate --json: %+v, want only the top layer (%d bytes) from %s", res, topSize, one)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stream client: %v\n%s", err, sout)
	}
	if sr := parseStream(t, sout); sr.ConnectionError != "" || sr.Errors != 0 || sr.Sent == 0 || sr.Received != sr.Sent {
		t.Fatalf("stream: %+v", sr)
	}
	l.waitCtl(c.IP)
	if v, err := l.ctl(c.IP, "get", "k"); err != nil || v != "v" {
		t.Errorf("after migrate: get k = %q, %v", v, err)
	}
	seen("on edge-2")

	// By digest: every layer is there already.
	d, err := img2.Digest()
	if err != nil {
		t.Fatal(err)
	}
	byDigest := reg + "/lab/two@" + d.String()
	if out := l.must("image", "pull", "--insecure", byDigest); !strings.Contains(out, "0 of 2 layers sent") {
		t.Errorf("pull %s:\n%s", byDigest, out)
	}
	if out, err := l.coat("image", "pull", "--insecure", reg+"/lab/two@sha256:"+strings.Repeat("0", 64)); err == nil {
		t.Errorf("pull of an unknown digest succeeded:\n%s", out)
	}
	l.must("run", "--host", "edge-2", "--name", "dig", "--user", "0", byDigest)
	l.waitCtl(l.get("dig").IP)
	if ls := l.must("image", "ls"); !strings.Contains(ls, byDigest) {
		t.Errorf("image ls lacks %s:\n%s", byDigest, ls)
	}

	// A layer that does not hash to the diffID the image's configuration
	// gives: refused before any host is asked.
	three := tarLayer(t, [2]string{"app/three", "3\n"})
	bad := layeredImage(t, base, lyingLayer{three})
	push(reg+"/lab/bad:1", bad)
	before := [2][]string{l.layerList("edge-1"), l.layerList("edge-2")}
	out, err = l.coat("image", "pull", "--insecure", reg+"/lab/bad:1")
	if err == nil || !strings.Contains(out, "does not match its digest") {
		t.Errorf("pull of a corrupt layer: %v\n%s", err, out)
	}
	t.Logf("corrupt layer refused: %s", strings.TrimSpace(out))
	if after := [2][]string{l.layerList("edge-1"), l.layerList("edge-2")}; fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("a refused image changed the layers: %v, then %v", before, after)
	}
	if ls := l.must("image", "ls"); strings.Contains(ls, "lab/bad") {
		t.Errorf("a refused image is listed:\n%s", ls)
	}
	l.noImage("edge-1", key(reg+"/lab/bad:1"))
}

// An image an agent made before layers (a flattened rootfs with its kept
// stream, and a record with only rootfs_digest) still runs and migrates:
// the destination copies the whole flattened stream, as before.
func TestFlattenedImageRunsAndMigrates(t *testing.T) {
	requireRoot(t)
	l := newLab(t, 2)
	// "old" on edge-1, as such an agent kept it: the sample image's
	// files under images/old/rootfs, its stream and the stream's digest.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if _, err := transfer.Pack(tw, filepath.Join(l.layersOf("edge-1", "sample")[0], "rootfs"), "rootfs/", false); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	sum := sha256.Sum256(buf.Bytes())
	digest := "sha256:" + hex.EncodeToString(sum[:])
	dir := l.imageDir("edge-1", "old")
	if _, err := transfer.Unpack(tar.NewReader(bytes.NewReader(buf.Bytes())), map[string]transfer.Dest{"rootfs/": {Dir: filepath.Join(dir, "rootfs")}}); err != nil {
		t.Fatal(err)
	}
	zw, _ := zstd.NewWriter(nil)
	if err := os.WriteFile(filepath.Join(dir, "rootfs.tar.zst"), zw.EncodeAll(buf.Bytes(), nil), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "digest"), []byte(digest+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tc, err := pki.FilesFor(filepath.Join(secLabDir(l), "pki"), "cli").ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	st := store.NewEtcd(authzEtcd(t, secState(t, l).EtcdURL, tc), "/coat/", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.PutImage(ctx, store.Image{Name: "old", Source: "/old", Size: int64(buf.Len()), RootfsDigest: digest, Created: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	if ls := l.must("image", "ls"); !strings.Contains(ls, "flat") {
		t.Errorf("image ls does not show old as flat:\n%s", ls)
	}

	l.must("run", "--host", "edge-1", "--name", "svc", "--image", "old", "--", "/bin/coat-sample", "server")
	c := l.get("svc")
	l.waitCtl(c.IP)
	if v, err := l.ctl(c.IP, "put", "k", "v"); err != nil || v != "ok" {
		t.Fatalf("put: %q, %v", v, err)
	}
	res := l.migrateImage("svc", "edge-2")
	t.Logf("flattened image to edge-2: %d bytes from %s in %.0f ms; downtime %.0f ms", res.ImageFetchBytes, res.ImageFetchedFrom, res.ImageFetchMS, res.DowntimeMS)
	if res.ImageFetchedFrom != "edge-1" || res.ImageFetchBytes <= 0 {
		t.Errorf("migrate --json: %+v, want the flattened image copied from edge-1", res)
	}
	l.waitCtl(c.IP)
	if v, err := l.ctl(c.IP, "get", "k"); err != nil || v != "v" {
		t.Errorf("after migrate: get k = %q, %v", v, err)
	}
	if _, err := os.Stat(filepath.Join(l.imageDir("edge-2", "old"), "rootfs", "bin", "coat-sample")); err != nil {
		t.Errorf("edge-2 lacks the flattened copy: %v", err)
	}
	l.must("rm", "svc")
	l.must("image", "rm", "old")
	l.noImage("edge-1", "old")
	l.noImage("edge-2", "old")
}
