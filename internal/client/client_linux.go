// Package client is `coat client up` and `coat client down`: a Linux
// device (a phone, a car, a drone) joins the overlay as a client, without
// an agent.
//
// How it works. An admin issues the device a certificate of role client
// and allocates its overlay IP (`coat init --issue-client NAME`): the
// address comes from the cluster's overlay subnet as a container's does,
// and the client's record in etcd (clients/NAME) holds it with the MAC
// derived from it. `coat client up` then builds the device's overlay (the
// bridge coat0 with the overlay IP and that fixed MAC, and the VXLAN
// device vxlan0 on its underlay link), floods to every host's VTEP, and
// writes its underlay address into its record; the agents watch the
// record and forward the client's MAC to it. It keeps this current until
// it is stopped:
//
//   - hosts that join or leave: the flood list follows (polled every
//     second);
//   - a handover: when the underlay link's address changes (the device
//     attached to another access network; netlink tells at once), the
//     VXLAN source address changes in place and the record says the new
//     one, with its roam count raised, so that every host follows within
//     the watch's latency and a container following the client migrates.
//
// The attachment (the host that serves the client's access network) is
// the one host whose underlay address lies in the client's own subnet, if
// exactly one does; otherwise none (detection by latency or by the access
// network's identity is not built). Stopping `up` leaves the overlay and
// the record as they are (connections live on); `coat client down` stops
// a running `up`, marks the record detached (the hosts drop its
// forwarding) and removes the devices. The etcd role of a client lets it
// read the hosts and the configuration and write its own record only.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/pki"
	"github.com/coat-project/coat/internal/store"
)

// Config is a client's configuration.
type Config struct {
	Name        string
	Endpoints   []string // etcd
	PKI         pki.Files
	UnderlayDev string // the link whose address is the client's VTEP
	VNI         int
	// RunDir holds the pid file of a running `up` (default /run/coat).
	RunDir string
	Log    *slog.Logger
}

// callTimeout bounds each call to etcd.
const callTimeout = 5 * time.Second

// pollEvery is how often the hosts are read again (address changes
// arrive at once from netlink).
const pollEvery = time.Second

func (c Config) pidFile() string {
	dir := c.RunDir
	if dir == "" {
		dir = "/run/coat"
	}
	return filepath.Join(dir, "client-"+c.Name+".pid")
}

func (c Config) check() error {
	if err := names.Host(c.Name); err != nil {
		return fmt.Errorf("--name: %w", err)
	}
	if len(c.Endpoints) == 0 || c.Endpoints[0] == "" {
		return errors.New("--server is required: the cluster's etcd endpoints, e.g. https://10.0.0.1:2379")
	}
	if c.UnderlayDev == "" {
		return errors.New("--underlay-dev is required: the link the client reaches the edge hosts through")
	}
	if c.VNI <= 0 || c.VNI >= 1<<24 {
		return fmt.Errorf("--vni %d: want 1 to 16777215 (the cluster's, 42 in the lab)", c.VNI)
	}
	return nil
}

// connect opens the store as the client's certificate and checks it can
// read its own record.
func connect(ctx context.Context, c Config) (*store.Etcd, store.Client, error) {
	tc, err := c.PKI.ClientConfig()
	if err != nil {
		return nil, store.Client{}, fmt.Errorf("%w (an admin issues it: `coat init --issue-client %s`)", err, c.Name)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints, TLS: tc, DialTimeout: callTimeout, Logger: zap.NewNop()})
	if err != nil {
		return nil, store.Client{}, fmt.Errorf("connect to %v: %w", c.Endpoints, err)
	}
	st := store.NewEtcd(cli, "/coat/", nil)
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	rec, err := st.ClientRecord(rctx, c.Name)
	if errors.Is(err, store.ErrNotFound) {
		st.Close()
		return nil, rec, fmt.Errorf("client %s has no record in the cluster: an admin allocates it with `coat init --issue-client %s --etcd-endpoints URLS`", c.Name, c.Name)
	}
	if err != nil {
		st.Close()
		return nil, rec, fmt.Errorf("read client %s's record at %v: %w (is the certificate %s client %s's?)", c.Name, c.Endpoints, err, c.PKI.Cert, c.Name)
	}
	return st, rec, nil
}

