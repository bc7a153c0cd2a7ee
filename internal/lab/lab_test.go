package lab

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"coat", true},
		{"a", true},
		{"lab1", true},
		{"abcdefgh", true}, // 8 chars
		{"abcdefghi", false},
		{"", false},
		{"1lab", false},
		{"Lab", false},
		{"la-b", false},
		{"la_b", false},
		{"la b", false},
		{"lab\n", false},
		{"../x", false},
	} {
		err := ValidName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.name)) {
			t.Errorf("ValidName(%q) error does not name it: %v", tc.name, err)
		}
	}
	if err := ValidName(DefaultName); err != nil {
		t.Errorf("DefaultName %q invalid: %v", DefaultName, err)
	}
}

func TestDir(t *testing.T) {
	if got, want := Dir("coat"), BaseDir+"/coat"; got != want {
		t.Errorf("Dir = %q, want %q", got, want)
	}
}

func TestNodes(t *testing.T) {
	s := &State{Name: "t", Hosts: 3}
	if got, want := s.Nodes(), []string{"edge-1", "edge-2", "edge-3", "client"}; !slices.Equal(got, want) {
		t.Errorf("Nodes = %q, want %q", got, want)
	}
	if got := (&State{}).Nodes(); !slices.Equal(got, []string{ClientNode}) {
		t.Errorf("Nodes with no hosts = %q", got)
	}
	if EdgeName(7) != "edge-7" {
		t.Errorf("EdgeName(7) = %q", EdgeName(7))
	}
}

func TestNetNSNames(t *testing.T) {
	s := &State{Name: "lab1", Index: 2, Hosts: 2}
	if got, want := s.NetNSName("edge-1"), "coat-lab1-edge-1"; got != want {
		t.Errorf("NetNSName = %q, want %q", got, want)
	}
	if got, want := s.NetNSPath("client"), "/run/netns/coat-lab1-client"; got != want {
		t.Errorf("NetNSPath = %q, want %q", got, want)
	}
	// Distinct labs get distinct namespace names.
	o := &State{Name: "lab2", Index: 3, Hosts: 2}
	if s.NetNSName("edge-1") == o.NetNSName("edge-1") {
		t.Error("two labs share a namespace name")
	}
}

// Interface names must fit the kernel's IFNAMSIZ-1 = 15 characters for
// every index a lab can get and every host count lab up accepts.
func TestInterfaceNamesFit(t *testing.T) {
	for idx := 0; idx <= 255; idx++ {
		s := &State{Name: "abcdefgh", Index: idx, Hosts: 50}
		if b := s.bridge(); len(b) > 15 {
			t.Fatalf("bridge %q longer than 15", b)
		}
		seen := map[string]string{}
		for _, n := range s.Nodes() {
			v := s.rootVeth(n)
			if len(v) > 15 {
				t.Fatalf("rootVeth(%q) = %q longer than 15", n, v)
			}
			if prev, dup := seen[v]; dup {
				t.Fatalf("rootVeth(%q) = rootVeth(%q) = %q", n, prev, v)
			}
			seen[v] = n
		}
	}
	s := &State{Index: 4}
	if got := s.rootVeth("edge-12"); got != "coat4-e12" {
		t.Errorf("rootVeth(edge-12) = %q", got)
	}
	if got := s.rootVeth(ClientNode); got != "coat4-cl" {
		t.Errorf("rootVeth(client) = %q", got)
	}
	if got := s.bridge(); got != "coatbr4" {
		t.Errorf("bridge = %q", got)
	}
}

