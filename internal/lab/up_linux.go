package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/coat-project/coat/internal/linkspec"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/pki"
	"github.com/coat-project/coat/internal/store"
)

// VNI is the lab overlay's VXLAN network identifier.
const VNI = 42

// AgentPort is where each agent's API listens on its underlay IP.
const AgentPort = 7443

// Options for Up.
type Options struct {
	Name  string
	Hosts int
	// EtcdMembers is 1 or 3; 0 keeps what the lab has (1 for a new lab).
	EtcdMembers int
	// Links are every node's link; nil keeps what the lab has (plain
	// links for a new lab).
	Links map[string]linkspec.Link
	// OverlayCIDR is the containers' subnet (IPv4, /8 to /27); "" keeps
	// what the lab has (10.202.INDEX.0/24 for a new lab).
	OverlayCIDR string
	Self        string // the coat binary
	Log         *slog.Logger
	// Metrics, when not nil, turns the agents' metrics on (each serves
	// MetricsAddr in its own namespace) or off; nil keeps what the lab
	// has (on for a new lab).
	Metrics *bool
}

// Up builds the lab, or completes one that is partly there.
func Up(ctx context.Context, o Options) (*State, error) {
	if err := ValidName(o.Name); err != nil {
		return nil, err
	}
	if o.Hosts < 1 || o.Hosts > 50 {
		return nil, fmt.Errorf("--hosts %d: want 1 to 50", o.Hosts)
	}
	s, err := Load(o.Name)
	if err != nil {
		if err := os.MkdirAll(BaseDir, 0o700); err != nil {
			return nil, err
		}
		s = &State{Name: o.Name, Index: freeIndex(), Dir: Dir(o.Name), Pids: map[string]int{}}
	}
	if s.Hosts != 0 && s.Hosts != o.Hosts {
		return nil, fmt.Errorf("lab %q is up with %d hosts: run `coat lab down` first to change it to %d", o.Name, s.Hosts, o.Hosts)
	}
	members := o.EtcdMembers
	if s.Hosts != 0 && members != 0 && members != s.Members() {
		return nil, fmt.Errorf("lab %q is up with %d etcd members: run `coat lab down` first to change it to %d", o.Name, s.Members(), members)
	}
	if members == 0 {
		members = s.Members()
	}
	if err := ValidEtcdMembers(members, o.Hosts); err != nil {
		return nil, err
	}
	if o.Links != nil {
		if err := ValidateLinks(o.Links, o.Hosts); err != nil {
			return nil, err
		}
		s.Links = map[string]linkspec.Link{}
		for n, l := range o.Links {
			if !l.Zero() {
				s.Links[n] = l
			}
		}
	}
	if o.OverlayCIDR != "" {
		sn, err := store.ParseOverlayCIDR(o.OverlayCIDR)
		if err != nil {
			return nil, fmt.Errorf("--overlay-cidr: %w", err)
		}
		if err := s.CheckOverlay(sn); err != nil {
			return nil, fmt.Errorf("--overlay-cidr: %w", err)
		}
		if s.Hosts != 0 && s.OverlaySubnet().String() != sn.String() {
			return nil, fmt.Errorf("lab %q is up with the overlay %s: run `coat lab down` first to change it to %s", o.Name, s.OverlaySubnet(), sn)
		}
		s.Overlay = sn.String()
	}
	s.Hosts = o.Hosts
	s.EtcdMembers = members
	if o.Metrics != nil {
		s.NoMetrics = !*o.Metrics
	}
	if s.Pids == nil {
		s.Pids = map[string]int{}
	}
	s.EtcdURL = s.etcdClientURLs()
	s.Underlay = fmt.Sprintf("10.201.%d.0/24", s.Index)
	s.Overlay = s.OverlaySubnet().String()
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	if err := s.save(); err != nil {
		return nil, err
	}
	steps := []struct {
		what string
		f    func() error
	}{
		{"pki", s.ensurePKI},
		{"underlay", s.ensureUnderlay},
		{"links", func() error { return s.ensureLinks(o.Self) }},
		{"client overlay", s.ensureClientOverlay},
		{"etcd", func() error { return s.ensureEtcd(ctx, o.Self) }},
		{"etcd access control", func() error { return s.ensureEtcdAuth(ctx) }},
		{"overlay CIDR", func() error {
			return store.SetOverlayCIDRFromPKI(ctx, strings.Split(s.EtcdURL, ","), s.PKIDir(), "cli", s.OverlaySubnet(), nil)
		}},
		{"client record", func() error { return s.putClientRecord(ctx) }},
		{"agents", func() error { return s.ensureAgents(ctx, o.Self) }},
	}
	for _, st := range steps {
		if err := st.f(); err != nil {
			return s, fmt.Errorf("lab up: %s: %w", st.what, err)
		}
		if err := s.save(); err != nil {
			return s, err
		}
	}
	return s, nil
}

