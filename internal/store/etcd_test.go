package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const testSubnet = "10.202.7.0/24"

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// newTestStore starts a private embedded etcd (plain, loopback) and returns
// a Store on it under a test prefix. Everything is torn down in Cleanup.
func newTestStore(t *testing.T) *Etcd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var clientURL string
	var err error
	for attempt := 0; attempt < 3; attempt++ { // ports can be stolen between probe and bind
		clientURL = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
		var e interface{ Close() }
		e, err = StartEmbedded(ctx, EmbedConfig{
			Name:      "test",
			DataDir:   t.TempDir(),
			ClientURL: clientURL,
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		})
		if err == nil {
			t.Cleanup(e.Close)
			break
		}
	}
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{clientURL}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	_, subnet, _ := net.ParseCIDR(testSubnet)
	s := NewEtcd(cli, "/coat-test", subnet)
	t.Cleanup(func() { s.Close() }) // runs before e.Close (LIFO)
	return s
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEtcdCreateContainerAllocates(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	_, subnet, _ := net.ParseCIDR(testSubnet)

	seen := map[string]string{}
	for i, name := range []string{"a", "b", "c"} {
		c, err := s.CreateContainer(ctx, Container{Name: name, Host: "edge-1", Image: "img", Status: StatusCreated})
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		ip := net.ParseIP(c.IP)
		if ip == nil || !subnet.Contains(ip) {
			t.Fatalf("%s got ip %q outside %s", name, c.IP, subnet)
		}
		if want := Allocatable(subnet)[i].String(); c.IP != want {
			t.Errorf("%s got ip %s, want the next free address %s", name, c.IP, want)
		}
		if want := MACFor(ip).String(); c.MAC != want {
			t.Errorf("%s mac = %s, want %s", name, c.MAC, want)
		}
		if c.Revision <= 0 {
			t.Errorf("%s revision = %d", name, c.Revision)
		}
		if other, dup := seen[c.IP]; dup {
			t.Errorf("%s and %s share ip %s", name, other, c.IP)
		}
		seen[c.IP] = name

		got, err := s.Container(ctx, name)
		if err != nil {
			t.Fatalf("get %s: %v", name, err)
		}
		if got.IP != c.IP || got.MAC != c.MAC || got.Host != "edge-1" || got.Revision != c.Revision {
			t.Errorf("stored %+v, created %+v", got, c)
		}
	}

	// An explicit address is kept, normalised, and gets its MAC too.
	c, err := s.CreateContainer(ctx, Container{Name: "pinned", IP: "10.202.7.200"})
	if err != nil {
		t.Fatalf("create with ip: %v", err)
	}
	if c.IP != "10.202.7.200" || c.MAC != "02:c0:0a:ca:07:c8" {
		t.Errorf("pinned = %s %s", c.IP, c.MAC)
	}

	list, err := s.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range list {
		names = append(names, c.Name)
	}
	if fmt.Sprint(names) != "[a b c pinned]" {
		t.Errorf("Containers() = %v", names)
	}
	if _, err := s.Container(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing container: err = %v, want ErrNotFound", err)
	}
}

func TestEtcdCreateContainerRefusesBadIP(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	for _, ip := range []string{"10.202.8.20", "192.168.1.1", "10.202.7.0", "10.202.7.255", "fd00::1", "10.202.7.300", "web"} {
		_, err := s.CreateContainer(ctx, Container{Name: "x", IP: ip})
		if err == nil {
			t.Errorf("ip %q accepted", ip)
			continue
		}
		if errors.Is(err, ErrIPTaken) || errors.Is(err, ErrNameTaken) {
			t.Errorf("ip %q: err = %v, want a validation error", ip, err)
		}
	}
	// Nothing was claimed along the way.
	if _, err := s.Container(ctx, "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("refused create left a record: %v", err)
	}
	resp, err := s.Client().Get(ctx, "/coat-test/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Errorf("%d keys written by refused creates", resp.Count)
	}
}

// Names are keys: one with a '/' or '..' would reach another key space.
func TestEtcdRefusesBadNames(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	for _, name := range []string{"a/b", "../hosts/edge-1", "", "Web"} {
		if _, err := s.CreateContainer(ctx, Container{Name: name, Host: "edge-1", Image: "img"}); err == nil || !strings.Contains(err.Error(), "invalid name") {
			t.Errorf("CreateContainer(%q) = %v, want invalid name", name, err)
		}
		if err := s.RegisterHost(ctx, Host{Name: name}, 5*time.Second); err == nil || !strings.Contains(err.Error(), "invalid host name") {
			t.Errorf("RegisterHost(%q) = %v, want invalid host name", name, err)
		}
	}
	resp, err := s.Client().Get(ctx, "/coat-test/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 0 {
		t.Errorf("%d keys written by refused calls", resp.Count)
	}
}

