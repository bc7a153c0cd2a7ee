package e2e

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// sampleOCIImage is an OCI image of the static coat-sample binary whose
// configuration runs its server as user app (1000:1000) in /srv, with
// its data in /srv/data.
func sampleOCIImage(t *testing.T) v1.Image {
	t.Helper()
	bin, err := os.ReadFile(filepath.Join(binDir, "coat-sample"))
	if err != nil {
		t.Fatalf("bin/coat-sample: %v (run `make build`)", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range []struct {
		name string
		mode int64
		body []byte
	}{
		{"bin/", 0o755, nil}, {"etc/", 0o755, nil}, {"srv/", 0o777, nil}, {"tmp/", 0o1777, nil},
		{"bin/coat-sample", 0o755, bin},
		{"etc/passwd", 0o644, []byte("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/srv:/bin/sh\n")},
		{"etc/group", 0o644, []byte("root:x:0:\napp:x:1000:\n")},
	} {
		hdr := &tar.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.body)), Typeflag: tar.TypeReg}
		if strings.HasSuffix(e.name, "/") {
			hdr.Typeflag = tar.TypeDir
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.body)
	}
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
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", goruntime.GOARCH
	cf.Config.Entrypoint = []string{"/bin/coat-sample"}
	cf.Config.Cmd = []string{"server", "--data", "/srv/data"}
	cf.Config.Env = []string{"PATH=/bin", "GREETING=hello", "MODE=image"}
	cf.Config.WorkingDir = "/srv"
	cf.Config.User = "app"
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// procOf reads a container process's uid, cwd and environment from the
// host's /proc.
func procOf(t *testing.T, pid int) (uid, cwd string, env []string) {
	t.Helper()
	st, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			uid = f[1]
		}
	}
	cwd, _ = os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "cwd"))
	b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
	env = strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	return uid, cwd, env
}

