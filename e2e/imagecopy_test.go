package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// imageResult is what `coat migrate --json` says of the image.
type imageResult struct {
	DowntimeMS         float64 `json:"downtime_ms"`
	TotalMS            float64 `json:"total_ms"`
	ImageName          string  `json:"image_name"`
	ImageFetchMS       float64 `json:"image_fetch_ms"`
	ImageFetchBytes    int64   `json:"image_fetch_bytes"`
	ImageFetchedFrom   string  `json:"image_fetched_from"`
	ImageRegistryError string  `json:"image_registry_error"`
}

func (l *testLab) migrateImage(name, to string) imageResult {
	l.t.Helper()
	out := l.must("migrate", name, "--to", to, "--json")
	var r imageResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		l.t.Fatalf("migrate --json: %v\n%s", err, out)
	}
	return r
}

// imageDir is where host keeps image key.
func (l *testLab) imageDir(host, key string) string {
	return filepath.Join("/var/lib/coat/labs", l.name, host, "images", key)
}

// layersOf are the layer directories of image key on host, bottom
// first (none: the host lacks it, or holds it flattened).
func (l *testLab) layersOf(host, key string) []string {
	l.t.Helper()
	b, err := os.ReadFile(filepath.Join(l.imageDir(host, key), "layers.json"))
	if err != nil {
		return nil
	}
	var il struct {
		Layers []string `json:"layers"`
	}
	if err := json.Unmarshal(b, &il); err != nil {
		l.t.Fatalf("%s: image %s: layers.json: %v", host, key, err)
	}
	var out []string
	for _, d := range il.Layers {
		out = append(out, filepath.Join("/var/lib/coat/labs", l.name, host, "layers", strings.Replace(d, ":", "-", 1)))
	}
	return out
}

// imageHas fails the test unless host holds image key with file (a path
// in the image) in one of its layers.
func (l *testLab) imageHas(host, key, file string) {
	l.t.Helper()
	for _, d := range l.layersOf(host, key) {
		if _, err := os.Lstat(filepath.Join(d, "rootfs", file)); err == nil {
			return
		}
	}
	l.t.Errorf("image %s on %s: no layer holds %s", key, host, file)
}

// noImage fails the test if host holds image key, or the remains of a
// copy of it.
func (l *testLab) noImage(host, key string) {
	l.t.Helper()
	if _, err := os.Stat(l.imageDir(host, key)); !os.IsNotExist(err) {
		l.t.Errorf("%s holds image %s (%v)", host, key, err)
	}
	m, _ := filepath.Glob(filepath.Join(l.imageDir(host, ".tmp-*")))
	m2, _ := filepath.Glob(filepath.Join("/var/lib/coat/labs", l.name, host, "layers", ".tmp-*"))
	if m = append(m, m2...); len(m) > 0 {
		l.t.Errorf("%s holds the remains of image copies: %v", host, m)
	}
}

// A streaming container migrates to a host that lacks its image: the
// destination copies it from the source before the freeze (its own
// phase, not part of the downtime), and the stream loses no byte. Back
// again the same way, and once more to a host that has it: nothing copied.
func TestMigrateCopiesImage(t *testing.T) {
	requireRoot(t)
	l := newLab(t, 2)
	c := l.runSample("svc", "edge-1")
	if out, err := l.coat("image", "rm", "--host", "edge-1", "sample"); err == nil || !strings.Contains(out, "used by container svc on edge-1") {
		t.Errorf("image rm --host of an image in use there: %v\n%s", err, out)
	}
	if out := l.must("image", "rm", "--host", "edge-2", "sample"); !strings.Contains(out, "image sample removed from edge-2") {
		t.Errorf("image rm --host output:\n%s", out)
	}
	l.noImage("edge-2", "sample")

	cmd, out := l.startStream(c.IP, 7*time.Second)
	time.Sleep(1500 * time.Millisecond)
	human := l.must("migrate", "svc", "--to", "edge-2")
	t.Logf("coat migrate svc --to edge-2:\n%s", human)
	img, ckpt := strings.Index(human, "image-ready"), strings.Index(human, "checkpointed")
	if img < 0 || ckpt < 0 || img > ckpt {
		t.Errorf("the image-ready phase is not reported before the freeze (checkpointed):\n%s", human)
	}
	if !strings.Contains(human, "image sample copied from edge-1 to edge-2 before the freeze") {
		t.Errorf("the output does not say the image was copied:\n%s", human)
	}
	if got := l.get("svc"); got.Host != "edge-2" || got.Status != "running" {
		t.Fatalf("after the migration: %s on %s, want running on edge-2", got.Status, got.Host)
	}
	l.imageHas("edge-2", "sample", "bin/coat-sample")

	// Back to edge-1, which no longer has it either.
	l.must("image", "rm", "--host", "edge-1", "sample")
	l.noImage("edge-1", "sample")
	time.Sleep(time.Second)
	r := l.migrateImage("svc", "edge-1")
	t.Logf("back to edge-1: image %s copied from %s, %d bytes in %.0f ms; downtime %.0f ms of %.0f ms",
		r.ImageName, r.ImageFetchedFrom, r.ImageFetchBytes, r.ImageFetchMS, r.DowntimeMS, r.TotalMS)
	if r.ImageName != "sample" || r.ImageFetchedFrom != "edge-2" || r.ImageFetchBytes <= 0 || r.ImageFetchMS <= 0 {
		t.Errorf("migrate --json on the image: %+v, want sample copied from edge-2", r)
	}

	if err := cmd.Wait(); err != nil {
		t.Fatalf("stream client failed: %v\n%s", err, out)
	}
	sr := parseStream(t, out)
	if sr.ConnectionError != "" || sr.Errors != 0 || sr.Sent == 0 || sr.Received != sr.Sent {
		t.Fatalf("client side: %+v", sr)
	}
	if s := l.stats(c.IP); s.Connections != 1 || s.Errors != 0 || s.Bytes != sr.Sent {
		t.Fatalf("server side: %+v, want 1 connection, 0 errors, %d bytes", s, sr.Sent)
	}

	// edge-2 kept its copy: nothing to copy this time.
	if r := l.migrateImage("svc", "edge-2"); r.ImageFetchBytes != 0 || r.ImageFetchMS != 0 || r.ImageFetchedFrom != "" {
		t.Errorf("migration to a host that has the image: %+v, want nothing copied", r)
	}
}

