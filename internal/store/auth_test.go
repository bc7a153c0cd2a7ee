package store

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/coat-project/coat/internal/pki"
)

// newAuthStore starts a private embedded etcd with mutual TLS from a fresh
// CA (admin "cli", hosts edge-1 and edge-2), sets access control up, and
// returns the PKI directory, the client URL and the admin's store.
func newAuthStore(t *testing.T) (string, string, *Etcd) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if err := pki.EnsureCA(dir); err != nil {
		t.Fatal(err)
	}
	for name, role := range map[string]pki.Role{"etcd": pki.RoleEtcd, "cli": pki.RoleAdmin, "edge-1": pki.RoleHost, "edge-2": pki.RoleHost} {
		if err := pki.Issue(dir, name, role, []net.IP{net.IPv4(127, 0, 0, 1)}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f := pki.FilesFor(dir, "etcd")
	var url string
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		url = fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
		var e interface{ Close() }
		e, err = StartEmbedded(ctx, EmbedConfig{
			Name: "test", DataDir: t.TempDir(), ClientURL: url,
			PeerURL:  fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
			CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA,
		})
		if err == nil {
			t.Cleanup(e.Close)
			break
		}
	}
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	admin := storeAs(t, dir, url, "cli")
	if err := admin.SetupAuth(ctx, AuthPolicy{Admins: []string{"cli"}, Hosts: []string{"edge-1", "edge-2"}}); err != nil {
		t.Fatalf("SetupAuth: %v", err)
	}
	return dir, url, admin
}

func storeAs(t *testing.T, dir, url, name string) *Etcd {
	t.Helper()
	tc, err := pki.FilesFor(dir, name).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	_, subnet, _ := net.ParseCIDR(testSubnet)
	s := NewEtcd(cli, "/coat/", subnet)
	t.Cleanup(func() { s.Close() })
	return s
}

func denied(err error) bool {
	return err != nil && strings.Contains(err.Error(), "permission denied")
}