// PKIDir holds the lab's CA and certificates.
func (s *State) PKIDir() string { return filepath.Join(s.Dir, "pki") }

func (s *State) ensurePKI() error {
	dir := s.PKIDir()
	if err := pki.EnsureCA(dir); err != nil {
		return err
	}
	if s.Members() == 1 {
		if err := pki.Issue(dir, "etcd", pki.RoleEtcd, []net.IP{s.UnderlayIP("")}); err != nil {
			return err
		}
	} else {
		// One certificate per member, naming its IP: etcd checks a peer's
		// certificate against the address it connects from.
		for i := 1; i <= s.Members(); i++ {
			if err := pki.Issue(dir, EtcdMemberName(i), pki.RoleEtcd, []net.IP{s.UnderlayIP(s.etcdNode(i))}); err != nil {
				return err
			}
		}
	}
	if err := pki.Issue(dir, "cli", pki.RoleAdmin, nil); err != nil {
		return err
	}
	for i := 1; i <= s.Hosts; i++ {
		if err := pki.Issue(dir, EdgeName(i), pki.RoleHost, []net.IP{s.UnderlayIP(EdgeName(i))}); err != nil {
			return err
		}
	}
	return nil
}

// ensureUnderlay makes the root bridge and a namespace with a veth per node.
func (s *State) ensureUnderlay() error {
	br, err := netlink.LinkByName(s.bridge())
	if err != nil {
		br = &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: s.bridge()}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, syscall.EEXIST) {
			return fmt.Errorf("add bridge %s: %w", s.bridge(), err)
		}
		if br, err = netlink.LinkByName(s.bridge()); err != nil {
			return err
		}
	}
	gw := &netlink.Addr{IPNet: &net.IPNet{IP: s.UnderlayIP(""), Mask: net.CIDRMask(24, 32)}}
	if err := netlink.AddrReplace(br, gw); err != nil {
		return fmt.Errorf("address bridge: %w", err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return err
	}
	for _, node := range s.Nodes() {
		if err := s.ensureNode(br, node); err != nil {
			return fmt.Errorf("node %s: %w", node, err)
		}
	}
	return nil
}

func (s *State) ensureNode(br netlink.Link, node string) error {
	ns, err := netns.GetFromName(s.NetNSName(node))
	if err != nil {
		if ns, err = newNamedNS(s.NetNSName(node)); err != nil {
			return err
		}
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	if _, err := h.LinkByName("eth0"); err != nil {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: s.rootVeth(node), MasterIndex: br.Attrs().Index}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
		_ = netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: s.rootVeth(node)}})
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth %s: %w", s.rootVeth(node), err)
		}
	}
	root, err := netlink.LinkByName(s.rootVeth(node))
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(root); err != nil {
		return err
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	if node == ClientNode {
		// Where the lab says it is attached, and nowhere else.
		if err := s.setClientAddr(s.UnderlayIP(node), true); err != nil {
			return err
		}
	} else {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: s.UnderlayIP(node), Mask: net.CIDRMask(24, 32)}}
		if err := h.AddrReplace(eth0, addr); err != nil {
			return err
		}
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return err
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.LinkSetUp(lo)
}

// newNamedNS creates /run/netns/NAME without leaving this thread in it.
func newNamedNS(name string) (netns.NsHandle, error) {
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return 0, err
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		return 0, fmt.Errorf("create netns %s: %w", name, err)
	}
	if err := netns.Set(orig); err != nil {
		return 0, err
	}
	return ns, nil
}

