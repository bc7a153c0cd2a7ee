package authz

import (
	"errors"
	"net"
	"testing"

	"github.com/coat-project/coat/internal/pki"
	"github.com/coat-project/coat/internal/store"
)

func TestDecide(t *testing.T) {
	admin := pki.Identity{Name: "cli", Role: pki.RoleAdmin}
	e1 := pki.Identity{Name: "edge-1", Role: pki.RoleHost}
	e2 := pki.Identity{Name: "edge-2", Role: pki.RoleHost}
	etcd := pki.Identity{Name: "etcd", Role: pki.RoleEtcd}
	// web migrates from edge-2 to edge-1.
	mig := &store.Migration{Name: "web", From: "edge-2", To: "edge-1"}
	other := &store.Migration{Name: "db", From: "edge-2", To: "edge-1"}
	for _, tc := range []struct {
		what   string
		caller pki.Identity
		op     Op
		self   string
		m      *store.Migration
		ok     bool
	}{
		{"admin runs", admin, Op{Kind: AdminOnly}, "edge-1", nil, true},
		{"admin prepares", admin, Op{Incoming, "web"}, "edge-1", nil, true},
		{"host runs on another host", e2, Op{Kind: AdminOnly}, "edge-1", nil, false},
		{"host runs even with a migration", e2, Op{Kind: AdminOnly}, "edge-1", mig, false},
		{"host runs on itself", e1, Op{Kind: AdminOnly}, "edge-1", nil, false},
		{"source sends to destination", e2, Op{Incoming, "web"}, "edge-1", mig, true},
		{"no migration recorded", e2, Op{Incoming, "web"}, "edge-1", nil, false},
		{"record of another container", e2, Op{Incoming, "web"}, "edge-1", other, false},
		{"third host sends", pki.Identity{Name: "edge-3", Role: pki.RoleHost}, Op{Incoming, "web"}, "edge-1", mig, false},
		{"migration to another host", e2, Op{Incoming, "web"}, "edge-3", mig, false},
		{"destination calls the source's incoming", e1, Op{Incoming, "web"}, "edge-2", mig, false},
		{"destination opens the source's tunnel", e1, Op{Tunnel, "web"}, "edge-2", mig, true},
		{"source opens the destination's tunnel", e2, Op{Tunnel, "web"}, "edge-1", mig, false},
		{"tunnel without a migration", e1, Op{Tunnel, "web"}, "edge-2", nil, false},
		{"destination copies the source's image", e1, Op{Image, "web"}, "edge-2", mig, true},
		{"source copies from the destination", e2, Op{Image, "web"}, "edge-1", mig, false},
		{"third host copies the image", pki.Identity{Name: "edge-3", Role: pki.RoleHost}, Op{Image, "web"}, "edge-2", mig, false},
		{"image of another container", e1, Op{Image, "web"}, "edge-2", other, false},
		{"image without a migration", e1, Op{Image, "web"}, "edge-2", nil, false},
		{"etcd member calls", etcd, Op{Incoming, "web"}, "edge-1", mig, false},
		{"no role", pki.Identity{Name: "x"}, Op{Kind: AdminOnly}, "edge-1", nil, false},
	} {
		err := Decide(tc.caller, tc.op, tc.self, tc.m)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.what, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrForbidden) {
			t.Errorf("%s: err = %v, want ErrForbidden", tc.what, err)
		}
	}
}

func TestRevoked(t *testing.T) {
	var r Revoked
	id := pki.Identity{Name: "edge-2", Role: pki.RoleHost, Serial: "abc"}
	if err := r.Check(id); err != nil {
		t.Fatalf("empty set refuses: %v", err)
	}
	r.Set([]pki.Revocation{{Name: "edge-9", Serials: []string{"ABC"}}})
	if err := r.Check(id); !errors.Is(err, ErrForbidden) {
		t.Errorf("revoked serial: %v", err)
	}
	r.Set([]pki.Revocation{{Name: "edge-2", Serials: []string{"def"}}})
	if err := r.Check(id); !errors.Is(err, ErrForbidden) {
		t.Errorf("revoked name: %v", err)
	}
	r.Set(nil)
	if err := r.Check(id); err != nil {
		t.Errorf("after clearing: %v", err)
	}
}

func TestFromAddress(t *testing.T) {
	host := pki.Identity{Name: "edge-2", Role: pki.RoleHost, IPs: []net.IP{net.ParseIP("10.201.0.12")}}
	for _, tc := range []struct {
		id     pki.Identity
		remote string
		ok     bool
	}{
		{host, "10.201.0.12", true},
		{host, "::ffff:10.201.0.12", true},
		{host, "10.201.0.1", false},
		{host, "", false},
		{pki.Identity{Name: "edge-3", Role: pki.RoleHost}, "10.201.0.13", false}, // bound to nothing
		{pki.Identity{Name: "cli", Role: pki.RoleAdmin}, "192.0.2.1", true},
	} {
		err := FromAddress(tc.id, net.ParseIP(tc.remote))
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrForbidden)) {
			t.Errorf("%s from %q: %v, want ok=%v", tc.id.Name, tc.remote, err, tc.ok)
		}
	}
}
