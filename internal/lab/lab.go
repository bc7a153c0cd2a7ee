// Package lab builds a whole edge on one machine: edge hosts and a mobile
// client node as network namespaces on an emulated underlay, one VXLAN
// overlay across them, an embedded etcd, and a `coat agent` process per
// edge host.
//
//	           root namespace: bridge coatbrI 10.201.I.1 (etcd :2379, CLI)
//	      ______________|_______________________________
//	     |                     |                        |
//	coat-L-edge-1         coat-L-edge-2    ...     coat-L-client
//	eth0 10.201.I.11      eth0 10.201.I.12         eth0 10.201.I.100
//	agent :7443           agent :7443              (no agent)
//	coat0 + vxlan0 ------ coat0 + vxlan0 --------- coat0 + vxlan0
//	(containers' veths)   (containers' veths)      10.202.I.250 on coat0
//
// With --etcd-members 3 the root namespace runs no etcd: member i of a
// 3-member cluster runs in edge-i's namespace on its underlay IP (client
// :2379, peer :2380, mutual TLS both), so losing one member (or its host)
// loses nothing.
//
// I is the lab's index (one per lab, so several labs can coexist, e.g. in
// parallel tests) and L its name. Agents and the CLI talk only over the
// underlay, with mutual TLS from the lab's CA; checkpoint images travel
// from agent to agent over it, never through the shared disk.
package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/coat-project/coat/internal/linkspec"
)

// BaseDir holds every lab's state.
const BaseDir = "/var/lib/coat/labs"

// DefaultName is the lab a newcomer gets.
const DefaultName = "coat"

// State is what lab up recorded; lab down and the CLI read it.
type State struct {
	Name     string         `json:"name"`
	Index    int            `json:"index"`
	Hosts    int            `json:"hosts"`
	Dir      string         `json:"dir"`
	Pids     map[string]int `json:"pids"`
	EtcdURL  string         `json:"etcd_url"` // client URLs, comma-separated
	Underlay string         `json:"underlay"`
	Overlay  string         `json:"overlay"`

	// EtcdMembers is 1 (in the root namespace) or 3 (etcd-i in edge-i's
	// namespace); 0 in a state written before it existed means 1.
	EtcdMembers int `json:"etcd_members,omitempty"`

	// Links are the nodes' emulated underlay links; a node not named has
	// a plain one.
	Links map[string]linkspec.Link `json:"links,omitempty"`

	// NoMetrics: the agents serve no metrics (`coat lab up --metrics=false`).
	NoMetrics bool `json:"no_metrics,omitempty"`

	// ClientAt is the edge host whose access network the client node is
	// attached to (`coat lab roam`); "" is its first attachment, next to
	// no edge in particular.
	ClientAt string `json:"client_at,omitempty"`
	// ClientRoams counts the client's roams (its record's Roams).
	ClientRoams int64 `json:"client_roams,omitempty"`
}

// MetricsAddr is where each lab agent serves /metrics, on the loopback of
// its own host's namespace (each namespace has its own, so every agent
// has the same address and nothing is reachable from outside it).
const MetricsAddr = "127.0.0.1:9100"

// metricsAddr is the agents' --metrics-addr ("": none).
func (s *State) metricsAddr() string {
	if s.NoMetrics {
		return ""
	}
	return MetricsAddr
}

var labNameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)

// ValidName checks a lab name: it goes into namespace names.
func ValidName(name string) error {
	if !labNameRE.MatchString(name) {
		return fmt.Errorf("invalid lab name %q: use 1-8 lowercase letters and digits, starting with a letter", name)
	}
	return nil
}

// Dir is the lab's state directory.
func Dir(name string) string { return filepath.Join(BaseDir, name) }

