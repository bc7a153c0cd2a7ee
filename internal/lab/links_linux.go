package lab

// Link emulation on the nodes' underlay links (see relay_linux.go for the
// picture). Rate is a TBF qdisc on both ends of the node's veth: eth0 in
// the node (what it sends) and the root-side veth (what it receives).
// Delay and loss, which need netem this kernel lacks, put the relay
// between the node's veth and the bridge; a link without them keeps the
// plain kernel path (the node's veth is a bridge port).

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/coat-project/coat/internal/overlay"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/coat-project/coat/internal/linkspec"
)

// rateHandle marks the lab's TBF ("tc qdisc ... root handle c1a0: tbf").
var rateHandle = netlink.MakeHandle(0xc1a0, 0)

// Link is a node's link as recorded (the zero Link when plain).
func (s *State) Link(node string) linkspec.Link { return s.Links[node] }

// relayVeth is the root-side veth the relay writes to; bridgeVeth its
// peer on the bridge.
func (s *State) relayVeth(node string) string  { return s.rootVeth(node) + "r" }
func (s *State) bridgeVeth(node string) string { return s.rootVeth(node) + "b" }

func relayKey(node string) string { return "relay-" + node }

// ValidateLinks checks that every node named has a link in a lab of hosts
// edge hosts.
func ValidateLinks(links map[string]linkspec.Link, hosts int) error {
	s := &State{Hosts: hosts}
	nodes := s.Nodes()
	for n := range links {
		known := false
		for _, k := range nodes {
			known = known || k == n
		}
		if !known {
			return fmt.Errorf("--link %s=...: no node %q in a lab of %d edge hosts: name one of %s", n, n, hosts, strings.Join(nodes, ", "))
		}
	}
	return nil
}

// ensureLinks makes every node's link what s.Links says.
func (s *State) ensureLinks(self string) error {
	br, err := netlink.LinkByName(s.bridge())
	if err != nil {
		return err
	}
	for _, node := range s.Nodes() {
		if err := s.ensureLink(br, node, self); err != nil {
			return fmt.Errorf("link of %s: %w", node, err)
		}
	}
	return nil
}

func (s *State) ensureLink(br netlink.Link, node, self string) error {
	l := s.Link(node)
	root, err := netlink.LinkByName(s.rootVeth(node))
	if err != nil {
		return err
	}
	if l.NeedsRelay() {
		if err := s.ensureRelayPath(br, root, node); err != nil {
			return err
		}
		rv, err := netlink.LinkByName(s.relayVeth(node))
		if err != nil {
			return err
		}
		if err := s.ensureRelay(node, self, l, root.Attrs().Index, rv.Attrs().Index); err != nil {
			return err
		}
		if root.Attrs().MasterIndex != 0 {
			if err := netlink.LinkSetNoMaster(root); err != nil {
				return fmt.Errorf("take %s off the bridge: %w", s.rootVeth(node), err)
			}
		}
	} else {
		if root.Attrs().MasterIndex != br.Attrs().Index {
			if err := netlink.LinkSetMaster(root, br); err != nil {
				return fmt.Errorf("put %s on the bridge: %w", s.rootVeth(node), err)
			}
		}
		stop(s.Pids[relayKey(node)])
		delete(s.Pids, relayKey(node))
		if rv, err := netlink.LinkByName(s.relayVeth(node)); err == nil {
			if err := netlink.LinkDel(rv); err != nil && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("delete %s: %w", s.relayVeth(node), err)
			}
		}
	}
	if err := setRate(root, l.Rate); err != nil {
		return fmt.Errorf("rate on %s: %w", s.rootVeth(node), err)
	}
	return InNetNS(s.NetNSPath(node), func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := setRate(eth0, l.Rate); err != nil {
			return fmt.Errorf("rate on %s's eth0: %w", node, err)
		}
		// A VXLAN frame the relay reads must be one the node's stack has
		// segmented already: a packet socket cannot describe tunnel
		// segmentation in its virtio-net header (it drops or mangles such
		// frames), so the overlay's big frames would never cross.
		on := !l.NeedsRelay()
		if err := setFeatures(eth0.Attrs().Index, map[string]bool{tunnelGSO: on, tunnelCsumGSO: on}); err != nil {
			return fmt.Errorf("offloads of %s's eth0: %w", node, err)
		}
		return nil
	})
}