func TestAddresses(t *testing.T) {
	for _, idx := range []int{0, 1, 7, 255} {
		s := &State{Index: idx, Hosts: 50}
		ip := func(a, b, c, d int) net.IP { return net.IPv4(byte(a), byte(b), byte(c), byte(d)).To4() }
		for node, want := range map[string]net.IP{
			"":        ip(10, 201, idx, 1),
			"edge-1":  ip(10, 201, idx, 11),
			"edge-50": ip(10, 201, idx, 60),
			"client":  ip(10, 201, idx, 100),
		} {
			if got := s.UnderlayIP(node); !got.Equal(want) || len(got) != 4 {
				t.Errorf("index %d: UnderlayIP(%q) = %v, want %v (4 bytes)", idx, node, got, want)
			}
		}
		if got, want := s.ClientOverlayIP(), ip(10, 202, idx, 250); !got.Equal(want) {
			t.Errorf("index %d: ClientOverlayIP = %v, want %v", idx, got, want)
		}
		sub := s.OverlaySubnet()
		if got, want := sub.String(), fmt.Sprintf("10.202.%d.0/24", idx); got != want {
			t.Errorf("index %d: OverlaySubnet = %s, want %s", idx, got, want)
		}
		if !sub.Contains(s.ClientOverlayIP()) {
			t.Errorf("index %d: client overlay IP outside the subnet", idx)
		}
		// The underlay addresses of all nodes are distinct.
		seen := map[string]string{}
		for _, n := range append(s.Nodes(), "") {
			a := s.UnderlayIP(n).String()
			if prev, dup := seen[a]; dup {
				t.Errorf("index %d: %q and %q share underlay IP %s", idx, n, prev, a)
			}
			seen[a] = n
		}
	}
}

func TestValidEtcdMembers(t *testing.T) {
	for _, tc := range []struct {
		n, hosts int
		ok       bool
	}{
		{1, 1, true},
		{1, 50, true},
		{3, 3, true},
		{3, 5, true},
		{3, 2, false},
		{0, 3, false},
		{2, 3, false},
		{5, 5, false},
		{-1, 3, false},
	} {
		if err := ValidEtcdMembers(tc.n, tc.hosts); (err == nil) != tc.ok {
			t.Errorf("ValidEtcdMembers(%d, %d) = %v, want ok=%v", tc.n, tc.hosts, err, tc.ok)
		}
	}
}

func TestEtcdMembersSingle(t *testing.T) {
	for _, m := range []int{0, 1} { // 0: a state from before the field
		s := &State{Name: "t", Index: 3, Hosts: 2, EtcdMembers: m}
		if s.Members() != 1 {
			t.Errorf("EtcdMembers %d: Members = %d, want 1", m, s.Members())
		}
		if got := s.EtcdPidKeys(); !slices.Equal(got, []string{"etcd"}) {
			t.Errorf("EtcdPidKeys = %q", got)
		}
		if got := s.etcdNode(1); got != "" {
			t.Errorf("etcdNode(1) = %q, want the root namespace", got)
		}
		if got, want := s.etcdClientURL(1), "https://10.201.3.1:2379"; got != want {
			t.Errorf("etcdClientURL = %q, want %q", got, want)
		}
		if got, want := s.etcdPeerURL(1), "https://127.0.0.1:23803"; got != want {
			t.Errorf("etcdPeerURL = %q, want %q", got, want)
		}
		if got, want := s.etcdClientURLs(), "https://10.201.3.1:2379"; got != want {
			t.Errorf("etcdClientURLs = %q, want %q", got, want)
		}
	}
}

func TestEtcdMembersThree(t *testing.T) {
	s := &State{Name: "t", Index: 5, Hosts: 4, EtcdMembers: 3}
	if s.Members() != 3 {
		t.Fatalf("Members = %d", s.Members())
	}
	if got, want := s.EtcdPidKeys(), []string{"etcd-1", "etcd-2", "etcd-3"}; !slices.Equal(got, want) {
		t.Errorf("EtcdPidKeys = %q, want %q", got, want)
	}
	for i := 1; i <= 3; i++ {
		if got := s.etcdNode(i); got != EdgeName(i) {
			t.Errorf("etcdNode(%d) = %q", i, got)
		}
		ip := fmt.Sprintf("10.201.5.%d", 10+i)
		if got, want := s.etcdClientURL(i), "https://"+ip+":2379"; got != want {
			t.Errorf("etcdClientURL(%d) = %q, want %q", i, got, want)
		}
		if got, want := s.etcdPeerURL(i), "https://"+ip+":2380"; got != want {
			t.Errorf("etcdPeerURL(%d) = %q, want %q", i, got, want)
		}
	}
	if got, want := s.etcdClientURLs(), "https://10.201.5.11:2379,https://10.201.5.12:2379,https://10.201.5.13:2379"; got != want {
		t.Errorf("etcdClientURLs = %q, want %q", got, want)
	}
}