func (s *State) ensureClientOverlay() error {
	h, err := overlay.Open(s.NetNSPath(ClientNode))
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.Ensure(s.clientOverlayConfig()); err != nil {
		return err
	}
	var peers []net.IP
	for i := 1; i <= s.Hosts; i++ {
		peers = append(peers, s.UnderlayIP(EdgeName(i)))
	}
	return h.SetPeers(peers)
}

func alive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil && !isZombie(pid)
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	for i := len(b) - 1; i > 0; i-- {
		if b[i] == ')' && i+2 < len(b) {
			return b[i+2] == 'Z'
		}
	}
	return false
}

// start launches a daemon in a node's network namespace ("" = root),
// detached in its own session, output to logs/NAME.log.
func (s *State) start(node, name string, argv []string) (int, error) {
	if err := os.MkdirAll(filepath.Join(s.Dir, "logs"), 0o700); err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(filepath.Join(s.Dir, "logs", name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if node == "" {
		err = cmd.Start()
	} else {
		err = InNetNS(s.NetNSPath(node), cmd.Start)
	}
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", name, err)
	}
	pid := cmd.Process.Pid
	go cmd.Wait() // reap it if it dies while we are still here
	return pid, nil
}

// InNetNS runs fn on a thread that is in the network namespace at path;
// a process started by fn (exec.Cmd.Start) starts in that namespace.
func InNetNS(path string, fn func() error) error {
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return err
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// This thread cannot go back: keep it locked so it dies with us.
		goruntime.LockOSThread()
		return fmt.Errorf("restore netns: %w", err)
	}
	return ferr
}