// hasSysResource reports whether this process (root, as the agents) has
// CAP_SYS_RESOURCE.
func hasSysResource() bool {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<24) != 0
		}
	}
	return false
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestOCIPullRunMigrate: an image served by a registry runs its
// configuration (entrypoint, env, workdir, user; --env overrides) and
// keeps it across a migration; a bad pull changes nothing; an image in
// use cannot be removed.
func TestOCIPullRunMigrate(t *testing.T) {
	requireRoot(t)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/lab/sample:1.0"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, sampleOCIImage(t), remote.WithTransport(http.DefaultTransport)); err != nil {
		t.Fatal(err)
	}

	l := newLab(t, 2)

	// Bad pulls: clear errors, nothing recorded.
	if out, err := l.coat("image", "pull", "--insecure", host+"/lab/nothing:1"); err == nil || !strings.Contains(out, "check the name") {
		t.Errorf("pull of an unknown image: err %v, output:\n%s", err, out)
	}
	if out, err := l.coat("image", "pull", "--insecure", "127.0.0.1:1/lab/sample:1.0"); err == nil || !strings.Contains(out, "reachable") {
		t.Errorf("pull from an unreachable registry: err %v, output:\n%s", err, out)
	}
	if out := l.must("image", "ls"); strings.Contains(out, "lab/") {
		t.Errorf("failed pulls left images:\n%s", out)
	}

	// The lab's own images are listed too.
	if out := l.must("image", "ls"); !strings.Contains(out, "sample") {
		t.Errorf("image ls lacks the lab's sample image:\n%s", out)
	}

	// A docker-archive, loaded under a name of its own.
	archive := filepath.Join(t.TempDir(), "sample.tar")
	tag, err := name.NewTag("lab/saved:2")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(archive, tag, sampleOCIImage(t)); err != nil {
		t.Fatal(err)
	}
	if out := l.must("image", "load", "--name", "lab/loaded:2", archive); !strings.Contains(out, "image lab/loaded:2 imported on edge-2") {
		t.Errorf("image load output:\n%s", out)
	}
	if ls := l.must("image", "ls"); !strings.Contains(ls, "lab/loaded:2") || !strings.Contains(ls, archive) {
		t.Errorf("image ls lacks the loaded image:\n%s", ls)
	}
	l.must("image", "rm", "lab/loaded:2")

	out := l.must("image", "pull", "--insecure", ref)
	for _, h := range []string{"edge-1", "edge-2"} {
		if !strings.Contains(out, "image "+ref+" imported on "+h) {
			t.Errorf("pull output lacks the import on %s:\n%s", h, out)
		}
	}
	if ls := l.must("image", "ls"); !strings.Contains(ls, ref) || !strings.Contains(ls, "sha256:") {
		t.Errorf("image ls lacks %s:\n%s", ref, ls)
	}

	// No command: the image's entrypoint and cmd run, as its user, in its
	// working directory, with its env and --env on top.
	l.must("run", "--host", "edge-1", "--name", "app", "--env", "MODE=flag", ref)
	app := l.get("app")
	l.waitCtl(app.IP)
	check := func(name, where, wantUID string) {
		t.Helper()
		uid, cwd, env := procOf(t, l.pid(name))
		if uid != wantUID {
			t.Errorf("%s %s: uid %s, want %s", name, where, uid, wantUID)
		}
		if !strings.HasSuffix(cwd, "/srv") {
			t.Errorf("%s %s: cwd %s, want the image's /srv", name, where, cwd)
		}
		if !has(env, "GREETING=hello") || !has(env, "MODE=flag") || has(env, "MODE=image") {
			t.Errorf("%s %s: env %q, want GREETING=hello from the image and MODE=flag from --env", name, where, env)
		}
		// HOME from the image's /etc/passwd (app: /srv, root: /root),
		// as podman run sets it.
		if wantHome := map[string]string{"1000": "HOME=/srv", "0": "HOME=/root"}[wantUID]; !has(env, wantHome) {
			t.Errorf("%s %s: env %q, want %s", name, where, env, wantHome)
		}
	}
	check("app", "on edge-1", "1000")
	// The user app writes its data in the image's /srv (0777).
	if out, err := l.ctl(app.IP, "put", "k", "v"); err != nil || out != "ok" {
		t.Fatalf("put as user app: %q, %v", out, err)
	}
	if out, err := l.coat("image", "rm", ref); err == nil || !strings.Contains(out, "used by container(s) app") {
		t.Errorf("image rm of an image in use: err %v, output:\n%s", err, out)
	}
	// CRIU reads a non-root process's resource limits only with
	// CAP_SYS_RESOURCE, which root lacks on some machines: there the
	// migration is refused with a hint and rolled back.
	if out, err := l.coat("migrate", "app", "--to", "edge-2"); err != nil {
		if hasSysResource() || !strings.Contains(out, "run the container as root (`coat run --user 0`)") {
			t.Fatalf("migrate app: %v\n%s", err, out)
		}
		t.Logf("this host lacks CAP_SYS_RESOURCE: a non-root container cannot migrate; rolled back as expected")
		if got := l.get("app"); got.Host != "edge-1" || got.Status != "running" {
			t.Errorf("after the refused migration: %s on %s, want running on edge-1", got.Status, got.Host)
		}
		l.waitCtl(app.IP)
	} else {
		l.waitCtl(app.IP)
		check("app", "on edge-2", "1000")
	}
	if v, err := l.ctl(app.IP, "get", "k"); err != nil || v != "v" {
		t.Errorf("app after migrate: get k = %q, %v; want v", v, err)
	}

	// Args replace the image's Cmd after its Entrypoint; --user replaces
	// its User. Migrated, it keeps its configuration and state.
	l.must("run", "--host", "edge-1", "--name", "oci", "--env", "MODE=flag", "--user", "0", ref, "server", "--data", "/srv/root-data")
	c := l.get("oci")
	l.waitCtl(c.IP)
	check("oci", "on edge-1", "0")
	if out, err := l.ctl(c.IP, "put", "k", "w"); err != nil || out != "ok" {
		t.Fatalf("put: %q, %v", out, err)
	}
	l.migrate("oci", "edge-2")
	if got := l.get("oci"); got.Host != "edge-2" {
		t.Fatalf("after migrate: on %s", got.Host)
	}
	l.waitCtl(c.IP)
	if v, err := l.ctl(c.IP, "get", "k"); err != nil || v != "w" {
		t.Errorf("after migrate: get k = %q, %v; want w", v, err)
	}
	check("oci", "on edge-2", "0")

	l.must("rm", "app")
	l.must("rm", "oci")
	l.must("image", "rm", ref)
	if ls := l.must("image", "ls"); strings.Contains(ls, ref) {
		t.Errorf("image ls still lists %s after rm:\n%s", ref, ls)
	}
	for _, h := range []string{"edge-1", "edge-2"} {
		if _, err := os.Stat(filepath.Join("/var/lib/coat/labs", l.name, h, "images", "127.0.0.1@"+strings.Split(host, ":")[1]+"+lab+sample@1.0")); err == nil {
			t.Errorf("image still on %s after rm", h)
		}
	}
}
