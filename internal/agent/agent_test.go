package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/store"
)

func TestVethName(t *testing.T) {
	names := []string{"a", "web", "web1", "web-1", "1web", strings.Repeat("x", 32), strings.Repeat("y", 32)}
	seen := map[string]string{}
	for _, n := range names {
		v := vethName(n)
		if len(v) > 15 {
			t.Errorf("vethName(%q) = %q, longer than 15", n, v)
		}
		if !strings.HasPrefix(v, "cv") {
			t.Errorf("vethName(%q) = %q, want prefix cv", n, v)
		}
		if vethName(n) != v {
			t.Errorf("vethName(%q) not stable", n)
		}
		if prev, dup := seen[v]; dup {
			t.Errorf("vethName(%q) = vethName(%q) = %q", n, prev, v)
		}
		seen[v] = n
	}
	// Many names, still distinct (fnv32 collisions are possible in
	// general, not among these).
	all := map[string]bool{}
	for i := 0; i < 2000; i++ {
		all[vethName(fmt.Sprintf("c%d", i))] = true
	}
	if len(all) != 2000 {
		t.Errorf("%d distinct veth names for 2000 containers", len(all))
	}
}

func TestHTTPError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{store.ErrNotFound, http.StatusNotFound},
		{fmt.Errorf("container x: %w", store.ErrNotFound), http.StatusNotFound},
		{store.ErrNameTaken, http.StatusConflict},
		{store.ErrIPTaken, http.StatusConflict},
		{store.ErrConflict, http.StatusConflict},
		{errBusy, http.StatusConflict},
		{fmt.Errorf("container x is migrating: %w", errBusy), http.StatusConflict},
		{errBadRequest, http.StatusBadRequest},
		{badRequest("bad ip %q", "x"), http.StatusBadRequest},
		{store.ErrNoFreeIP, http.StatusBadRequest},
		{errors.New("disk on fire"), http.StatusInternalServerError},
		{store.ErrLocked, http.StatusInternalServerError},
	} {
		w := httptest.NewRecorder()
		httpError(w, tc.err)
		if w.Code != tc.code {
			t.Errorf("httpError(%v) status = %d, want %d", tc.err, w.Code, tc.code)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("httpError(%v) Content-Type = %q", tc.err, ct)
		}
		var body api.Error
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
			t.Errorf("httpError(%v) body %q: %v", tc.err, w.Body.String(), err)
		} else if body.Error != tc.err.Error() {
			t.Errorf("httpError(%v) body error = %q", tc.err, body.Error)
		}
	}
}

func TestBadRequest(t *testing.T) {
	err := badRequest("field %s: %d", "ip", 7)
	if !errors.Is(err, errBadRequest) {
		t.Errorf("badRequest does not wrap errBadRequest: %v", err)
	}
	if got, want := err.Error(), "bad request: field ip: 7"; got != want {
		t.Errorf("badRequest = %q, want %q", got, want)
	}
	if got := badRequest("no args").Error(); got != "bad request: no args" {
		t.Errorf("badRequest without args = %q", got)
	}
}

func TestLock(t *testing.T) {
	a := &Agent{busy: map[string]bool{}}
	if !a.lock("web") {
		t.Fatal("first lock failed")
	}
	if a.lock("web") {
		t.Fatal("second lock of a busy container succeeded")
	}
	if !a.lock("db") {
		t.Fatal("lock of another container failed")
	}
	a.unlock("web")
	if !a.lock("web") {
		t.Fatal("lock after unlock failed")
	}
	a.unlock("web")
	a.unlock("web") // unlocking a free container is harmless
	a.unlock("db")
	if len(a.busy) != 0 {
		t.Errorf("busy = %v after unlocking all", a.busy)
	}
}

func TestLockWait(t *testing.T) {
	a := &Agent{busy: map[string]bool{}}
	if !a.lockWait("web", 0) {
		t.Fatal("lockWait on a free container failed")
	}
	start := time.Now()
	if a.lockWait("web", 30*time.Millisecond) {
		t.Fatal("lockWait on a busy container succeeded")
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("lockWait gave up after %v, before its 30ms", d)
	}

	// Released while waiting: lockWait gets it.
	go func() {
		time.Sleep(20 * time.Millisecond)
		a.unlock("web")
	}()
	if !a.lockWait("web", 2*time.Second) {
		t.Fatal("lockWait did not get a lock released while it waited")
	}
	a.unlock("web")
}

// Concurrent lockers: exactly one holds the lock at a time.
func TestLockExclusive(t *testing.T) {
	a := &Agent{busy: map[string]bool{}}
	var holders, maxHolders, got atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				if !a.lockWait("web", time.Second) {
					t.Error("lockWait timed out")
					return
				}
				got.Add(1)
				if n := holders.Add(1); n > maxHolders.Load() {
					maxHolders.Store(n)
				}
				holders.Add(-1)
				a.unlock("web")
			}
		}()
	}
	wg.Wait()
	if maxHolders.Load() != 1 {
		t.Errorf("%d holders at once", maxHolders.Load())
	}
	if got.Load() != 16*20 {
		t.Errorf("%d locks taken, want %d", got.Load(), 16*20)
	}
}

func TestEndpointAndSpec(t *testing.T) {
	_, subnet, _ := net.ParseCIDR("10.202.3.0/24")
	a := &Agent{cfg: Config{StateDir: "/var/lib/coat/edge-1", Subnet: subnet}, busy: map[string]bool{}}
	c := store.Container{
		Name: "web", Image: "alpine", Args: []string{"sleep", "1"}, Env: []string{"A=1"},
		IP: "10.202.3.7", MAC: "02:42:0a:ca:03:07",
	}
	ep, err := a.endpoint(c)
	if err != nil {
		t.Fatal(err)
	}
	if ep.NetNS != "/var/lib/coat/edge-1/netns/web" || ep.HostVeth != vethName("web") || ep.MTU != 1450 {
		t.Errorf("endpoint = %+v", ep)
	}
	if got := ep.Addr.String(); got != "10.202.3.7/24" {
		t.Errorf("endpoint addr = %s", got)
	}
	if ep.MAC.String() != "02:42:0a:ca:03:07" {
		t.Errorf("endpoint MAC = %s", ep.MAC)
	}
	for _, bad := range []store.Container{
		{Name: "x", IP: "nope", MAC: "02:42:0a:ca:03:07"},
		{Name: "x", IP: "10.202.3.7", MAC: "nope"},
	} {
		if _, err := a.endpoint(bad); err == nil {
			t.Errorf("endpoint(%+v): want an error", bad)
		}
	}

	s := a.spec(c)
	if s.Name != "web" || s.Image != "alpine" || s.NetNS != ep.NetNS || len(s.Args) != 2 || len(s.Env) != 1 {
		t.Errorf("spec = %+v", s)
	}
}

// A container's checkpoint images are NAME-UNIXNANO (and .tar); another
// container's whose name begins with NAME- are not among them.
func TestCheckpointImages(t *testing.T) {
	dir := t.TempDir()
	a := &Agent{cfg: Config{StateDir: dir}}
	for _, p := range []string{"web-1795641381296550902", "web-1795641381296550902.tar", "web-2-1795641381296550903", "web-x", "webby-1"} {
		if err := os.MkdirAll(filepath.Join(dir, "checkpoints", p), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for _, p := range a.checkpointImages("web") {
		got = append(got, filepath.Base(p))
	}
	want := []string{"web-1795641381296550902", "web-1795641381296550902.tar"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("checkpointImages(web) = %v, want %v", got, want)
	}
}