// Up joins the overlay and keeps the client's forwarding current until
// ctx ends.
func Up(ctx context.Context, c Config) error {
	if err := c.check(); err != nil {
		return err
	}
	st, rec, err := connect(ctx, c)
	if err != nil {
		return err
	}
	sn, err := st.OverlayCIDR(ctx)
	if err != nil {
		st.Close()
		return fmt.Errorf("%w (`coat init --overlay-cidr` records it)", err)
	}
	ov, err := overlay.Open("")
	if err != nil {
		st.Close()
		return err
	}
	defer ov.Close()
	if err := writePid(c.pidFile()); err != nil {
		st.Close()
		return err
	}
	defer os.Remove(c.pidFile())
	u := &upper{c: c, st: st, ov: ov, rec: rec, mask: sn.Mask}
	defer func() { u.st.Close() }()
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	u.hosts, err = st.Hosts(rctx)
	cancel()
	if err != nil {
		return err
	}
	if err := u.sync(ctx); err != nil {
		return err
	}
	c.Log.Info("client up", "client", c.Name, "overlay_ip", rec.OverlayIP, "underlay_ip", u.rec.UnderlayIP, "attached_to", u.rec.AttachedTo)
	addrs := make(chan netlink.AddrUpdate, 16)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.AddrSubscribe(addrs, done); err != nil {
		return fmt.Errorf("follow the addresses of %s: %w", c.UnderlayDev, err)
	}
	hosts := make(chan []store.Host, 1)
	pctx, stopPoll := context.WithCancel(ctx)
	polled := make(chan struct{})
	go func() { defer close(polled); pollHosts(pctx, c, hosts) }()
	defer func() { stopPoll(); <-polled }()
	for {
		select {
		case <-ctx.Done():
			c.Log.Info("client stops; its overlay and record stay (`coat client down` removes them)", "client", c.Name)
			return nil
		case <-addrs:
		case u.hosts = <-hosts:
		}
		if err := u.sync(ctx); err != nil {
			c.Log.Warn("client forwarding", "client", c.Name, "err", err)
		}
	}
}

// pollHosts reads the hosts every pollEvery and sends each list, on a
// connection of its own: a call under way when the address goes hangs
// until its deadline, and the handover must not wait for it (the
// connection is then made anew).
func pollHosts(ctx context.Context, c Config, out chan []store.Host) {
	var st *store.Etcd
	defer func() {
		if st != nil {
			st.Close()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(pollEvery):
		}
		if st == nil {
			var err error
			if st, _, err = connect(ctx, c); err != nil {
				c.Log.Warn("client: read the hosts", "client", c.Name, "err", err)
				continue
			}
		}
		rctx, cancel := context.WithTimeout(ctx, callTimeout)
		hosts, err := st.Hosts(rctx)
		cancel()
		if err != nil {
			c.Log.Warn("client: read the hosts", "client", c.Name, "err", err)
			st.Close()
			st = nil
			continue
		}
		select {
		case <-out: // an older list nobody took yet
		default:
		}
		out <- hosts
	}
}

// upper is a running `up`.
type upper struct {
	c    Config
	st   *store.Etcd
	ov   *overlay.Host
	rec  store.Client // as last written
	mask net.IPMask
	// hosts as last read (pollHosts).
	hosts []store.Host
}

