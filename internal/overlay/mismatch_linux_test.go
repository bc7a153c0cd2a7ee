//go:build linux

package overlay

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestVXLANMismatch(t *testing.T) {
	want := &netlink.Vxlan{VxlanId: 42, Port: 4789, SrcAddr: net.IPv4(10, 99, 0, 1).To4(), VtepDevIndex: 3, Learning: true}
	same := *want
	same.SrcAddr = net.IPv4(10, 99, 0, 1) // 16-byte form of the same address
	same.MTU = 9000                       // fixed in place, not a reason to recreate
	if r := vxlanMismatch(want, &same); r != "" {
		t.Fatalf("compatible device reported as %q", r)
	}
	for _, tc := range []struct {
		mod  func(*netlink.Vxlan)
		want string
	}{
		{func(v *netlink.Vxlan) { v.VxlanId = 1 }, "vni: 1 vs 42"},
		{func(v *netlink.Vxlan) { v.Port = 8472 }, "port: 8472 vs 4789"},
		{func(v *netlink.Vxlan) { v.SrcAddr = net.IPv4(10, 99, 0, 9) }, "local: 10.99.0.9 vs 10.99.0.1"},
		{func(v *netlink.Vxlan) { v.VtepDevIndex = 7 }, "dev index: 7 vs 3"},
		{func(v *netlink.Vxlan) { v.Learning = false }, "learning: false vs true"},
		{func(v *netlink.Vxlan) { v.Group = net.IPv4(239, 1, 1, 1) }, "group: 239.1.1.1 vs none"},
		{func(v *netlink.Vxlan) { v.FlowBased = true }, "external: true vs false"},
	} {
		have := *want
		tc.mod(&have)
		if got := vxlanMismatch(want, &have); got != tc.want {
			t.Errorf("vxlanMismatch = %q, want %q", got, tc.want)
		}
	}
	if got := vxlanMismatch(want, &netlink.Bridge{}); got != "type: bridge vs vxlan" {
		t.Errorf("bridge in place of vxlan: %q", got)
	}
}

func TestVethMismatch(t *testing.T) {
	host := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: 10, ParentIndex: 2}}
	peer := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: 2, ParentIndex: 10}}
	if r := vethMismatch(host, peer); r != "" {
		t.Fatalf("paired veths reported as %q", r)
	}
	other := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: 2, ParentIndex: 11}}
	for _, tc := range []struct {
		host, peer netlink.Link
		want       string
	}{
		{&netlink.Dummy{}, peer, "type: dummy vs veth"},
		{host, nil, "container has no eth0"},
		{host, &netlink.Dummy{}, "container eth0 type: dummy vs veth"},
		{host, other, "not paired: host veth peer index 2, eth0 index 2, eth0 peer index 11, host veth index 10"},
	} {
		if got := vethMismatch(tc.host, tc.peer); got != tc.want {
			t.Errorf("vethMismatch = %q, want %q", got, tc.want)
		}
	}
}