func TestEtcdCreateContainerTaken(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	a, err := s.CreateContainer(ctx, Container{Name: "a", IP: "10.202.7.50", Host: "edge-1"})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, ip string
		want     error
	}{
		{"a", "10.202.7.51", ErrNameTaken}, // same name, other IP
		{"a", "", ErrNameTaken},            // same name, allocated IP
		{"a", "10.202.7.50", ErrNameTaken}, // both taken: the name is reported
		{"b", "10.202.7.50", ErrIPTaken},   // other name, same IP
	}
	for _, tt := range tests {
		_, err := s.CreateContainer(ctx, Container{Name: tt.name, IP: tt.ip, Host: "edge-2"})
		if !errors.Is(err, tt.want) {
			t.Errorf("create %s/%q: err = %v, want %v", tt.name, tt.ip, err, tt.want)
		}
	}
	got, err := s.Container(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Host != "edge-1" || got.IP != a.IP || got.Revision != a.Revision {
		t.Errorf("record changed by failed creates: %+v", got)
	}
	if _, err := s.Container(ctx, "b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("b: err = %v, want ErrNotFound", err)
	}
	// The allocator skips the taken address.
	b, err := s.CreateContainer(ctx, Container{Name: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if b.IP == a.IP {
		t.Errorf("b allocated a's ip %s", b.IP)
	}
}

func TestEtcdCreateContainerConcurrent(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	const n = 30
	var wg sync.WaitGroup
	results := make([]Container, n)
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = s.CreateContainer(ctx, Container{Name: fmt.Sprintf("c%d", i), Status: StatusCreated})
		})
	}
	close(start)
	wg.Wait()

	ips := map[string]string{}
	for i := range n {
		if errs[i] != nil {
			t.Errorf("c%d: %v", i, errs[i])
			continue
		}
		c := results[i]
		if other, dup := ips[c.IP]; dup {
			t.Errorf("c%d and %s both got %s", i, other, c.IP)
		}
		ips[c.IP] = c.Name
		if c.MAC != MACFor(net.ParseIP(c.IP)).String() {
			t.Errorf("c%d: mac %s does not match ip %s", i, c.MAC, c.IP)
		}
	}
	list, err := s.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != n {
		t.Errorf("%d records, want %d", len(list), n)
	}
	// Every stored record owns its IP key, and there is no stray claim.
	resp, err := s.Client().Get(ctx, "/coat-test/ips/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != n {
		t.Errorf("%d ip claims, want %d", len(resp.Kvs), n)
	}
	for _, c := range list {
		r, err := s.Client().Get(ctx, "/coat-test/ips/"+c.IP)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != c.Name {
			t.Errorf("ip %s is not claimed by %s", c.IP, c.Name)
		}
	}
}