// sync brings the overlay and the record in line with the link's address
// and the hosts. It reads nothing from etcd: on a handover the record is
// written at once, on a new connection (the one to etcd was bound to the
// old address, which is gone, and would only time out).
func (u *upper) sync(ctx context.Context) error {
	ip, ipnet, err := linkAddr(u.c.UnderlayDev)
	if err != nil {
		return err
	}
	oip := net.ParseIP(u.rec.OverlayIP).To4()
	mac, _ := net.ParseMAC(u.rec.MAC)
	if err := u.ov.Ensure(overlay.Config{
		VNI: u.c.VNI, Port: overlay.DefaultPort, LocalIP: ip, UnderlayDev: u.c.UnderlayDev,
		BridgeAddr: &net.IPNet{IP: oip, Mask: u.mask}, BridgeMAC: mac,
	}); err != nil {
		return err
	}
	var peers []net.IP
	for _, h := range u.hosts {
		if p := net.ParseIP(h.UnderlayIP); p != nil {
			peers = append(peers, p)
		}
	}
	if err := u.ov.SetPeers(peers); err != nil {
		return err
	}
	next := Attach(u.rec, ip, ipnet, u.hosts, time.Now().UTC())
	if next.UnderlayIP == u.rec.UnderlayIP && next.AttachedTo == u.rec.AttachedTo {
		return nil
	}
	moved := u.rec.UnderlayIP != "" && u.rec.UnderlayIP != next.UnderlayIP
	if moved {
		st, _, err := connect(ctx, u.c)
		if err != nil {
			return err
		}
		u.st.Close()
		u.st = st
	}
	wctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if err := u.st.PutClient(wctx, next); err != nil {
		return err
	}
	if moved {
		u.c.Log.Info("client handed over", "client", u.c.Name, "from", u.rec.UnderlayIP, "to", next.UnderlayIP, "attached_to", next.AttachedTo, "roams", next.Roams)
	}
	u.rec = next
	return nil
}

// Attach is rec after the client's underlay address became ip (on the
// subnet ipnet): its VTEP, the host serving it (the only host on that
// subnet, or none) and, when it had an address before and it changed, one
// more roam.
func Attach(rec store.Client, ip net.IP, ipnet *net.IPNet, hosts []store.Host, now time.Time) store.Client {
	next := rec
	next.UnderlayIP = ip.String()
	next.AttachedTo = ""
	var near []string
	for _, h := range hosts {
		if hip := net.ParseIP(h.UnderlayIP); hip != nil && ipnet != nil && ipnet.Contains(hip) {
			near = append(near, h.Name)
		}
	}
	if len(near) == 1 {
		next.AttachedTo = near[0]
	}
	if rec.UnderlayIP != "" && rec.UnderlayIP != next.UnderlayIP {
		next.Roams++
	}
	next.Updated = now
	return next
}

// linkAddr is the first global IPv4 address of link dev.
func linkAddr(dev string) (net.IP, *net.IPNet, error) {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return nil, nil, fmt.Errorf("underlay link %s: %w", dev, err)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil, nil, fmt.Errorf("addresses of %s: %w", dev, err)
	}
	for _, a := range addrs {
		if a.Scope == int(netlink.SCOPE_UNIVERSE) && a.IP.To4() != nil {
			return a.IP.To4(), &net.IPNet{IP: a.IP.Mask(a.Mask), Mask: a.Mask}, nil
		}
	}
	return nil, nil, fmt.Errorf("%s has no IPv4 address: the client needs one to reach the edge hosts", dev)
}

// Down stops a running `up`, marks the client detached (the hosts drop
// its forwarding) and removes its overlay devices.
func Down(ctx context.Context, c Config) error {
	if err := names.Host(c.Name); err != nil {
		return fmt.Errorf("--name: %w", err)
	}
	if len(c.Endpoints) == 0 || c.Endpoints[0] == "" {
		return errors.New("--server is required: the cluster's etcd endpoints, e.g. https://10.0.0.1:2379")
	}
	st, rec, err := connect(ctx, c)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := stopPid(c.pidFile(), 5*time.Second); err != nil {
		return err
	}
	rec.UnderlayIP, rec.AttachedTo, rec.Updated = "", "", time.Now().UTC()
	wctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if err := st.PutClient(wctx, rec); err != nil {
		return err
	}
	ov, err := overlay.Open("")
	if err != nil {
		return err
	}
	defer ov.Close()
	return ov.Teardown()
}

func writePid(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if pid, ok := readPid(path); ok && running(pid) && pid != os.Getpid() {
		return fmt.Errorf("a `coat client up` of this client already runs (pid %d): stop it first (`coat client down`)", pid)
	}
	return os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
}

func readPid(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

// stopPid ends the `up` whose pid file is path, if it runs, and waits for
// it up to limit.
func stopPid(path string, limit time.Duration) error {
	pid, ok := readPid(path)
	if !ok || syscall.Kill(pid, syscall.SIGTERM) != nil {
		return nil
	}
	deadline := time.Now().Add(limit)
	for running(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("`coat client up` (pid %d) did not stop within %s", pid, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// running tells whether process pid exists and has not exited (a zombie
// waiting for its parent has).
func running(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