// The offloads that let a VXLAN frame leave a veth unsegmented.
const (
	tunnelGSO     = "tx-udp_tnl-segmentation"
	tunnelCsumGSO = "tx-udp_tnl-csum-segmentation"
)

// setFeatures turns link features on or off by name in the calling
// thread's network namespace ("ethtool -K DEV NAME on|off", over ethtool
// netlink).
func setFeatures(ifindex int, want map[string]bool) error {
	fam, err := netlink.GenlFamilyGet(unix.ETHTOOL_GENL_NAME)
	if err != nil {
		return fmt.Errorf("ethtool netlink: %w", err)
	}
	req := nl.NewNetlinkRequest(int(fam.ID), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: unix.ETHTOOL_MSG_FEATURES_SET, Version: unix.ETHTOOL_GENL_VERSION})
	hdr := nl.NewRtAttr(unix.ETHTOOL_A_FEATURES_HEADER|unix.NLA_F_NESTED, nil)
	hdr.AddRtAttr(unix.ETHTOOL_A_HEADER_DEV_INDEX, nl.Uint32Attr(uint32(ifindex)))
	wanted := nl.NewRtAttr(unix.ETHTOOL_A_FEATURES_WANTED|unix.NLA_F_NESTED, nil)
	bits := wanted.AddRtAttr(unix.ETHTOOL_A_BITSET_BITS|unix.NLA_F_NESTED, nil)
	for name, on := range want {
		bit := bits.AddRtAttr(unix.ETHTOOL_A_BITSET_BITS_BIT|unix.NLA_F_NESTED, nil)
		bit.AddRtAttr(unix.ETHTOOL_A_BITSET_BIT_NAME, nl.ZeroTerminated(name))
		if on {
			bit.AddRtAttr(unix.ETHTOOL_A_BITSET_BIT_VALUE, nil)
		}
	}
	req.AddData(hdr)
	req.AddData(wanted)
	_, err = req.Execute(unix.NETLINK_GENERIC, 0)
	return err
}

// ensureRelayPath makes the relay's veth pair (one end on the bridge) and
// the way back: every frame arriving from the bridge is redirected to the
// node's veth ("tc qdisc add dev R ingress; tc filter add dev R parent
// ffff: u32 match u32 0 0 action mirred egress redirect dev N").
func (s *State) ensureRelayPath(br, root netlink.Link, node string) error {
	rv, err := netlink.LinkByName(s.relayVeth(node))
	if err != nil {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: s.relayVeth(node)}, PeerName: s.bridgeVeth(node)}
		_ = netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: s.bridgeVeth(node)}})
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", s.relayVeth(node), err)
		}
		if rv, err = netlink.LinkByName(s.relayVeth(node)); err != nil {
			return err
		}
	}
	bv, err := netlink.LinkByName(s.bridgeVeth(node))
	if err != nil {
		return err
	}
	if bv.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(bv, br); err != nil {
			return err
		}
	}
	for _, l := range []netlink.Link{rv, bv} {
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
	}
	return ensureRedirect(rv, root)
}

// ensureRedirect redirects every frame arriving on from to to's egress.
func ensureRedirect(from, to netlink.Link) error {
	parent := netlink.MakeHandle(0xffff, 0)
	filters, err := netlink.FilterList(from, parent)
	if err == nil && len(filters) == 1 {
		if u, ok := filters[0].(*netlink.U32); ok && len(u.Actions) == 1 {
			if m, ok := u.Actions[0].(*netlink.MirredAction); ok && m.Ifindex == to.Attrs().Index {
				return nil
			}
		}
	}
	_ = netlink.QdiscDel(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: from.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: parent}})
	if err := netlink.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: from.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: parent}}); err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", from.Attrs().Name, err)
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Attrs().Index, Parent: parent, Priority: 1, Protocol: unix.ETH_P_ALL},
		Sel:         &netlink.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Nkeys: 1, Keys: []netlink.TcU32Key{{}}},
		Actions:     []netlink.Action{netlink.NewMirredAction(to.Attrs().Index)},
	}
	if err := netlink.FilterAdd(f); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