// A copy of the image that does not match its record's digest is refused
// before the freeze: the container runs on at the source, its stream
// intact, and the destination keeps nothing.
func TestMigrateRefusesBadImageCopy(t *testing.T) {
	requireRoot(t)
	l := newLab(t, 2)
	c := l.runSample("svc", "edge-1")
	l.must("image", "rm", "--host", "edge-2", "sample")
	// The source's kept copy of sample's layer is swapped for another
	// image's.
	kept := filepath.Join(l.layersOf("edge-1", "sample")[0], "layer.tar.zst")
	other, err := os.ReadFile(filepath.Join(l.layersOf("edge-1", "sockperf")[0], "layer.tar.zst"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kept, other, 0o600); err != nil {
		t.Fatal(err)
	}

	cmd, out := l.startStream(c.IP, 4*time.Second)
	time.Sleep(time.Second)
	res, err := l.coat("migrate", "svc", "--to", "edge-2")
	if err == nil {
		t.Fatalf("migration with a bad image copy succeeded:\n%s", res)
	}
	t.Logf("coat migrate svc --to edge-2:\n%s", res)
	for _, want := range []string{"copy image sample from edge-1", "the stream received has digest sha256:", "the layer was not kept", "rolled back: the container still runs on the source"} {
		if !strings.Contains(res, want) {
			t.Errorf("error does not say %q:\n%s", want, res)
		}
	}
	if strings.Contains(res, "abort on destination") || strings.Contains(res, "forbidden") {
		t.Errorf("the rollback was not clean:\n%s", res)
	}
	if strings.Contains(res, "checkpointed") {
		t.Errorf("the container was frozen:\n%s", res)
	}
	if got := l.get("svc"); got.Host != "edge-1" || got.Status != "running" {
		t.Errorf("after the refused migration: %s on %s, want running on edge-1", got.Status, got.Host)
	}
	l.noImage("edge-2", "sample")
	if m, _ := filepath.Glob(filepath.Join("/var/lib/coat/labs", l.name, "edge-2", "incoming", "svc")); len(m) > 0 {
		t.Errorf("edge-2 kept the migration's directory: %v", m)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stream client failed: %v\n%s", err, out)
	}
	if sr := parseStream(t, out); sr.ConnectionError != "" || sr.Errors != 0 || sr.Sent == 0 || sr.Received != sr.Sent {
		t.Fatalf("stream: %+v", sr)
	}
}

// A host that lacks an image pulled from a registry pulls it from there
// (the registry listens on the lab's bridge, which the hosts reach);
// with the registry gone, it copies it from the source agent instead.
func TestMigratePullsImageFromRegistry(t *testing.T) {
	requireRoot(t)
	l := newLab(t, 2)
	ln, err := net.Listen("tcp", fmt.Sprintf("10.201.%d.1:0", l.labIndex()))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	ref := ln.Addr().String() + "/lab/app:1"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, sampleOCIImage(t), remote.WithTransport(http.DefaultTransport)); err != nil {
		t.Fatal(err)
	}
	l.must("image", "pull", "--insecure", ref)
	key := strings.NewReplacer(":", "@", "/", "+").Replace(ref)
	// As root: a non-root container cannot migrate where root lacks
	// CAP_SYS_RESOURCE (see TestOCIPullRunMigrate).
	l.must("run", "--host", "edge-1", "--name", "app", "--user", "0", ref)
	c := l.get("app")
	l.waitCtl(c.IP)
	if out, err := l.ctl(c.IP, "put", "k", "v"); err != nil || out != "ok" {
		t.Fatalf("put: %q, %v", out, err)
	}
	l.must("image", "rm", "--host", "edge-2", ref)
	l.noImage("edge-2", key)

	res := l.migrateImage("app", "edge-2")
	t.Logf("to edge-2: %d bytes from %s in %.0f ms", res.ImageFetchBytes, res.ImageFetchedFrom, res.ImageFetchMS)
	if res.ImageFetchedFrom != ref || res.ImageFetchBytes <= 0 {
		t.Errorf("migrate --json: %+v, want the image pulled from %s", res, ref)
	}
	l.waitCtl(c.IP)

	// The registry gone, the image comes from the source agent.
	srv.Close()
	l.must("image", "rm", "--host", "edge-1", ref)
	res = l.migrateImage("app", "edge-1")
	t.Logf("back to edge-1: %d bytes from %s in %.0f ms (%s)", res.ImageFetchBytes, res.ImageFetchedFrom, res.ImageFetchMS, res.ImageRegistryError)
	if res.ImageFetchedFrom != "edge-2" || res.ImageFetchBytes <= 0 || !strings.Contains(res.ImageRegistryError, "registry "+ref) {
		t.Errorf("migrate --json: %+v, want the image copied from edge-2 and why not from the registry", res)
	}
	l.waitCtl(c.IP)
	if v, err := l.ctl(c.IP, "get", "k"); err != nil || v != "v" {
		t.Errorf("after the migrations: get k = %q, %v; want v", v, err)
	}
	l.imageHas("edge-1", key, "bin/coat-sample")
}