// Load reads a lab's state.
func Load(name string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(Dir(name), "lab.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("lab %q is not up: run `coat lab up`", name)
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	return &s, nil
}

func (s *State) save() error {
	b, _ := json.MarshalIndent(s, "", "  ")
	return os.WriteFile(filepath.Join(s.Dir, "lab.json"), b, 0o600)
}

// freeIndex picks the lowest index no other lab uses.
func freeIndex() int {
	used := map[int]bool{}
	ents, _ := os.ReadDir(BaseDir)
	for _, e := range ents {
		if s, err := Load(e.Name()); err == nil {
			used[s.Index] = true
		}
	}
	for i := 0; ; i++ {
		if !used[i] {
			return i
		}
	}
}

// Node names.
func EdgeName(i int) string { return fmt.Sprintf("edge-%d", i) }

// ClientNode is the mobile client's node name.
const ClientNode = "client"

// Nodes lists the lab's node names, edges first.
func (s *State) Nodes() []string {
	var out []string
	for i := 1; i <= s.Hosts; i++ {
		out = append(out, EdgeName(i))
	}
	return append(out, ClientNode)
}

// NetNSName is a node's named network namespace (in /run/netns).
func (s *State) NetNSName(node string) string { return fmt.Sprintf("coat-%s-%s", s.Name, node) }

// NetNSPath is the path of a node's network namespace.
func (s *State) NetNSPath(node string) string { return "/run/netns/" + s.NetNSName(node) }

func (s *State) bridge() string { return fmt.Sprintf("coatbr%d", s.Index) }

func (s *State) rootVeth(node string) string {
	short := "cl"
	if node != ClientNode {
		var i int
		fmt.Sscanf(node, "edge-%d", &i)
		short = fmt.Sprintf("e%d", i)
	}
	return fmt.Sprintf("coat%d-%s", s.Index, short)
}

// UnderlayIP of a node (or of the root bridge for ""); the client node's
// is that of its current attachment (ClientIPAt).
func (s *State) UnderlayIP(node string) net.IP {
	if node == ClientNode {
		return s.ClientIPAt(s.ClientAt)
	}
	host := 1
	switch {
	case node != "":
		var i int
		fmt.Sscanf(node, "edge-%d", &i)
		host = 10 + i
	}
	return net.IPv4(10, 201, byte(s.Index), byte(host)).To4()
}

// ClientIPAt is the client node's underlay address when it is attached to
// edge's access network: 10.201.INDEX.(100+N) next to edge-N, and
// 10.201.INDEX.100 for its first attachment (edge ""). All of them lie in
// the one underlay /24 (the lab's access networks share its bridge), so a
// roam changes the address the edges see, not the routing.
func (s *State) ClientIPAt(edge string) net.IP {
	host := 100
	var i int
	if _, err := fmt.Sscanf(edge, "edge-%d", &i); err == nil && i > 0 {
		host += i
	}
	return net.IPv4(10, 201, byte(s.Index), byte(host)).To4()
}

// EdgeIndex is N of a lab host name edge-N, if the lab has that host.
func (s *State) EdgeIndex(node string) (int, bool) {
	var i int
	if _, err := fmt.Sscanf(node, "edge-%d", &i); err != nil || EdgeName(i) != node || i < 1 || i > s.Hosts {
		return 0, false
	}
	return i, true
}

// OverlaySubnet is the containers' subnet: the one lab up was given
// (--overlay-cidr), or 10.202.INDEX.0/24.
func (s *State) OverlaySubnet() *net.IPNet {
	if s.Overlay != "" {
		if _, sn, err := net.ParseCIDR(s.Overlay); err == nil && sn.IP.To4() != nil {
			sn.IP = sn.IP.To4()
			return sn
		}
	}
	return s.DefaultOverlay()
}

// DefaultOverlay is a lab's overlay subnet when none is given: a /24 of
// its own, 10.202.INDEX.0/24.
func (s *State) DefaultOverlay() *net.IPNet {
	return &net.IPNet{IP: net.IPv4(10, 202, byte(s.Index), 0).To4(), Mask: net.CIDRMask(24, 32)}
}

// UnderlaySubnet is the lab's underlay, 10.201.INDEX.0/24.
func (s *State) UnderlaySubnet() *net.IPNet {
	return &net.IPNet{IP: net.IPv4(10, 201, byte(s.Index), 0).To4(), Mask: net.CIDRMask(24, 32)}
}

// CheckOverlay checks an overlay subnet for this lab: it must not overlap
// the lab's underlay.
func (s *State) CheckOverlay(sn *net.IPNet) error {
	u := s.UnderlaySubnet()
	if sn.Contains(u.IP) || u.Contains(sn.IP) {
		return fmt.Errorf("overlay CIDR %s overlaps the lab's underlay %s: pick another range, e.g. 10.96.0.0/16", sn, u)
	}
	return nil
}

// ClientOverlayIP is the client node's address on the overlay: the sixth
// from the top (.250 of a /24), among the last ten that are never
// allocated to containers.
func (s *State) ClientOverlayIP() net.IP {
	sn := s.OverlaySubnet()
	ones, bits := sn.Mask.Size()
	v4 := sn.IP.To4()
	n := uint32(v4[0])<<24 | uint32(v4[1])<<16 | uint32(v4[2])<<8 | uint32(v4[3])
	n += uint32(1)<<(bits-ones) - 6
	return net.IPv4(byte(n>>24), byte(n>>16), byte(n>>8), byte(n)).To4()
}

// ValidEtcdMembers checks an etcd member count for a lab of hosts edge hosts.
func ValidEtcdMembers(n, hosts int) error {
	if n != 1 && n != 3 {
		return fmt.Errorf("--etcd-members %d: want 1 (one member in the root namespace) or 3 (one member in each of edge-1..edge-3)", n)
	}
	if n > hosts {
		return fmt.Errorf("--etcd-members %d needs at least %d edge hosts (member i runs in edge-i's namespace), but --hosts is %d", n, n, hosts)
	}
	return nil
}

// Members is the number of etcd members.
func (s *State) Members() int {
	if s.EtcdMembers == 0 {
		return 1
	}
	return s.EtcdMembers
}

// EtcdMemberName is the name of etcd member i of a multi-member lab: its
// pid key, certificate, log and data directory.
func EtcdMemberName(i int) string { return fmt.Sprintf("etcd-%d", i) }

// EtcdPidKeys are the State.Pids keys of the lab's etcd processes.
func (s *State) EtcdPidKeys() []string {
	if s.Members() == 1 {
		return []string{"etcd"}
	}
	var out []string
	for i := 1; i <= s.Members(); i++ {
		out = append(out, EtcdMemberName(i))
	}
	return out
}

// etcdNode is the node whose namespace and underlay IP etcd member i
// uses ("" = the root namespace, the single member).
func (s *State) etcdNode(i int) string {
	if s.Members() == 1 {
		return ""
	}
	return EdgeName(i)
}

// etcdClientURL and etcdPeerURL are member i's URLs.
func (s *State) etcdClientURL(i int) string {
	return "https://" + net.JoinHostPort(s.UnderlayIP(s.etcdNode(i)).String(), "2379")
}

func (s *State) etcdPeerURL(i int) string {
	if s.Members() == 1 {
		// The single member has no peers; its peer port stays on loopback
		// (one per lab index), TLS all the same.
		return fmt.Sprintf("https://127.0.0.1:%d", 23800+s.Index)
	}
	return "https://" + net.JoinHostPort(s.UnderlayIP(s.etcdNode(i)).String(), "2380")
}

// etcdClientURLs lists every member's client URL, comma-separated.
func (s *State) etcdClientURLs() string {
	var urls []string
	for i := 1; i <= s.Members(); i++ {
		urls = append(urls, s.etcdClientURL(i))
	}
	return strings.Join(urls, ",")
}
