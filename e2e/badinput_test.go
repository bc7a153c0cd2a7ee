package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Bad input gets a clear error and a non-zero exit, and changes nothing.
func TestBadInputChangesNothing(t *testing.T) {
	l := newLab(t, 2)
	c := l.runSample("bad", "edge-1")
	// An image with no configuration (the lab's own have a default
	// command): the sample's files imported as a directory.
	l.must("image", "import", "nocmd", filepath.Join("/var/lib/coat/labs", ".images", "sample"))
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown container", []string{"migrate", "nosuch", "--to", "edge-2"}, "unknown container"},
		{"unknown host", []string{"migrate", "bad", "--to", "edge-9"}, "unknown host"},
		{"same host", []string{"migrate", "bad", "--to", "edge-1"}, "already runs on edge-1"},
		{"taken name", []string{"run", "--host", "edge-2", "--name", "bad", "--image", "sample", "--", "/bin/coat-sample", "server"}, "already exists"},
		{"taken ip", []string{"run", "--host", "edge-2", "--name", "other", "--ip", c.IP, "--image", "sample", "--", "/bin/coat-sample", "server"}, "ip " + c.IP},
		{"unknown image", []string{"run", "--host", "edge-1", "--name", "x1", "--image", "nosuch", "--", "/bin/true"}, "unknown image"},
		{"invalid name", []string{"run", "--host", "edge-1", "--name", "Bad_Name!", "--image", "sample", "--", "/bin/true"}, "invalid name"},
		{"ip outside subnet", []string{"run", "--host", "edge-1", "--name", "x2", "--ip", "192.0.2.77", "--image", "sample", "--", "/bin/true"}, "outside the overlay subnet"},
		{"run on unknown host", []string{"run", "--host", "edge-7", "--name", "x3", "--image", "sample", "--", "/bin/true"}, "unknown host"},
		{"rm unknown", []string{"rm", "nosuch"}, "unknown container"},
		{"logs unknown", []string{"logs", "nosuch"}, "unknown container"},
		{"no command", []string{"run", "--host", "edge-1", "--name", "x4", "--image", "nocmd"}, "no command"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := l.must("ps", "--json")
			out, err := l.coat(tc.args...)
			if err == nil {
				t.Fatalf("coat %s succeeded:\n%s", strings.Join(tc.args, " "), out)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
				t.Fatalf("want a non-zero exit, got %v", err)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("error %q does not say %q", strings.TrimSpace(out), tc.want)
			}
			if after := l.must("ps", "--json"); after != before {
				t.Fatalf("state changed:\nbefore %s\nafter %s", before, after)
			}
		})
	}
	// A second migration of a container that is migrating is refused.
	t.Run("migrating twice", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		first := exec.CommandContext(ctx, filepath.Join(binDir, "coat"), "migrate", "bad", "--to", "edge-2", "--json")
		first.Env = append(first.Environ(), "COAT_LAB="+l.name)
		if err := first.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for l.get("bad").Status != "migrating" {
			if time.Now().After(deadline) {
				t.Fatal("first migration never showed as migrating")
			}
			time.Sleep(5 * time.Millisecond)
		}
		out, err := l.coat("migrate", "bad", "--to", "edge-2")
		if err == nil || !strings.Contains(out, "already migrating") {
			t.Errorf("second migration: err=%v out=%s", err, out)
		}
		if err := first.Wait(); err != nil {
			t.Fatalf("first migration failed: %v", err)
		}
		if got := l.get("bad"); got.Host != "edge-2" || got.Status != "running" {
			t.Fatalf("after first migration: %+v", got)
		}
	})
}

