package store

import (
	"errors"
	"testing"
	"time"
)

func testClient(name, underlay string, roams int64) Client {
	return Client{Name: name, UnderlayIP: underlay, OverlayIP: "10.202.7.250", MAC: "02:c0:0a:ca:07:fa", Roams: roams, Updated: time.Now().UTC()}
}

func TestClientValidate(t *testing.T) {
	ok := testClient("client", "10.201.7.101", 0)
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid client refused: %v", err)
	}
	detached := ok
	detached.UnderlayIP = ""
	if err := detached.Validate(); err != nil {
		t.Fatalf("detached client (no underlay ip) refused: %v", err)
	}
	for what, mod := range map[string]func(*Client){
		"bad name":        func(c *Client) { c.Name = "../x" },
		"bad underlay ip": func(c *Client) { c.UnderlayIP = "10.0.0" },
		"ipv6 underlay":   func(c *Client) { c.UnderlayIP = "fe80::1" },
		"bad overlay ip":  func(c *Client) { c.OverlayIP = "10.0.0" },
		"multicast mac":   func(c *Client) { c.MAC = "01:00:5e:00:00:01" },
		"bad attached to": func(c *Client) { c.AttachedTo = "Edge 1" },
	} {
		c := ok
		mod(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted %+v", what, c)
		}
	}
}

func TestEtcdClientsAndFollows(t *testing.T) {
	s := newTestStore(t)
	ctx := testCtx(t)
	changed := s.WatchClients(ctx)
	if err := s.PutClient(ctx, testClient("client", "10.201.7.100", 0)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("no watch signal for a new client record")
	}
	if err := s.PutClient(ctx, testClient("x/y", "10.201.7.100", 0)); err == nil {
		t.Fatal("a client name with a slash was written")
	}
	if _, err := s.SetFollow(ctx, "web", "client"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("follow of a container that does not exist: %v, want not found", err)
	}
	if _, err := s.CreateContainer(ctx, Container{Name: "web", Host: "edge-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetFollow(ctx, "web", "phone"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("follow of an unknown client: %v, want not found", err)
	}
	if fs, _ := s.Follows(ctx); len(fs) != 0 {
		t.Fatalf("refused follows left records: %+v", fs)
	}
	// A roam before the policy does not count: Handled starts at Roams.
	if err := s.PutClient(ctx, testClient("client", "10.201.7.101", 1)); err != nil {
		t.Fatal(err)
	}
	f, err := s.SetFollow(ctx, "web", "client")
	if err != nil || f.Handled != 1 {
		t.Fatalf("SetFollow: %+v %v, want handled 1", f, err)
	}
	cs, err := s.Clients(ctx)
	if err != nil || len(cs) != 1 || cs[0].UnderlayIP != "10.201.7.101" {
		t.Fatalf("Clients: %+v %v", cs, err)
	}
	// Two hosts see roam 2 with the same policy record: one wins.
	fs, err := s.Follows(ctx)
	if err != nil || len(fs) != 1 || fs[0].Container != "web" || fs[0].Client != "client" {
		t.Fatalf("Follows: %+v %v", fs, err)
	}
	won, err := s.ClaimRoam(ctx, fs[0], 2)
	if err != nil || won.Handled != 2 {
		t.Fatalf("first claim: %+v %v", won, err)
	}
	if _, err := s.ClaimRoam(ctx, fs[0], 2); !errors.Is(err, ErrConflict) {
		t.Fatalf("second claim of the same roam: %v, want a conflict", err)
	}
	// rm takes the policy with it.
	if err := s.DeleteContainer(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if fs, _ := s.Follows(ctx); len(fs) != 0 {
		t.Fatalf("policy outlived its container: %+v", fs)
	}
	if had, err := s.Unfollow(ctx, "web"); err != nil || had {
		t.Fatalf("Unfollow of nothing: %v %v", had, err)
	}
}