func TestAuthHostPermissions(t *testing.T) {
	dir, url, admin := newAuthStore(t)
	ctx := testCtx(t)
	e1, e2 := storeAs(t, dir, url, "edge-1"), storeAs(t, dir, url, "edge-2")
	if err := e1.RequireAuth(ctx); err != nil {
		t.Fatalf("RequireAuth as a host: %v", err)
	}
	if err := e1.RegisterHost(ctx, Host{Name: "edge-1", UnderlayIP: "10.0.0.1"}, 5*time.Second); err != nil {
		t.Fatalf("edge-1 registers itself: %v", err)
	}
	if err := e2.RegisterHost(ctx, Host{Name: "edge-2", UnderlayIP: "10.0.0.2"}, 5*time.Second); err != nil {
		t.Fatalf("edge-2 registers itself: %v", err)
	}
	// What a host does in its work.
	c, err := e2.CreateContainer(ctx, Container{Name: "web", Host: "edge-2"})
	if err != nil {
		t.Fatalf("edge-2 creates a container: %v", err)
	}
	if err := e2.PutMigration(ctx, Migration{Name: "web", From: "edge-2", To: "edge-1"}); err != nil {
		t.Fatalf("edge-2 records a migration: %v", err)
	}
	c.Host = "edge-1"
	if _, err := e1.FinishMigration(ctx, c); err != nil {
		t.Fatalf("edge-1 commits a recovered migration: %v", err)
	}
	lk, err := e1.LockContainer(ctx, "web", "edge-1", 5*time.Second)
	if err != nil {
		t.Fatalf("edge-1 locks: %v", err)
	}
	_ = lk.Unlock(ctx)
	if hs, err := e2.Hosts(ctx); err != nil || len(hs) != 2 {
		t.Fatalf("edge-2 lists hosts: %v %v", hs, err)
	}
	// Follow-me: admins record clients and policies; hosts read them and
	// claim roams.
	if err := admin.PutClient(ctx, testClient("client", "10.0.0.100", 1)); err != nil {
		t.Fatalf("admin records a client: %v", err)
	}
	if _, err := admin.SetFollow(ctx, "web", "client"); err != nil {
		t.Fatalf("admin records a follow policy: %v", err)
	}
	if cls, err := e2.Clients(ctx); err != nil || len(cls) != 1 {
		t.Fatalf("edge-2 reads the clients: %v %v", cls, err)
	}
	fs, err := e1.Follows(ctx)
	if err != nil || len(fs) != 1 {
		t.Fatalf("edge-1 reads the follow policies: %v %v", fs, err)
	}
	if _, err := e1.ClaimRoam(ctx, fs[0], 2); err != nil {
		t.Fatalf("edge-1 claims a roam: %v", err)
	}

	// What it may not.
	raw := e2.Client()
	for _, tc := range []struct {
		what string
		do   func() error
	}{
		{"overwrite edge-1's registration", func() error {
			_, err := raw.Put(ctx, "/coat/hosts/edge-1", `{"name":"edge-1","underlay_ip":"10.9.9.9"}`)
			return err
		}},
		{"delete edge-1's registration", func() error { _, err := raw.Delete(ctx, "/coat/hosts/edge-1"); return err }},
		{"register a new host", func() error { _, err := raw.Put(ctx, "/coat/hosts/edge-9", `{}`); return err }},
		{"write a revocation", func() error { _, err := raw.Put(ctx, "/coat/revoked/edge-1", `{}`); return err }},
		{"move a client's VTEP", func() error { return e2.PutClient(ctx, testClient("client", "10.9.9.9", 2)) }},
		{"delete a revocation", func() error { _, err := raw.Delete(ctx, "/coat/revoked/", clientv3.WithPrefix()); return err }},
		{"write outside /coat/", func() error { _, err := raw.Put(ctx, "/other", "x"); return err }},
		{"add a user", func() error {
			_, err := raw.UserAddWithOptions(ctx, "edge-9", "", &clientv3.UserAddOptions{NoPassword: true})
			return err
		}},
		{"grant itself root", func() error { _, err := raw.UserGrantRole(ctx, "edge-2", "root"); return err }},
		{"turn auth off", func() error { _, err := raw.AuthDisable(ctx); return err }},
	} {
		if err := tc.do(); !denied(err) {
			t.Errorf("edge-2 may %s: err = %v, want permission denied", tc.what, err)
		}
	}
	if h, err := admin.Host(ctx, "edge-1"); err != nil || h.UnderlayIP != "10.0.0.1" {
		t.Errorf("edge-1's registration after the refusals: %+v %v", h, err)
	}
}

