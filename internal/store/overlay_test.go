package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestParseOverlayCIDR(t *testing.T) {
	for _, tt := range []struct{ in, want, err string }{
		{"10.96.0.0/16", "10.96.0.0/16", ""},
		{"10.202.3.0/24", "10.202.3.0/24", ""},
		{"10.0.0.0/8", "10.0.0.0/8", ""},
		{"10.9.8.0/27", "10.9.8.0/27", ""},
		{"10.9.8.0/28", "", "between /8 and /27"},
		{"10.0.0.0/7", "", "between /8 and /27"},
		{"10.96.1.0/16", "", "did you mean 10.96.0.0/16"},
		{"fd00::/64", "", "only IPv4"},
		{"10.96.0.0", "", "want an IPv4 network"},
		{"", "", "want an IPv4 network"},
		{"banana/16", "", "want an IPv4 network"},
	} {
		sn, err := ParseOverlayCIDR(tt.in)
		switch {
		case tt.err == "" && (err != nil || sn.String() != tt.want):
			t.Errorf("%q: %v %v, want %s", tt.in, sn, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%q: %v %v, want an error saying %q", tt.in, sn, err, tt.err)
		}
	}
}

func TestCheckUnderlay(t *testing.T) {
	sn, _ := ParseOverlayCIDR("10.96.0.0/16")
	if err := CheckUnderlay(sn, []net.IP{net.ParseIP("10.201.0.11"), nil}); err != nil {
		t.Fatal(err)
	}
	if err := CheckUnderlay(sn, []net.IP{net.ParseIP("10.96.3.4")}); err == nil || !strings.Contains(err.Error(), "10.96.3.4") {
		t.Fatalf("underlay inside the overlay: %v", err)
	}
}

// Every address of a /16 gets its own MAC (the MAC embeds all four bytes).
func TestMACForUniqueIn16(t *testing.T) {
	sn, _ := ParseOverlayCIDR("10.96.0.0/16")
	seen := map[string]bool{}
	for _, ip := range Allocatable(sn) {
		m := MACFor(ip).String()
		if seen[m] {
			t.Fatalf("MAC %s twice (at %s)", m, ip)
		}
		seen[m] = true
	}
	if len(seen) != 65536-21 {
		t.Fatalf("%d MACs", len(seen))
	}
}

// countingKV counts the round trips a store makes.
type countingKV struct {
	clientv3.KV
	gets, txns atomic.Int64
}

func (k *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	k.gets.Add(1)
	return k.KV.Get(ctx, key, opts...)
}

func (k *countingKV) Txn(ctx context.Context) clientv3.Txn {
	k.txns.Add(1)
	return k.KV.Txn(ctx)
}

// Allocation in a /16 with thousands of addresses taken: one read of the
// taken addresses and one claim, and the lowest free address, across the
// /24 boundaries.
func TestEtcdAllocateIn16(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	sn, _ := ParseOverlayCIDR("10.96.0.0/16")
	s = NewEtcd(s.cli, "/coat-test", sn)
	// Take 10.96.0.10 .. 10.96.11.233 (3,000 addresses) but one hole.
	first, _, _ := ipRange(sn)
	hole := u32ToIP(first + 1234).String()
	var ops []clientv3.Op
	flush := func() {
		if len(ops) == 0 {
			return
		}
		if _, err := s.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
		ops = ops[:0]
	}
	for i := range uint32(3000) {
		ip := u32ToIP(first + i).String()
		if ip == hole {
			continue
		}
		ops = append(ops, clientv3.OpPut(s.ipKey(ip), fmt.Sprintf("x%d", i)))
		if len(ops) == 100 {
			flush()
		}
	}
	flush()
	kv := &countingKV{KV: s.cli.KV}
	s.cli.KV = kv
	c, err := s.CreateContainer(ctx, Container{Name: "a", Host: "edge-1", Image: "img", Status: StatusCreated})
	if err != nil {
		t.Fatal(err)
	}
	if c.IP != hole || c.MAC != MACFor(net.ParseIP(hole)).String() {
		t.Fatalf("first create: %s %s, want the hole %s", c.IP, c.MAC, hole)
	}
	if g, x := kv.gets.Load(), kv.txns.Load(); g != 1 || x != 1 {
		t.Fatalf("allocation took %d reads and %d transactions, want 1 and 1", g, x)
	}
	c, err = s.CreateContainer(ctx, Container{Name: "b", Host: "edge-1", Image: "img", Status: StatusCreated})
	if want := u32ToIP(first + 3000).String(); err != nil || c.IP != want {
		t.Fatalf("second create: %s %v, want %s", c.IP, err, want)
	}
	if !strings.HasPrefix(c.IP, "10.96.11.") {
		t.Fatalf("second create: %s, want 10.96.11.x", c.IP)
	}
	// An address given explicitly anywhere in the /16 is accepted.
	if c, err := s.CreateContainer(ctx, Container{Name: "c", IP: "10.96.200.7", Host: "edge-1", Image: "img"}); err != nil || c.MAC != "02:c0:0a:60:c8:07" {
		t.Fatalf("explicit ip: %+v %v", c, err)
	}
}

// Concurrent creates in a /16 never share an address.
func TestEtcdAllocateIn16Concurrent(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	sn, _ := ParseOverlayCIDR("10.96.0.0/16")
	s = NewEtcd(s.cli, "/coat-test", sn)
	const n = 40
	ips := make(chan string, n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			c, err := s.CreateContainer(ctx, Container{Name: fmt.Sprintf("c%d", i), Host: "edge-1", Image: "img"})
			errs <- err
			ips <- c.IP
		}()
	}
	seen := map[string]bool{}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		ip := <-ips
		if seen[ip] {
			t.Fatalf("%s allocated twice", ip)
		}
		seen[ip] = true
	}
}

