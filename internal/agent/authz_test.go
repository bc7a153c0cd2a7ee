package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/coat-project/coat/internal/authz"
	"github.com/coat-project/coat/internal/pki"
	"github.com/coat-project/coat/internal/store"
)

// migStore is a Store holding only migration records and revocations
// (anything else it is asked panics: authorization must not need it).
type migStore struct {
	store.Store
	migs    map[string]store.Migration
	revoked []pki.Revocation
}

func (s *migStore) Migration(_ context.Context, name string) (store.Migration, error) {
	if m, ok := s.migs[name]; ok {
		return m, nil
	}
	return store.Migration{}, store.ErrNotFound
}

func (s *migStore) Revocations(context.Context) ([]pki.Revocation, error) { return s.revoked, nil }

// authzPKI issues the admin "cli" and hosts edge-1..edge-3 (edge-N at
// 10.201.0.1N) and returns their client certificates.
func authzPKI(t *testing.T) (string, map[string]*x509.Certificate) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if err := pki.EnsureCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := pki.Issue(dir, "cli", pki.RoleAdmin, nil); err != nil {
		t.Fatal(err)
	}
	certs := map[string]*x509.Certificate{}
	for i, h := range []string{"edge-1", "edge-2", "edge-3"} {
		if err := pki.Issue(dir, h, pki.RoleHost, []net.IP{net.IPv4(10, 201, 0, byte(11+i))}); err != nil {
			t.Fatal(err)
		}
	}
	for name, file := range map[string]string{"cli": "cli.crt", "edge-1": "edge-1-client.crt", "edge-2": "edge-2-client.crt", "edge-3": "edge-3-client.crt"} {
		c, err := pki.ReadCert(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		certs[name] = c
	}
	return dir, certs
}

func testAgent(t *testing.T, st store.Store) *Agent {
	return &Agent{
		cfg: Config{Name: "edge-1", StateDir: t.TempDir()},
		st:  st, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		busy: map[string]bool{}, tunnels: map[string]tunnelTarget{},
	}
}

func TestAuthenticate(t *testing.T) {
	_, certs := authzPKI(t)
	a := testAgent(t, &migStore{})
	var seen pki.Identity
	h := a.authenticate(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = caller(r)
		w.WriteHeader(http.StatusNoContent)
	}))
	roleless := &x509.Certificate{SerialNumber: certs["cli"].SerialNumber}
	for _, tc := range []struct {
		what   string
		cert   *x509.Certificate
		remote string
		want   int
	}{
		{"admin from anywhere", certs["cli"], "192.0.2.1:4000", http.StatusNoContent},
		{"host from its underlay IP", certs["edge-2"], "10.201.0.12:4000", http.StatusNoContent},
		{"host from another address", certs["edge-2"], "10.201.0.13:4000", http.StatusForbidden},
		{"no certificate", nil, "10.201.0.12:4000", http.StatusForbidden},
		{"certificate without a role", roleless, "10.201.0.12:4000", http.StatusForbidden},
	} {
		seen = pki.Identity{}
		r := httptest.NewRequest(http.MethodGet, "/v1/containers/web/logs", nil)
		r.RemoteAddr = tc.remote
		r.TLS = &tls.ConnectionState{}
		if tc.cert != nil {
			r.TLS.PeerCertificates = []*x509.Certificate{tc.cert}
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("%s: HTTP %d %s, want %d", tc.what, w.Code, w.Body, tc.want)
		}
		if tc.want == http.StatusNoContent && seen.Name != tc.cert.Subject.CommonName {
			t.Errorf("%s: handler saw caller %+v", tc.what, seen)
		}
	}
	// Revoked (by name and serial): refused at once.
	a.revoked.Set([]pki.Revocation{{Name: "edge-2", Serials: []string{pki.SerialOf(certs["edge-2"])}}})
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "10.201.0.12:4000"
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{certs["edge-2"]}}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusForbidden {
		t.Errorf("revoked: HTTP %d, want 403", w.Code)
	}
	// And in the handshake, both ways.
	if err := a.verifyPeer("", "")(tls.ConnectionState{PeerCertificates: []*x509.Certificate{certs["edge-2"]}}); err == nil {
		t.Error("handshake with a revoked certificate passed")
	}
	if err := a.verifyPeer(pki.RoleHost, "edge-3")(tls.ConnectionState{PeerCertificates: []*x509.Certificate{certs["edge-3"]}}); err != nil {
		t.Errorf("handshake with edge-3 as edge-3: %v", err)
	}
	if err := a.verifyPeer(pki.RoleHost, "edge-1")(tls.ConnectionState{PeerCertificates: []*x509.Certificate{certs["edge-3"]}}); err == nil {
		t.Error("edge-3's certificate passed for edge-1")
	}
	if err := a.verifyPeer(pki.RoleHost, "")(tls.ConnectionState{PeerCertificates: []*x509.Certificate{certs["cli"]}}); err == nil {
		t.Error("an admin certificate passed for an agent's")
	}
}