func TestAuthRevoke(t *testing.T) {
	dir, url, admin := newAuthStore(t)
	ctx := testCtx(t)
	e2 := storeAs(t, dir, url, "edge-2")
	if err := e2.RegisterHost(ctx, Host{Name: "edge-2"}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	r, err := pki.Revoke(dir, "edge-2")
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.SetupAuth(ctx, AuthPolicy{Admins: []string{"cli"}, Hosts: []string{"edge-1", "edge-2"}, Revoked: []pki.Revocation{r}}); err != nil {
		t.Fatalf("SetupAuth with a revocation: %v", err)
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := e2.Client().Get(gctx, "/coat/hosts/", clientv3.WithPrefix()); err == nil {
		t.Error("a revoked host still reads etcd")
	}
	if _, err := admin.Host(ctx, "edge-2"); err == nil {
		t.Error("the revoked host's registration is still there")
	}
	rs, err := storeAs(t, dir, url, "edge-1").Revocations(ctx)
	if err != nil || len(rs) != 1 || rs[0].Name != "edge-2" || len(rs[0].Serials) != 2 {
		t.Errorf("revocations as edge-1 reads them: %+v %v", rs, err)
	}
}

func TestRequireAuthOff(t *testing.T) {
	s := newTestStore(t)
	if err := s.RequireAuth(testCtx(t)); err == nil {
		t.Error("RequireAuth passed with access control off")
	}
}

// A client device's certificate: it reads the hosts and the configuration
// and writes its own record, nothing else; revoked, its record and its
// overlay IP go.
func TestAuthClient(t *testing.T) {
	dir, url, admin := newAuthStore(t)
	ctx := testCtx(t)
	for _, n := range []string{"phone", "car"} {
		if err := pki.Issue(dir, n, pki.RoleClient, nil); err != nil {
			t.Fatal(err)
		}
	}
	p, err := PolicyFromPKI(dir)
	if err != nil || len(p.Clients) != 2 {
		t.Fatalf("policy from the PKI: %+v %v", p, err)
	}
	if err := admin.SetupAuth(ctx, p); err != nil {
		t.Fatalf("SetupAuth with clients: %v", err)
	}
	c, err := admin.AllocateClient(ctx, "phone")
	if err != nil || c.OverlayIP != "10.202.7.10" || c.UnderlayIP != "" {
		t.Fatalf("AllocateClient: %+v %v, want the first allocatable address, detached", c, err)
	}
	if again, err := admin.AllocateClient(ctx, "phone"); err != nil || again.OverlayIP != c.OverlayIP {
		t.Fatalf("AllocateClient again: %+v %v, want the same address", again, err)
	}
	if _, err := admin.AllocateClient(ctx, "car"); err != nil {
		t.Fatal(err)
	}
	// A container gets the next free address, not the clients'.
	if ctr, err := admin.CreateContainer(ctx, Container{Name: "web", Host: "edge-1"}); err != nil || ctr.IP != "10.202.7.12" {
		t.Fatalf("container after two clients: %+v %v", ctr, err)
	}
	if cls, _ := admin.Clients(ctx); len(cls) != 0 {
		t.Fatalf("detached clients listed as attached: %+v", cls)
	}
	phone := storeAs(t, dir, url, "phone")
	if err := admin.RegisterHost(ctx, Host{Name: "edge-1", UnderlayIP: "10.0.0.1"}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if hs, err := phone.Hosts(ctx); err != nil || len(hs) != 1 {
		t.Fatalf("phone reads the hosts: %+v %v", hs, err)
	}
	if _, err := phone.OverlayCIDR(ctx); err != nil && !strings.Contains(err.Error(), "not found") {
		t.Fatalf("phone reads the configuration: %v", err)
	}
	c.UnderlayIP = "10.0.0.50"
	if err := phone.PutClient(ctx, c); err != nil {
		t.Fatalf("phone writes its own record: %v", err)
	}
	if cls, err := admin.Clients(ctx); err != nil || len(cls) != 1 || cls[0].UnderlayIP != "10.0.0.50" {
		t.Fatalf("attached clients: %+v %v", cls, err)
	}
	car, _ := admin.ClientRecord(ctx, "car")
	raw := phone.Client()
	for _, tc := range []struct {
		what string
		do   func() error
	}{
		{"write another client's record", func() error { car.UnderlayIP = "10.9.9.9"; return phone.PutClient(ctx, car) }},
		{"read the containers", func() error { _, err := phone.Containers(ctx); return err }},
		{"write a container", func() error { _, err := raw.Put(ctx, "/coat/containers/x", "{}"); return err }},
		{"claim an address", func() error { _, err := raw.Put(ctx, "/coat/ips/10.202.7.99", "x"); return err }},
		{"write a follow policy", func() error { _, err := raw.Put(ctx, "/coat/follows/web", "{}"); return err }},
		{"register as a host", func() error { _, err := raw.Put(ctx, "/coat/hosts/phone", "{}"); return err }},
	} {
		if err := tc.do(); !denied(err) {
			t.Errorf("phone may %s: err = %v, want permission denied", tc.what, err)
		}
	}
	r, err := pki.Revoke(dir, "phone")
	if err != nil {
		t.Fatal(err)
	}
	p.Revoked = []pki.Revocation{r}
	if err := admin.SetupAuth(ctx, p); err != nil {
		t.Fatalf("SetupAuth with phone revoked: %v", err)
	}
	if _, err := admin.ClientRecord(ctx, "phone"); err == nil {
		t.Error("a revoked client's record outlived it")
	}
	if taken, _ := admin.takenIPs(ctx); taken["10.202.7.10"] {
		t.Error("a revoked client's overlay IP is still taken")
	}
}