// relayArgv is the command line of node's relay. The links' indexes are
// in it so that a relay whose links were made anew is replaced.
func (s *State) relayArgv(node, self string, l linkspec.Link, in, out int) []string {
	return []string{self, "lab", "relay", "--lab", s.Name, "--node", node,
		"--in", s.rootVeth(node) + "@" + strconv.Itoa(in), "--out", s.relayVeth(node) + "@" + strconv.Itoa(out),
		"--delay", linkspec.FormatDelay(l.Delay), "--loss", linkspec.FormatLoss(l.Loss)}
}

// ensureRelay runs node's relay with l, restarting one that runs another
// build, other settings or on other links, and ending strays a lost state
// left behind.
func (s *State) ensureRelay(node, self string, l linkspec.Link, in, out int) error {
	argv := s.relayArgv(node, self, l, in, out)
	pid := s.Pids[relayKey(node)]
	if alive(pid) && runs(pid, self) && sameCmdline(pid, argv) {
		return nil
	}
	stop(pid)
	for _, p := range findRelays(s.Name, node) {
		stop(p)
	}
	pid, err := s.start("", relayKey(node), argv)
	if err != nil {
		return err
	}
	s.Pids[relayKey(node)] = pid
	return nil
}

func cmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

func sameCmdline(pid int, argv []string) bool {
	return strings.Join(cmdline(pid), "\x00") == strings.Join(argv, "\x00")
}

// findRelays lists the relay processes of lab name (of node; "" any).
func findRelays(name, node string) []int {
	var out []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if !bytes.Contains(b, []byte("\x00lab\x00relay\x00--lab\x00"+name+"\x00")) {
			continue
		}
		if node != "" && !bytes.Contains(b, []byte("\x00--node\x00"+node+"\x00")) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil && pid != os.Getpid() {
			out = append(out, pid)
		}
	}
	return out
}

// setRate puts a TBF of rate on link's egress, or removes the lab's TBF
// when rate is 0.
func setRate(link netlink.Link, rate linkspec.Rate) error {
	if rate <= 0 {
		qs, err := netlink.QdiscList(link)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if q.Attrs().Handle == rateHandle && q.Attrs().Parent == netlink.HANDLE_ROOT {
				return netlink.QdiscDel(q)
			}
		}
		return nil
	}
	return tbf(link, uint64(rate.BytesPerSecond()), tbfBurst(rate), tbfLimit(rate))
}

// tbfBurst lets a whole 64 KiB GSO frame through (TBF would otherwise
// split it in software) and covers 4 ms at rate.
func tbfBurst(r linkspec.Rate) uint32 {
	return uint32(max(2*65536, r.BytesPerSecond()*0.004))
}

// tbfLimit queues 50 ms at rate beyond the burst: enough for a TCP
// stream over a delayed link to keep the link busy.
func tbfLimit(r linkspec.Rate) uint32 {
	return tbfBurst(r) + uint32(min(r.BytesPerSecond()*0.05, 1<<30))
}

// tbf is "tc qdisc replace dev L root handle c1a0: tbf rate R burst B
// limit L" in the calling thread's network namespace.
func tbf(link netlink.Link, rate uint64, burst, limit uint32) error {
	return overlay.SetTBF(link, rateHandle, rate, burst, limit, true)
}

// agentRate is the --link-rate agent pid was started with (0: none).
func agentRate(pid int) linkspec.Rate {
	args := cmdline(pid)
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--link-rate" {
			r, _ := linkspec.ParseRate(args[i+1])
			return r
		}
	}
	return 0
}

// agentMetrics is the --metrics-addr the agent pid was started with ("":
// none).
func agentMetrics(pid int) string {
	args := cmdline(pid)
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--metrics-addr" {
			return args[i+1]
		}
	}
	return ""
}
