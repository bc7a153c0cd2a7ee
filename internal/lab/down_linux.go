package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Down removes everything the lab made: processes (agents, etcd,
// containers), mounts, namespaces, links, cgroups and state. It works
// from whatever a crash left, and again after a partial Down.
func Down(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return err
	}
	s, err := Load(name)
	if err != nil {
		s = &State{Name: name, Dir: Dir(name), Index: -1}
	}
	var errs []error
	for _, pid := range s.Pids {
		stop(pid)
	}
	for _, pid := range findRelays(name, "") { // also those a lost state forgot
		stop(pid)
	}
	killNamespaces(s)
	for i := 1; i <= 64; i++ {
		root := filepath.Join(s.Dir, EdgeName(i), "runc")
		if _, err := os.Stat(root); err != nil {
			continue
		}
		r := &runc.Runc{Command: "runc", Root: root}
		cs, _ := r.List(ctx)
		for _, c := range cs {
			_ = r.Delete(ctx, c.ID, &runc.DeleteOpts{Force: true})
		}
	}
	if err := unmountUnder(s.Dir); err != nil {
		errs = append(errs, err)
	}
	prefix := fmt.Sprintf("coat-%s-", name)
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			if err := netns.DeleteNamed(e.Name()); err != nil {
				errs = append(errs, fmt.Errorf("delete netns %s: %w", e.Name(), err))
			}
		}
	}
	if s.Index >= 0 {
		links, _ := netlink.LinkList()
		for _, l := range links {
			n := l.Attrs().Name
			if n == s.bridge() || strings.HasPrefix(n, fmt.Sprintf("coat%d-", s.Index)) {
				if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
					errs = append(errs, fmt.Errorf("delete link %s: %w", n, err))
				}
			}
		}
	}
	removeCgroups("/coat/" + name)
	if err := os.RemoveAll(s.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// stop ends a process: SIGTERM, then SIGKILL after 3 s.
func stop(pid int) {
	if !alive(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 60 && alive(pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// killNamespaces kills every process living in one of the lab's network
// namespaces: the nodes' and the containers' (bind-mounted under the
// agents' state directories).
func killNamespaces(s *State) {
	inodes := map[uint64]bool{}
	add := func(path string) {
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil {
			inodes[st.Ino] = true
		}
	}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), fmt.Sprintf("coat-%s-", s.Name)) {
			add("/run/netns/" + e.Name())
		}
	}
	nsFiles, _ := filepath.Glob(filepath.Join(s.Dir, "*", "netns", "*"))
	for _, f := range nsFiles {
		add(f)
	}
	if len(inodes) == 0 {
		return
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && inodes[st.Ino] {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder detaches every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mps = append(mps, f[4])
		}
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	var errs []error
	for _, mp := range mps {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// removeCgroups removes the lab's cgroup directories in every hierarchy,
// deepest first (a cgroup directory goes with rmdir once empty).
func removeCgroups(rel string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for _, root := range roots {
		base := filepath.Join(root, rel)
		var dirs []string
		_ = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			_ = unix.Rmdir(d)
		}
	}
}