// authorize, through the routes as registered: what a host may call on
// edge-1 depends on the store's migration records and on what edge-1 set
// up itself.
func TestAuthorize(t *testing.T) {
	_, certs := authzPKI(t)
	st := &migStore{migs: map[string]store.Migration{
		"in":  {Name: "in", From: "edge-2", To: "edge-1"},  // edge-2 sends "in" here
		"out": {Name: "out", From: "edge-1", To: "edge-3"}, // edge-1 sends "out" to edge-3
	}}
	a := testAgent(t, st)
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux := http.NewServeMux()
	for _, p := range []struct {
		pattern string
		kind    authz.Kind
	}{
		{"POST /v1/containers", authz.AdminOnly},
		{"DELETE /v1/containers/{name}", authz.AdminOnly},
		{preparePattern, authz.Incoming},
		{"POST /v1/incoming/{name}/restore", authz.Incoming},
		{"PUT /v1/incoming/{name}/data", authz.Incoming},
		{"POST /v1/tunnel/{name}/{kind}", authz.Tunnel},
		{"POST /v1/incoming/{name}/image", authz.Incoming},
		{"GET /v1/outgoing/{name}/image", authz.Image},
	} {
		mux.HandleFunc(p.pattern, a.guard(p.kind, ok))
	}
	h := a.authenticate(mux)
	// edge-1 prepared "local" for edge-3 (no record in this store: only
	// what edge-1 wrote at prepare vouches for it).
	if err := os.MkdirAll(a.incomingDir("local"), 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(store.Container{Name: "local", Host: "edge-3", MigratingTo: "edge-1"})
	if err := os.WriteFile(filepath.Join(a.incomingDir("local"), "container.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	a.allowTunnel("open", "lazy", "edge-2", "127.0.0.1:1", "")
	ips := map[string]string{"cli": "192.0.2.1", "edge-2": "10.201.0.12", "edge-3": "10.201.0.13"}
	for _, tc := range []struct {
		who, method, path string
		want              int
	}{
		{"cli", "POST", "/v1/containers", 204},
		{"cli", "DELETE", "/v1/containers/web", 204},
		{"cli", "POST", "/v1/incoming/web/prepare", 204}, // the handler still asks the store
		{"edge-2", "POST", "/v1/containers", 403},
		{"edge-2", "DELETE", "/v1/containers/in", 403},
		{"edge-2", "POST", "/v1/incoming/in/prepare", 204},
		{"edge-2", "PUT", "/v1/incoming/in/data", 204},
		{"edge-2", "POST", "/v1/incoming/in/restore", 204},
		{"edge-3", "POST", "/v1/incoming/in/prepare", 403}, // not its migration
		{"edge-3", "PUT", "/v1/incoming/in/data", 403},
		{"edge-2", "POST", "/v1/incoming/web/prepare", 403}, // no migration at all
		{"edge-3", "POST", "/v1/incoming/out/prepare", 403}, // out goes from here to edge-3
		{"edge-3", "POST", "/v1/tunnel/out/lazy", 204},      // ... so edge-3 fetches its pages here
		{"edge-2", "POST", "/v1/tunnel/out/lazy", 403},
		{"edge-2", "POST", "/v1/tunnel/in/lazy", 403},
		{"edge-3", "PUT", "/v1/incoming/local/data", 204},     // prepared here for edge-3
		{"edge-2", "PUT", "/v1/incoming/local/data", 403},     // ... not for edge-2
		{"edge-3", "POST", "/v1/incoming/local/prepare", 403}, // prepare always asks the store
		{"edge-2", "POST", "/v1/tunnel/open/lazy", 204},       // a tunnel opened here for edge-2
		{"edge-3", "POST", "/v1/tunnel/open/lazy", 403},       // ... not for edge-3
		{"edge-2", "POST", "/v1/incoming/in/image", 204},      // edge-2 sends "in" here: it asks for the image
		{"edge-3", "POST", "/v1/incoming/in/image", 403},
		{"edge-3", "GET", "/v1/outgoing/out/image", 204}, // edge-3 takes "out": it copies its image from here
		{"edge-2", "GET", "/v1/outgoing/out/image", 403}, // ... no other host
		{"edge-2", "GET", "/v1/outgoing/in/image", 403},  // "in" comes from edge-2, not from here
		{"edge-3", "GET", "/v1/outgoing/web/image", 403}, // no migration at all
	} {
		cert := certs[tc.who]
		r := httptest.NewRequest(tc.method, tc.path, nil)
		r.RemoteAddr = net.JoinHostPort(ips[cert.Subject.CommonName], "4000")
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("%s %s %s: HTTP %d %s, want %d", tc.who, tc.method, tc.path, w.Code, w.Body, tc.want)
		}
	}
}

// prepare reads what it builds from the store, and only for a container
// the store says is migrating here.
func TestPreparable(t *testing.T) {
	cs := map[string]store.Container{
		"in":      {Name: "in", Host: "edge-2", Status: store.StatusMigrating, MigratingTo: "edge-1", IP: "10.202.0.5"},
		"running": {Name: "running", Host: "edge-2", Status: store.StatusRunning},
		"elsewh":  {Name: "elsewh", Host: "edge-2", Status: store.StatusMigrating, MigratingTo: "edge-3"},
		"stale":   {Name: "stale", Host: "edge-3", Status: store.StatusMigrating, MigratingTo: "edge-1"},
	}
	st := &ctrStore{migStore: migStore{migs: map[string]store.Migration{
		"in":      {Name: "in", From: "edge-2", To: "edge-1"},
		"running": {Name: "running", From: "edge-2", To: "edge-1"},
		"elsewh":  {Name: "elsewh", From: "edge-2", To: "edge-1"},
		"stale":   {Name: "stale", From: "edge-2", To: "edge-1"},
	}}, cs: cs}
	a := testAgent(t, st)
	c, err := a.preparable(context.Background(), "in")
	if err != nil || c.IP != "10.202.0.5" {
		t.Errorf("in: %+v %v", c, err)
	}
	for _, name := range []string{"running", "elsewh", "stale", "nosuch", "Bad/Name"} {
		if _, err := a.preparable(context.Background(), name); err == nil {
			t.Errorf("%s: prepared", name)
		}
	}
	if _, err := a.preparable(context.Background(), "running"); !errors.Is(err, authz.ErrForbidden) {
		t.Errorf("running: %v, want ErrForbidden", err)
	}
}

type ctrStore struct {
	migStore
	cs map[string]store.Container
}

func (s *ctrStore) Container(_ context.Context, name string) (store.Container, error) {
	if c, ok := s.cs[name]; ok {
		return c, nil
	}
	return store.Container{}, store.ErrNotFound
}