func TestStateJSON(t *testing.T) {
	// A state written before etcd_members existed reads as one member.
	var s State
	if err := json.Unmarshal([]byte(`{"name":"coat","index":2,"hosts":3,"pids":{"etcd":1}}`), &s); err != nil {
		t.Fatal(err)
	}
	if s.Members() != 1 || s.Index != 2 || s.Hosts != 3 || s.Pids["etcd"] != 1 {
		t.Errorf("decoded %+v", s)
	}
	b, err := json.Marshal(&State{Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "etcd_members") {
		t.Errorf("zero EtcdMembers not omitted: %s", b)
	}
}

func TestSaveAndPKIDir(t *testing.T) {
	dir := t.TempDir()
	s := &State{Name: "t", Index: 1, Hosts: 2, Dir: dir, Pids: map[string]int{"edge-1": 42}, EtcdMembers: 3}
	if err := s.save(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back State
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Name != "t" || back.Pids["edge-1"] != 42 || back.Members() != 3 || back.Dir != dir {
		t.Errorf("round trip: %+v", back)
	}
	if got, want := s.PKIDir(), dir+"/pki"; got != want {
		t.Errorf("PKIDir = %q, want %q", got, want)
	}
	if got, want := s.logPath("agent-edge-1"), dir+"/logs/agent-edge-1.log"; got != want {
		t.Errorf("logPath = %q, want %q", got, want)
	}
}

// A lab given a bigger overlay: the client sits among the last ten
// addresses, which are never allocated; an overlay over the underlay is
// refused.
func TestOverlayCIDR(t *testing.T) {
	s := &State{Index: 3, Overlay: "10.96.0.0/16"}
	if got := s.OverlaySubnet().String(); got != "10.96.0.0/16" {
		t.Fatalf("OverlaySubnet = %s", got)
	}
	if got := s.ClientOverlayIP().String(); got != "10.96.255.250" {
		t.Fatalf("ClientOverlayIP = %s, want 10.96.255.250", got)
	}
	if got := (&State{Index: 3}).OverlaySubnet().String(); got != "10.202.3.0/24" {
		t.Fatalf("default OverlaySubnet = %s", got)
	}
	for _, bad := range []string{"10.201.3.0/24", "10.201.0.0/16", "10.201.3.128/25", "10.0.0.0/8"} {
		_, sn, _ := net.ParseCIDR(bad)
		if err := s.CheckOverlay(sn); err == nil {
			t.Errorf("overlay %s over the underlay 10.201.3.0/24 accepted", bad)
		}
	}
	_, sn, _ := net.ParseCIDR("10.201.4.0/24") // another lab's underlay, not ours
	if err := s.CheckOverlay(sn); err != nil {
		t.Errorf("overlay %s: %v", sn, err)
	}
}

func TestMetricsAddr(t *testing.T) {
	s := &State{}
	if got := s.metricsAddr(); got != "127.0.0.1:9100" {
		t.Errorf("a lab's agents serve metrics at %q, want 127.0.0.1:9100 (on by default)", got)
	}
	s.NoMetrics = true // coat lab up --metrics=false
	if got := s.metricsAddr(); got != "" {
		t.Errorf("with --metrics=false: %q, want none", got)
	}
}
