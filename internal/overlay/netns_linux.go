//go:build linux

package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// CreateNetNS creates an empty network namespace bind-mounted at path (its
// parent directory is created 0700) and brings its lo up; like
// "ip netns add", but at any path. A path that already holds a netns mount is
// kept.
func CreateNetNS(path string) error {
	if !isNetNSMount(path) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("create netns dir: %w", err)
		}
		f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o444)
		if err != nil {
			return fmt.Errorf("create netns file: %w", err)
		}
		f.Close()
		if err := onThread(unshareNet, func() error { return bindSelfNetNS(path) }); err != nil {
			os.Remove(path)
			return fmt.Errorf("create netns %s: %w", path, err)
		}
	}
	return setLoUp(path)
}

// DeleteNetNS unmounts (MNT_DETACH) and removes a netns made by CreateNetNS;
// like "ip netns delete". An absent path is not an error.
func DeleteNetNS(path string) error {
	if isNetNSMount(path) {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount netns %s: %w", path, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

// isNetNSMount tells whether path is an nsfs file, i.e. a namespace bind mount.
func isNetNSMount(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

func bindSelfNetNS(path string) error {
	if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount: %w", err)
	}
	return nil
}

func unshareNet() error {
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("unshare: %w", err)
	}
	return nil
}

// setLoUp is "ip -n NS link set lo up".
func setLoUp(path string) error {
	return withHandle(path, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up: %w", err)
		}
		return nil
	})
}

// withHandle runs fn with a netlink handle bound to the netns at path.
func withHandle(path string, fn func(*netlink.Handle) error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	defer h.Close()
	return fn(h)
}

// InNetNS runs fn on an OS thread that has joined the network namespace at
// path: sockets fn opens belong to that namespace.
func InNetNS(path string, fn func() error) error { return inNetNS(path, fn) }

// inNetNS runs fn on an OS thread that has joined the netns at path.
func inNetNS(path string, fn func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	return onThread(func() error { return netns.Set(ns) }, fn)
}

// onThread runs enter and then fn on a fresh goroutine locked to its OS
// thread, and puts the thread back into its original netns afterwards. If
// that fails the goroutine exits still locked, so the runtime discards the
// thread instead of reusing it in the wrong namespace.
func onThread(enter, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		err = enter()
		if err == nil {
			err = fn()
		}
		if rerr := netns.Set(orig); rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("restore netns: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// disableIPv6 writes 1 to net.ipv6.conf.{all,default}.disable_ipv6 of the
// netns at path ("ip netns exec NS sysctl -w ..."), so its links send no
// router solicitations or DAD probes. /proc/sys/net belongs to the netns of
// the thread that opens it, hence the thread switch.
func disableIPv6(path string) error {
	return inNetNS(path, func() error {
		for _, conf := range []string{"all", "default"} {
			f := "/proc/sys/net/ipv6/conf/" + conf + "/disable_ipv6"
			err := os.WriteFile(f, []byte("1"), 0o644)
			if errors.Is(err, os.ErrNotExist) {
				return nil // kernel without ipv6
			}
			if err != nil {
				return fmt.Errorf("disable ipv6: %w", err)
			}
		}
		return nil
	})
}