func TestEtcdOverlayCIDR(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	if _, err := s.OverlayCIDR(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unset: %v", err)
	}
	// Recorded the first time over containers that hold addresses (agents
	// given --subnet): only a CIDR that contains them all.
	old := NewEtcd(s.cli, "/coat-test", mustCIDR(t, "10.96.3.0/24"))
	if _, err := old.CreateContainer(ctx, Container{Name: "old", Host: "edge-1", Image: "img"}); err != nil {
		t.Fatal(err)
	}
	outside, _ := ParseOverlayCIDR("10.97.0.0/16")
	if err := s.SetOverlayCIDR(ctx, outside); err == nil || !strings.Contains(err.Error(), "outside 10.97.0.0/16") {
		t.Fatalf("first record, not containing the addresses in use: %v", err)
	}
	if _, err := s.OverlayCIDR(ctx); !errors.Is(err, ErrNotFound) {
		t.Fatalf("recorded after a refusal: %v", err)
	}
	if err := s.SetOverlayCIDR(ctx, mustCIDR(t, "10.96.3.0/24")); err != nil {
		t.Fatalf("first record, containing the addresses in use: %v", err)
	}
	if err := old.DeleteContainer(ctx, "old"); err != nil {
		t.Fatal(err)
	}
	a, _ := ParseOverlayCIDR("10.96.0.0/16")
	b, _ := ParseOverlayCIDR("10.97.0.0/16")
	if err := s.SetOverlayCIDR(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got, err := s.OverlayCIDR(ctx); err != nil || got.String() != "10.96.0.0/16" {
		t.Fatalf("read back: %v %v", got, err)
	}
	// Same again: fine. Another while no container holds an address: fine.
	if err := s.SetOverlayCIDR(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOverlayCIDR(ctx, b); err != nil {
		t.Fatal(err)
	}
	// Once an address is taken, the CIDR stays.
	s2 := NewEtcd(s.cli, "/coat-test", b)
	if _, err := s2.CreateContainer(ctx, Container{Name: "x", Host: "edge-1", Image: "img"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetOverlayCIDR(ctx, a); err == nil || !strings.Contains(err.Error(), "coat rm") || !strings.Contains(err.Error(), "1 container(s)") {
		t.Fatalf("change with a container: %v", err)
	}
	if got, _ := s.OverlayCIDR(ctx); got.String() != "10.97.0.0/16" {
		t.Fatalf("after the refused change: %v", got)
	}
	if err := s.SetOverlayCIDR(ctx, b); err != nil {
		t.Fatalf("same CIDR with containers: %v", err)
	}
}