// Names that are paths never reach the filesystem, through the CLI or
// straight through the agents' API; tar streams with devices, setuid files
// or foreign attributes are refused; and `coat logs` does not follow a
// symlink put in place of the container's log. Each is refused with a
// clear error and a non-zero exit (400 from the API), and nothing changes.
func TestBadInputPathsAndFiles(t *testing.T) {
	l := newLab(t, 2)
	l.runSample("victim", "edge-1")
	hostDir := filepath.Join("/var/lib/coat/labs", l.name, "edge-1")
	victimDir := filepath.Join(hostDir, "containers", "victim")
	if _, err := os.Stat(filepath.Join(victimDir, "rootfs")); err != nil {
		t.Fatalf("the victim's rootfs is not where this test expects it: %v", err)
	}
	// A rootfs with a setuid file, for `coat image import`.
	suid := t.TempDir()
	if err := os.MkdirAll(filepath.Join(suid, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(suid, "bin", "su"), []byte("#!"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(suid, "bin", "su"), os.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	// What must not change: the containers, and every host's images,
	// layers and containers directories.
	snapshot := func() string {
		s := l.must("ps", "--json")
		for _, h := range []string{"edge-1", "edge-2"} {
			for _, d := range []string{"images", "layers", "containers"} {
				ents, _ := os.ReadDir(filepath.Join("/var/lib/coat/labs", l.name, h, d))
				for _, e := range ents {
					s += " " + h + "/" + d + "/" + e.Name()
				}
			}
		}
		return s
	}
	before := snapshot()

	run := func(image string) []string {
		return []string{"run", "--host", "edge-1", "--name", "thief", "--image", image, "--", "/bin/coat-sample", "server"}
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"image is a relative path", run("../containers/victim"), `invalid image "../containers/victim"`},
		{"image is an absolute path", run(victimDir), "no leading '/'"},
		{"image climbs", run("sample/../../containers/victim"), "no '..'"},
		{"image in capitals", run("Sample"), "lowercase"},
		{"name is a path", []string{"run", "--host", "edge-1", "--name", "../x", "--image", "sample", "--", "/bin/true"}, `invalid name "../x"`},
		{"host is a path", []string{"run", "--host", "../edge-1", "--name", "x5", "--image", "sample", "--", "/bin/true"}, `invalid host name "../edge-1"`},
		{"rm a path", []string{"rm", "../victim"}, `invalid name "../victim"`},
		{"logs of a path", []string{"logs", "../victim"}, `invalid name "../victim"`},
		{"migrate to a path", []string{"migrate", "victim", "--to", "../edge-2"}, `invalid host name "../edge-2"`},
		{"import under a path", []string{"image", "import", "../containers/x", suid}, `invalid image "../containers/x"`},
		{"import a setuid file", []string{"image", "import", "evil", suid}, "chmod u-s,g-s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := l.coat(tc.args...)
			if err == nil {
				t.Fatalf("coat %s succeeded:\n%s", strings.Join(tc.args, " "), out)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
				t.Fatalf("want a non-zero exit, got %v", err)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("error %q does not say %q", strings.TrimSpace(out), tc.want)
			}
			if after := snapshot(); after != before {
				t.Fatalf("state changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}

	// The agents refuse the same without the CLI's checks.
	t.Run("api", func(t *testing.T) {
		var api string
		for _, h := range secHosts(t, l) {
			if h.Name == "edge-1" {
				api = h.API
			}
		}
		cert, err := tls.LoadX509KeyPair(filepath.Join(secLabDir(l), "pki", "cli.crt"), filepath.Join(secLabDir(l), "pki", "cli.key"))
		if err != nil {
			t.Fatal(err)
		}
		cl := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: secClientTLS(secLabCA(t, l), &cert)}}
		tarOf := func(hdrs ...*tar.Header) []byte {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, h := range hdrs {
				if err := tw.WriteHeader(h); err != nil {
					t.Fatal(err)
				}
				if h.Size > 0 {
					tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
				}
			}
			tw.Close()
			return buf.Bytes()
		}
		zeroDigest := "sha256:" + strings.Repeat("0", 64)
		for _, r := range []struct {
			name, method, path, want string
			body                     []byte
		}{
			{"run on another container's rootfs", "POST", "/v1/containers", "invalid image",
				[]byte(`{"name":"thief","image":"../containers/victim","args":["/bin/coat-sample","server"]}`)},
			{"run with a path name", "POST", "/v1/containers", "invalid name",
				[]byte(`{"name":"../thief","image":"sample","args":["/bin/coat-sample","server"]}`)},
			{"remove by path", "DELETE", "/v1/containers/..%2Fcontainers%2Fvictim", "invalid name", nil},
			{"import under a path", "PUT", "/v1/images/..%2Fcontainers%2Fvictim", "invalid image",
				tarOf(&tar.Header{Name: "rootfs/", Typeflag: tar.TypeDir, Mode: 0o755})},
			{"import a device", "PUT", "/v1/images/evil", "device",
				tarOf(&tar.Header{Name: "rootfs/dev/sda", Typeflag: tar.TypeBlock, Mode: 0o666, Devmajor: 8})},
			{"import a setuid file", "PUT", "/v1/images/evil", "setuid",
				tarOf(&tar.Header{Name: "rootfs/bin/su", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 2})},
			{"import a capability", "PUT", "/v1/images/evil", "security.capability",
				tarOf(&tar.Header{Name: "rootfs/bin/ping", Typeflag: tar.TypeReg, Mode: 0o755, Size: 2, Format: tar.FormatPAX,
					PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "x"}})},
			{"layer under a path", "PUT", "/v1/layers/..%2F..%2Fcontainers", "invalid layer digest",
				tarOf(&tar.Header{Name: "bin/sh", Typeflag: tar.TypeReg, Mode: 0o755, Size: 2})},
			{"layer through a symlink", "PUT", "/v1/layers/" + zeroDigest, "symlink",
				tarOf(&tar.Header{Name: "etc", Typeflag: tar.TypeSymlink, Linkname: "/etc"},
					&tar.Header{Name: "etc/planted", Typeflag: tar.TypeReg, Mode: 0o644, Size: 2})},
			{"layer not matching its digest", "PUT", "/v1/layers/" + zeroDigest, "the stream received has digest",
				tarOf(&tar.Header{Name: "bin/sh", Typeflag: tar.TypeReg, Mode: 0o755, Size: 2})},
			{"image of layers the host lacks", "PUT", "/v1/images/evil/layers", "is not on host",
				[]byte(`{"layers":["` + zeroDigest + `"]}`)},
		} {
			t.Run(r.name, func(t *testing.T) {
				req, err := http.NewRequest(r.method, "https://"+api+r.path, bytes.NewReader(r.body))
				if err != nil {
					t.Fatal(err)
				}
				resp, err := cl.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), r.want) {
					t.Errorf("HTTP %d %s, want 400 saying %q", resp.StatusCode, b, r.want)
				}
				if after := snapshot(); after != before {
					t.Fatalf("state changed:\nbefore %s\nafter  %s", before, after)
				}
			})
		}
	})

	// The container owns its upper layer: a symlink in place of its log
	// (made here from the host side, as a container could from inside)
	// is not followed.
	t.Run("logs through a symlink", func(t *testing.T) {
		if out := l.must("logs", "victim"); !strings.Contains(out, "listening") {
			t.Fatalf("logs before: %q", out)
		}
		secret := filepath.Join(t.TempDir(), "secret")
		if err := os.WriteFile(secret, []byte("HOST-SECRET\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		logPath := filepath.Join(victimDir, "upper", ".coat", "log")
		if err := os.Rename(logPath, logPath+".orig"); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(secret, logPath); err != nil {
			t.Fatal(err)
		}
		out, err := l.coat("logs", "victim")
		if err == nil {
			t.Fatalf("coat logs through a symlink succeeded:\n%s", out)
		}
		if strings.Contains(out, "HOST-SECRET") {
			t.Fatalf("coat logs followed the symlink:\n%s", out)
		}
		if !strings.Contains(out, "does not follow") || !strings.Contains(out, "coat rm victim") {
			t.Errorf("error %q does not say what happened and what to do", strings.TrimSpace(out))
		}
		if err := os.Remove(logPath); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(logPath+".orig", logPath); err != nil {
			t.Fatal(err)
		}
		if out := l.must("logs", "victim"); !strings.Contains(out, "listening") {
			t.Errorf("logs after the log came back: %q", out)
		}
	})
	if got := l.get("victim"); got.Status != "running" || got.Host != "edge-1" {
		t.Errorf("victim after all this: %+v", got)
	}
}