func (s *State) ensureEtcd(ctx context.Context, self string) error {
	if s.Members() == 1 {
		if !alive(s.Pids["etcd"]) {
			f := pki.FilesFor(s.PKIDir(), "etcd")
			pid, err := s.start("", "etcd", []string{self, "etcd",
				"--name", "lab-" + s.Name,
				"--data-dir", filepath.Join(s.Dir, "etcd"),
				"--listen-client", s.etcdClientURL(1),
				"--listen-peer", s.etcdPeerURL(1),
				"--cert", f.Cert, "--key", f.Key, "--ca", f.CA,
			})
			if err != nil {
				return err
			}
			s.Pids["etcd"] = pid
			if err := waitTCP(ctx, net.JoinHostPort(s.UnderlayIP("").String(), "2379"), 60*time.Second, pid); err != nil {
				return fmt.Errorf("%w (log: %s)", err, s.logPath("etcd"))
			}
		}
		return s.waitEtcd(ctx, 60*time.Second)
	}
	var cluster []string
	for i := 1; i <= s.Members(); i++ {
		cluster = append(cluster, EtcdMemberName(i)+"="+s.etcdPeerURL(i))
	}
	// Start every missing member before waiting for any: a member of a new
	// cluster serves only once a quorum of them runs. A member restarted
	// on its data directory rejoins whatever --initial-cluster-state says.
	for i := 1; i <= s.Members(); i++ {
		name := EtcdMemberName(i)
		if alive(s.Pids[name]) {
			continue
		}
		f := pki.FilesFor(s.PKIDir(), name)
		pid, err := s.start(s.etcdNode(i), name, []string{self, "etcd",
			"--name", name,
			"--data-dir", filepath.Join(s.Dir, name),
			"--listen-client", s.etcdClientURL(i),
			"--listen-peer", s.etcdPeerURL(i),
			"--initial-cluster", strings.Join(cluster, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", "coat-lab-" + s.Name,
			"--cert", f.Cert, "--key", f.Key, "--ca", f.CA,
			"--peer-cert", f.Cert, "--peer-key", f.Key, "--peer-ca", f.CA,
		})
		if err != nil {
			return err
		}
		s.Pids[name] = pid
		if err := s.save(); err != nil {
			return err
		}
	}
	for i := 1; i <= s.Members(); i++ {
		name := EtcdMemberName(i)
		addr := net.JoinHostPort(s.UnderlayIP(s.etcdNode(i)).String(), "2379")
		if err := waitTCP(ctx, addr, 60*time.Second, s.Pids[name]); err != nil {
			return fmt.Errorf("etcd member %s: %w (log: %s)", name, err, s.logPath(name))
		}
	}
	return s.waitEtcd(ctx, 60*time.Second)
}

// ensureEtcdAuth gives etcd a user per certificate of the lab's PKI (the
// CLI root, each agent its own keys) and turns authentication on, as
// `coat init --etcd-endpoints` does for a cluster.
func (s *State) ensureEtcdAuth(ctx context.Context) error {
	return store.SetupAuthFromPKI(ctx, strings.Split(s.EtcdURL, ","), s.PKIDir(), "cli")
}

func (s *State) logPath(name string) string { return filepath.Join(s.Dir, "logs", name+".log") }

// waitEtcd waits until the cluster answers a linearizable read, which
// needs an elected leader and a quorum, through every member's endpoint
// as the CLI and agents use them.
func (s *State) waitEtcd(ctx context.Context, limit time.Duration) error {
	tc, err := pki.FilesFor(s.PKIDir(), "cli").ClientConfig()
	if err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: strings.Split(s.EtcdURL, ","), TLS: tc, DialTimeout: 5 * time.Second, Context: ctx,
		Logger: zap.NewNop(),
	})
	if err != nil {
		return fmt.Errorf("connect to etcd %s: %w", s.EtcdURL, err)
	}
	defer cli.Close()
	deadline := time.Now().Add(limit)
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.Get(rctx, "/coat/")
		cancel()
		if err == nil {
			return nil
		}
		for _, name := range s.EtcdPidKeys() {
			if pid := s.Pids[name]; !alive(pid) {
				return fmt.Errorf("etcd %s (pid %d) exited (log: %s)", name, pid, s.logPath(name))
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd %s does not serve after %s: %w", s.EtcdURL, limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *State) ensureAgents(ctx context.Context, self string) error {
	for i := 1; i <= s.Hosts; i++ {
		node := EdgeName(i)
		rate := s.Link(node).Rate
		if alive(s.Pids[node]) {
			if runs(s.Pids[node], self) && agentRate(s.Pids[node]) == rate && agentMetrics(s.Pids[node]) == s.metricsAddr() {
				continue
			}
			// An agent of an older build, or told another link rate:
			// restart it. Its containers keep running; its state is on
			// disk and in etcd.
			stop(s.Pids[node])
		}
		ip := s.UnderlayIP(node)
		argv := []string{self, "agent",
			"--name", node,
			"--state-dir", filepath.Join(s.Dir, node),
			"--listen", net.JoinHostPort(ip.String(), strconv.Itoa(AgentPort)),
			"--underlay-ip", ip.String(), "--underlay-dev", "eth0",
			"--subnet", s.OverlaySubnet().String(),
			"--vni", strconv.Itoa(VNI),
			"--cgroup-parent", "/coat/" + s.Name + "/" + node,
			"--etcd-endpoints", s.EtcdURL,
			"--pki-dir", s.PKIDir(),
		}
		if rate > 0 {
			argv = append(argv, "--link-rate", rate.String())
		}
		if addr := s.metricsAddr(); addr != "" {
			argv = append(argv, "--metrics-addr", addr)
		}
		pid, err := s.start(node, node, argv)
		if err != nil {
			return err
		}
		s.Pids[node] = pid
	}
	for i := 1; i <= s.Hosts; i++ {
		node := EdgeName(i)
		addr := net.JoinHostPort(s.UnderlayIP(node).String(), strconv.Itoa(AgentPort))
		if err := waitTCP(ctx, addr, 30*time.Second, s.Pids[node]); err != nil {
			return fmt.Errorf("agent %s: %w (log: %s)", node, err, filepath.Join(s.Dir, "logs", node+".log"))
		}
	}
	return nil
}

// waitTCP waits until addr accepts connections or the process dies.
func waitTCP(ctx context.Context, addr string, limit time.Duration, pid int) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if !alive(pid) {
			return fmt.Errorf("process %d exited before listening on %s", pid, addr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("nothing listens on %s after %s", addr, limit)
}

// runs reports whether process pid runs the binary at path (a rebuilt
// binary shows as "path (deleted)").
func runs(pid int, path string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && exe == path
}
