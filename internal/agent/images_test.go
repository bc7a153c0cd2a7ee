package agent

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coat-project/coat/internal/store"
)

// imgStore is a Store holding only container records (as a list).
type imgStore struct {
	store.Store
	cs []store.Container
}

func (s *imgStore) Containers(context.Context) ([]store.Container, error) { return s.cs, nil }

// An image a container on this host uses, or one migrating here, is not
// removed; one used only elsewhere is (a migration here copies it back),
// and removing it again succeeds.
func TestAgentImageRemove(t *testing.T) {
	a, h := badInputAgent(t)
	const img = "127.0.0.1:5000/lab/app:1"
	st := &imgStore{cs: []store.Container{{Name: "web", Host: "edge-1", Image: img}}}
	a.st = st
	do := func(method, path string, body []byte) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(method, path, bytes.NewReader(body)))
		return w
	}
	const path = "/v1/images/127.0.0.1:5000%2Flab%2Fapp:1"
	dir := filepath.Join(a.cfg.StateDir, "images", "127.0.0.1@5000+lab+app@1")
	if w := do("PUT", path, rootfsTar(t, 0o755)); w.Code != http.StatusOK {
		t.Fatalf("PUT: %d %s", w.Code, w.Body)
	}
	w := do("DELETE", path, nil)
	if w.Code != http.StatusConflict || !strings.Contains(w.Body.String(), "used by container web on edge-1") {
		t.Errorf("DELETE of an image in use here: %d %s", w.Code, w.Body)
	}
	st.cs = []store.Container{{Name: "web", Host: "edge-2", Image: img, Status: store.StatusMigrating, MigratingTo: "edge-1"}}
	w = do("DELETE", path, nil)
	if w.Code != http.StatusConflict || !strings.Contains(w.Body.String(), "migrating to edge-1") {
		t.Errorf("DELETE of an image a container migrating here uses: %d %s", w.Code, w.Body)
	}
	if _, err := os.Stat(filepath.Join(dir, "rootfs", "bin", "sh")); err != nil {
		t.Errorf("image in use was touched: %v", err)
	}
	st.cs = []store.Container{{Name: "web", Host: "edge-2", Image: img, Status: store.StatusRunning}}
	if w := do("DELETE", path, nil); w.Code != http.StatusNoContent {
		t.Errorf("DELETE: %d %s", w.Code, w.Body)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("image still there after DELETE: %v", err)
	}
	if w := do("DELETE", path, nil); w.Code != http.StatusNoContent {
		t.Errorf("DELETE again: %d %s", w.Code, w.Body)
	}
	if w := do("DELETE", "/v1/images/..%2Fcontainers", nil); w.Code != http.StatusBadRequest {
		t.Errorf("DELETE of a bad name: %d %s", w.Code, w.Body)
	}
	if ents, _ := os.ReadDir(filepath.Join(a.cfg.StateDir, "images")); len(ents) != 0 {
		t.Errorf("images/ holds %v", ents)
	}
}
