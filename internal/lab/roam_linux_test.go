package lab

import (
	"strings"
	"testing"

	"github.com/coat-project/coat/internal/store"
)

func TestClientAttachment(t *testing.T) {
	s := &State{Name: "t", Index: 7, Hosts: 3}
	for _, tc := range []struct{ at, want string }{
		{"", "10.201.7.100"},
		{"edge-1", "10.201.7.101"},
		{"edge-3", "10.201.7.103"},
	} {
		if got := s.ClientIPAt(tc.at).String(); got != tc.want {
			t.Errorf("ClientIPAt(%q) = %s, want %s", tc.at, got, tc.want)
		}
		s.ClientAt = tc.at
		if got := s.UnderlayIP(ClientNode).String(); got != tc.want {
			t.Errorf("client attached to %q: UnderlayIP = %s, want %s", tc.at, got, tc.want)
		}
	}
	// No client address is an edge's, whatever the lab's size (50 at most).
	big := &State{Index: 1, Hosts: 50}
	seen := map[string]string{}
	for i := 1; i <= 50; i++ {
		seen[big.UnderlayIP(EdgeName(i)).String()] = EdgeName(i)
	}
	for i := 0; i <= 50; i++ {
		at := ""
		if i > 0 {
			at = EdgeName(i)
		}
		if n, ok := seen[big.ClientIPAt(at).String()]; ok {
			t.Errorf("client next to %q has %s's address", at, n)
		}
	}
}

func TestCheckRoam(t *testing.T) {
	s := &State{Name: "t", Index: 7, Hosts: 2}
	if err := s.CheckRoam("client", "edge-2"); err != nil {
		t.Fatalf("a good roam refused: %v", err)
	}
	for _, tc := range []struct{ client, to, want string }{
		{"phone", "edge-1", `unknown client "phone"`},
		{"client", "edge-3", `unknown host "edge-3"`},
		{"client", "edge-0", `unknown host "edge-0"`},
		{"client", "edge-01", `unknown host "edge-01"`},
		{"client", "client", `unknown host "client"`},
		{"client", "", `unknown host ""`},
	} {
		err := s.CheckRoam(tc.client, tc.to)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckRoam(%q, %q) = %v, want %s", tc.client, tc.to, err, tc.want)
		}
	}
}

func TestClientRecord(t *testing.T) {
	s := &State{Name: "t", Index: 7, Hosts: 2, ClientAt: "edge-2", ClientRoams: 3}
	c := s.ClientRecord()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Name != ClientNode || c.UnderlayIP != "10.201.7.102" || c.OverlayIP != "10.202.7.250" ||
		c.MAC != store.MACFor(s.ClientOverlayIP()).String() || c.AttachedTo != "edge-2" || c.Roams != 3 {
		t.Fatalf("client record %+v", c)
	}
	if got := s.clientOverlayConfig(); got.BridgeMAC.String() != c.MAC || !got.LocalIP.Equal(s.ClientIPAt("edge-2")) {
		t.Fatalf("client overlay %+v does not match its record %+v", got, c)
	}
}