func TestEtcdUpdateContainerConflict(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	c, err := s.CreateContainer(ctx, Container{Name: "a", Host: "edge-1", Status: StatusCreated})
	if err != nil {
		t.Fatal(err)
	}
	stale := c

	c.Status = StatusRunning
	c1, err := s.UpdateContainer(ctx, c)
	if err != nil {
		t.Fatalf("update at current revision: %v", err)
	}
	if c1.Revision <= c.Revision {
		t.Errorf("revision did not advance: %d -> %d", c.Revision, c1.Revision)
	}

	stale.Status = StatusMigrating
	stale.MigratingTo = "edge-2"
	if _, err := s.UpdateContainer(ctx, stale); !errors.Is(err, ErrConflict) {
		t.Fatalf("update at stale revision: err = %v, want ErrConflict", err)
	}
	got, err := s.Container(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != StatusRunning || got.MigratingTo != "" || got.Revision != c1.Revision {
		t.Errorf("stale update leaked: %+v", got)
	}

	// A fresh read can update again.
	got.Status = StatusMigrating
	if _, err := s.UpdateContainer(ctx, got); err != nil {
		t.Errorf("update after re-read: %v", err)
	}
	// A record that does not exist cannot be updated into existence.
	if _, err := s.UpdateContainer(ctx, Container{Name: "ghost", Revision: 1}); !errors.Is(err, ErrConflict) {
		t.Errorf("update of missing record: err = %v, want ErrConflict", err)
	}
}

func TestEtcdDeleteContainerFreesIP(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	a, err := s.CreateContainer(ctx, Container{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateContainer(ctx, Container{Name: "b", IP: a.IP}); !errors.Is(err, ErrIPTaken) {
		t.Fatalf("ip of a live container: err = %v, want ErrIPTaken", err)
	}
	if err := s.DeleteContainer(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Container(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted record still there: %v", err)
	}
	if err := s.DeleteContainer(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: err = %v, want ErrNotFound", err)
	}
	// The address is free again: for an explicit claim...
	b, err := s.CreateContainer(ctx, Container{Name: "b", IP: a.IP})
	if err != nil {
		t.Fatalf("reuse freed ip: %v", err)
	}
	if err := s.DeleteContainer(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	// ...and for the allocator, which hands out the lowest free address.
	c, err := s.CreateContainer(ctx, Container{Name: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if c.IP != a.IP || c.IP != b.IP {
		t.Errorf("allocator gave %s, want the freed %s", c.IP, a.IP)
	}
	// The name is free again too.
	if _, err := s.CreateContainer(ctx, Container{Name: "a"}); err != nil {
		t.Errorf("reuse freed name: %v", err)
	}
}

func recv(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed early")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no watch event within 5s")
	}
	return Event{}
}

func TestEtcdWatchContainers(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	a, err := s.CreateContainer(ctx, Container{Name: "a", Host: "edge-1", Status: StatusRunning})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.CreateContainer(ctx, Container{Name: "b", Host: "edge-2", Status: StatusRunning})
	if err != nil {
		t.Fatal(err)
	}

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	ch, err := s.WatchContainers(wctx)
	if err != nil {
		t.Fatal(err)
	}

	// The current records first, in key order, with their revisions.
	for _, want := range []Container{a, b} {
		ev := recv(t, ch)
		if ev.Deleted || ev.Container.Name != want.Name || ev.Container.IP != want.IP || ev.Container.Revision != want.Revision {
			t.Errorf("initial event %+v, want %+v", ev, want)
		}
	}

	// Then an update...
	a.Host, a.Status = "edge-2", StatusRunning
	a2, err := s.UpdateContainer(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	ev := recv(t, ch)
	if ev.Deleted || ev.Container.Name != "a" || ev.Container.Host != "edge-2" || ev.Container.Revision != a2.Revision {
		t.Errorf("update event %+v, want a on edge-2 at revision %d", ev, a2.Revision)
	}

	// ...and a delete, which carries the last known record.
	if err := s.DeleteContainer(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	ev = recv(t, ch)
	if !ev.Deleted || ev.Container.Name != "b" || ev.Container.IP != b.IP || ev.Container.Host != "edge-2" {
		t.Errorf("delete event %+v, want b deleted (ip %s)", ev, b.IP)
	}

	// A change made before the watch started is not replayed, and nothing
	// else is pending.
	select {
	case ev := <-ch:
		t.Errorf("unexpected event %+v", ev)
	case <-time.After(100 * time.Millisecond):
	}

	// Cancelling the context ends the watch.
	stop()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch channel not closed after cancel")
		}
	}
}

func hostNames(t *testing.T, s *Etcd, ctx context.Context) []string {
	t.Helper()
	hs, err := s.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, h := range hs {
		out = append(out, h.Name)
	}
	return out
}

func TestEtcdRegisterHostLease(t *testing.T) {
	t.Parallel()
	s, ctx := newTestStore(t), testCtx(t)
	const ttl = time.Second // etcd raises it to its minimum lease TTL (2s here)

	keepCtx, keepCancel := context.WithCancel(ctx)
	defer keepCancel()
	h2 := Host{Name: "edge-2", UnderlayIP: "10.201.0.12", API: "10.201.0.12:7443", Started: time.Now().UTC().Truncate(time.Second)}
	if err := s.RegisterHost(keepCtx, h2, ttl); err != nil {
		t.Fatal(err)
	}
	goneCtx, goneCancel := context.WithCancel(ctx)
	defer goneCancel()
	h1 := Host{Name: "edge-1", UnderlayIP: "10.201.0.11", API: "10.201.0.11:7443"}
	if err := s.RegisterHost(goneCtx, h1, ttl); err != nil {
		t.Fatal(err)
	}

	if got := fmt.Sprint(hostNames(t, s, ctx)); got != "[edge-1 edge-2]" {
		t.Fatalf("Hosts() = %s, want [edge-1 edge-2]", got)
	}
	got, err := s.Host(ctx, "edge-2")
	if err != nil {
		t.Fatal(err)
	}
	if got.UnderlayIP != h2.UnderlayIP || got.API != h2.API || !got.Started.Equal(h2.Started) {
		t.Errorf("Host(edge-2) = %+v, want %+v", got, h2)
	}
	if _, err := s.Host(ctx, "edge-9"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown host: err = %v, want ErrNotFound", err)
	}

	// Kept alive past its TTL while the context lives.
	time.Sleep(2500 * time.Millisecond)
	if got := fmt.Sprint(hostNames(t, s, ctx)); got != "[edge-1 edge-2]" {
		t.Fatalf("after the TTL, Hosts() = %s: keepalive does not work", got)
	}

	// Once edge-1's context ends it drops out within a few seconds; edge-2
	// stays.
	goneCancel()
	cancelled := time.Now()
	deadline := cancelled.Add(5 * time.Second)
	for {
		names := fmt.Sprint(hostNames(t, s, ctx))
		if names == "[edge-2]" {
			t.Logf("edge-1 gone %v after its context ended", time.Since(cancelled).Round(10*time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5s after cancelling its context, Hosts() = %s, want [edge-2]", names)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := s.Host(ctx, "edge-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Host(edge-1) after expiry: err = %v, want ErrNotFound", err)
	}
}
