package lab

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/linkspec"
)

func TestValidateLinks(t *testing.T) {
	ok := map[string]linkspec.Link{"edge-1": {Rate: 1e9}, "edge-3": {Delay: time.Millisecond}, "client": {}}
	if err := ValidateLinks(ok, 3); err != nil {
		t.Fatal(err)
	}
	err := ValidateLinks(map[string]linkspec.Link{"edge-4": {Rate: 1e9}}, 3)
	if err == nil || !strings.Contains(err.Error(), "name one of edge-1, edge-2, edge-3, client") {
		t.Fatalf("edge-4 in a 3-host lab: %v", err)
	}
}

// The relay's links must fit IFNAMSIZ and carry the lab's prefix, which
// is how lab down finds them.
func TestRelayLinkNames(t *testing.T) {
	s := &State{Name: "abcdefgh", Index: 255, Hosts: 50}
	for _, n := range s.Nodes() {
		for _, name := range []string{s.rootVeth(n), s.relayVeth(n), s.bridgeVeth(n)} {
			if len(name) > 15 || !strings.HasPrefix(name, "coat255-") {
				t.Errorf("link name %q: longer than 15 or not under the lab's prefix", name)
			}
		}
	}
	argv := s.relayArgv("edge-2", "/bin/coat", linkspec.Link{Delay: 20 * time.Millisecond, Loss: 0.01}, 7, 9)
	want := []string{"/bin/coat", "lab", "relay", "--lab", "abcdefgh", "--node", "edge-2",
		"--in", "coat255-e2@7", "--out", "coat255-e2r@9", "--delay", "20ms", "--loss", "1%"}
	if !slices.Equal(argv, want) {
		t.Errorf("relay argv %q, want %q", argv, want)
	}
}

func TestTBFSizes(t *testing.T) {
	for _, r := range []linkspec.Rate{1e6, 100e6, 1e9, 10e9} {
		b, l := tbfBurst(r), tbfLimit(r)
		if b < 2*65536 || l <= b {
			t.Errorf("rate %s: burst %d (want >= 128 KiB: a whole GSO frame), limit %d", r, b, l)
		}
	}
	if b := tbfBurst(10e9); b != 5e6 {
		t.Errorf("10gbit burst %d, want 4 ms worth", b)
	}
}

func TestRelayLink(t *testing.T) {
	if _, err := relayLink("lo"); err != nil {
		t.Fatal(err)
	}
	if _, err := relayLink("lo@1"); err != nil {
		t.Fatal(err)
	}
	if _, err := relayLink("lo@99999"); err == nil || !strings.Contains(err.Error(), "made anew") {
		t.Errorf("wrong index: %v", err)
	}
	if _, err := relayLink("nosuchlink0"); err == nil {
		t.Error("missing link accepted")
	}
}
