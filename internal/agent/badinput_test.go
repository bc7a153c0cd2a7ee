package agent

import (
	"archive/tar"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coat-project/coat/internal/runtime"
)

// badInputAgent is an agent with a runtime on a temporary state
// directory and no store: the requests sent to it must be refused before
// the store is needed.
func badInputAgent(t *testing.T) (*Agent, http.Handler) {
	t.Helper()
	state := t.TempDir()
	self := filepath.Join(t.TempDir(), "coat")
	if err := os.WriteFile(self, []byte("agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	rt, err := runtime.New(state, "edge-1", self)
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{Name: "edge-1", StateDir: state}, rt: rt, log: slog.New(slog.NewTextHandler(io.Discard, nil)), busy: map[string]bool{}}
	// The requests come from the admin (the CLI's certificate): what is
	// refused here is refused for what it says, not for who sent it.
	_, certs := authzPKI(t)
	routes := a.routes()
	return a, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{certs["cli"]}}
		routes.ServeHTTP(w, r)
	})
}

func rootfsTar(t *testing.T, mode int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "rootfs/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "rootfs/bin/sh", Typeflag: tar.TypeReg, Mode: mode, Size: 2},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("#!"))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestAgentRefusesBadInput(t *testing.T) {
	a, h := badInputAgent(t)
	images := filepath.Join(a.cfg.StateDir, "images")
	// Another container's files: a path in an image name must not reach
	// them.
	if err := os.MkdirAll(filepath.Join(a.rt.Dir("victim"), "rootfs"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method, path, body, want string
	}{
		{"POST", "/v1/containers", `{"name":"web","image":"../containers/victim","args":["x"]}`, "invalid image"},
		{"POST", "/v1/containers", `{"name":"web","image":"/etc","args":["x"]}`, "invalid image"},
		{"POST", "/v1/containers", `{"name":"Bad_Name!","image":"sample","args":["x"]}`, "invalid name"},
		{"POST", "/v1/containers", `{"name":"web","image":"sample","args":["x"]}{}`, "data after"},
		{"DELETE", "/v1/containers/..%2Fvictim", "", "invalid name"},
		{"GET", "/v1/containers/Web/logs", "", "invalid name"},
		{"POST", "/v1/containers/a_b/migrate", `{"to":"edge-2"}`, "invalid name"},
		{"PUT", "/v1/incoming/..%2F..%2Fetc/data", "", "invalid name"},
		{"POST", "/v1/incoming/x%2Fy/restore", `{}`, "invalid name"},
		{"PUT", "/v1/images/..%2Fcontainers%2Fvictim", string(rootfsTar(t, 0o755)), "invalid image"},
		{"PUT", "/v1/images/Sample", string(rootfsTar(t, 0o755)), "lowercase"},
		{"PUT", "/v1/images/sample", string(rootfsTar(t, 0o4755)), "setuid"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body)))
			if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), tc.want) {
				t.Fatalf("%d %s, want 400 saying %q", w.Code, w.Body, tc.want)
			}
			if ents, _ := os.ReadDir(images); len(ents) != 0 {
				t.Errorf("images/ holds %v after a refused request", ents)
			}
			if ents, _ := os.ReadDir(filepath.Join(a.cfg.StateDir, "containers")); len(ents) != 1 {
				t.Errorf("containers/ holds %v after a refused request", ents)
			}
		})
	}
}

// An image is stored under its key, never its name as given.
func TestAgentImportStoresByKey(t *testing.T) {
	a, h := badInputAgent(t)
	for path, key := range map[string]string{"/v1/images/sample": "sample", "/v1/images/lab%2Fredis:7.0": "lab+redis@7.0", "/v1/images/busybox:latest": "busybox"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("PUT", path, bytes.NewReader(rootfsTar(t, 0o755))))
		if w.Code != http.StatusOK {
			t.Fatalf("PUT %s: %d %s", path, w.Code, w.Body)
		}
		if _, err := os.Stat(filepath.Join(a.cfg.StateDir, "images", key, "rootfs", "bin", "sh")); err != nil {
			t.Errorf("PUT %s: %v", path, err)
		}
	}
	for _, im := range []string{"sample", "sample:latest", "lab/redis:7.0", "busybox"} {
		if !a.rt.HasImage(im) {
			t.Errorf("HasImage(%q) = false after import", im)
		}
	}
}
