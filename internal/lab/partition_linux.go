package lab

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// Partition cuts node off the underlay (cut) or reconnects it: the root
// side of its underlay veth goes down or up, so nothing crosses it in
// either direction, as when a host's uplink fails. The node's processes
// (its agent, an etcd member) run on, unreachable.
func (s *State) Partition(node string, cut bool) error {
	known := false
	for _, n := range s.Nodes() {
		known = known || n == node
	}
	if !known {
		return fmt.Errorf("unknown node %q: the lab has %v", node, s.Nodes())
	}
	l, err := netlink.LinkByName(s.rootVeth(node))
	if err != nil {
		return fmt.Errorf("underlay link of %s: %w (is the lab up?)", node, err)
	}
	if cut {
		return netlink.LinkSetDown(l)
	}
	return netlink.LinkSetUp(l)
}

// Partitioned lists the nodes cut off the underlay.
func (s *State) Partitioned() []string {
	var out []string
	for _, n := range s.Nodes() {
		if l, err := netlink.LinkByName(s.rootVeth(n)); err == nil && l.Attrs().Flags&net.FlagUp == 0 {
			out = append(out, n)
		}
	}
	return out
}
