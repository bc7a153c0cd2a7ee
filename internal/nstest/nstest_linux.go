//go:build linux

package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetNSDir is where NewNetNS mounts namespaces, so that "ip netns exec NAME"
// can enter them while debugging.
const NetNSDir = "/run/netns"

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
}

// NewNetNS creates an empty netns named prefix plus random hex under
// NetNSDir, with lo up, and returns its path. It is deleted in t.Cleanup
// unless the test deleted it first.
func NewNetNS(t testing.TB, prefix string) string {
	t.Helper()
	RequireRoot(t)
	path := filepath.Join(NetNSDir, prefix+randomHex(4))
	if err := createNetNS(path); err != nil {
		t.Fatalf("nstest: %v", err)
	}
	t.Cleanup(func() {
		// The test may have deleted it already (e.g. a migrated container's).
		err := unix.Unmount(path, unix.MNT_DETACH)
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			t.Errorf("nstest: unmount %s: %v", path, err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("nstest: %v", err)
		}
	})
	err := withHandle(path, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
	if err != nil {
		t.Fatalf("nstest: lo up in %s: %v", path, err)
	}
	return path
}

func createNetNS(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create netns dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file: %w", err)
	}
	f.Close()
	err = onThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare: %w", err)
		}
		return unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, "")
	})
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	return nil
}

// Run runs fn on an OS thread inside the netns at path, e.g. to open a socket
// there (the socket stays in that netns wherever it is used afterwards).
func Run(path string, fn func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	return onThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		return fn()
	})
}

// onThread runs fn on a new goroutine locked to its thread and restores the
// thread's netns afterwards; if that fails the thread is thrown away.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		err = fn()
		if rerr := netns.Set(orig); rerr != nil {
			errc <- errors.Join(err, rerr)
			return // still locked: the runtime discards the thread
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

func withHandle(path string, fn func(*netlink.Handle) error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	return fn(h)
}

// Handle returns a netlink handle bound to the netns at path, closed in
// t.Cleanup.
func Handle(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("nstest: open netns %s: %v", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("nstest: netlink handle in %s: %v", path, err)
	}
	t.Cleanup(h.Close)
	return h
}

// VethEnd is one end of a veth pair made by Veth.
type VethEnd struct {
	NetNS string     // netns path
	Name  string     // link name in that netns
	Addr  *net.IPNet // optional address; nil for none
}

// Veth connects two namespaces with a veth pair, sets the addresses and
// brings both ends up: "ip -n A link add NAME type veth peer name NAME netns
// B". The pair goes away with its namespaces; t.Cleanup also deletes it.
func Veth(t testing.TB, a, b VethEnd) {
	t.Helper()
	ha, hb := Handle(t, a.NetNS), Handle(t, b.NetNS)
	nsB, err := netns.GetFromPath(b.NetNS)
	if err != nil {
		t.Fatalf("nstest: open netns %s: %v", b.NetNS, err)
	}
	defer nsB.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: a.Name},
		PeerName:      b.Name,
		PeerNamespace: netlink.NsFd(nsB),
	}
	if err := ha.LinkAdd(veth); err != nil {
		t.Fatalf("nstest: veth %s/%s: %v", a.Name, b.Name, err)
	}
	t.Cleanup(func() {
		if link, err := ha.LinkByName(a.Name); err == nil {
			_ = ha.LinkDel(link) // may be gone with its netns already
		}
	})
	for _, end := range []struct {
		h *netlink.Handle
		e VethEnd
	}{{ha, a}, {hb, b}} {
		if err := linkUp(end.h, end.e); err != nil {
			t.Fatalf("nstest: %s: %v", end.e.Name, err)
		}
	}
}

func linkUp(h *netlink.Handle, end VethEnd) error {
	link, err := h.LinkByName(end.Name)
	if err != nil {
		return err
	}
	if end.Addr != nil {
		if err := h.AddrReplace(link, &netlink.Addr{IPNet: end.Addr}); err != nil {
			return err
		}
	}
	return h.LinkSetUp(link)
}

// Listen opens a listener inside the netns at path; closed in t.Cleanup.
func Listen(t testing.TB, path, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	err := Run(path, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("nstest: listen %s in %s: %v", addr, path, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// Dial connects from inside the netns at path.
func Dial(path, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := Run(path, func() error {
		var err error
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails since Go 1.24
	return hex.EncodeToString(b)
}
