package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// A real checkpoint where /sys/fs/cgroup is cgroup2: runc and CRIU run in
// a private mount namespace of this test's OS thread in which cgroup2 is
// mounted on /sys/fs/cgroup (on a v1 host it has no controllers, which
// runc and CRIU do without). The container runs bin/coat-sample with
// bin/coat as its init (`make build`). CRIU finds the cgroup frozen by
// Checkpoint and does not freeze it itself; a dump that stops at
// AfterFreeze thaws it; after a dump that leaves it running CRIU writes
// the frozen state back, and Thaw resumes it.
func TestCheckpointCgroupV2(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runc, CRIU and mounts")
	}
	for _, p := range []string{"runc", "criu"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("%s not found", p)
		}
	}
	bin, err := filepath.Abs("../../bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"coat", "coat-sample"} {
		if _, err := os.Stat(filepath.Join(bin, f)); err != nil {
			t.Skipf("no %s: run make build", filepath.Join(bin, f))
		}
	}
	state := t.TempDir()

	// This thread's own mount namespace, cgroup2 on /sys/fs/cgroup. The
	// thread is never unlocked: Go ends it with the test's goroutine.
	goruntime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		t.Fatalf("unshare mount namespace: %v", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Fatalf("make mounts private: %v", err)
	}
	if err := unix.Mount("cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		t.Skipf("mount cgroup2: %v", err)
	}
	t.Cleanup(func() { unmount(t, "/sys/fs/cgroup") })
	if f := DetectFreezer(""); f != FreezerV2 {
		t.Fatalf("freezer %v", f)
	}

	// A network namespace named by a file, as the agent's are.
	netns := filepath.Join(state, "netns")
	if err := os.WriteFile(netns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(orig)
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatal(err)
	}
	// Loopback up, as in the agent's namespaces: CRIU runs in there and
	// probes TCP repair over it when it has no feature cache.
	if lo, lerr := netlink.LinkByName("lo"); lerr != nil {
		err = lerr
	} else {
		err = netlink.LinkSetUp(lo)
	}
	if err == nil {
		err = unix.Mount("/proc/thread-self/ns/net", netns, "", unix.MS_BIND, "")
	}
	if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
		t.Fatalf("back to the test's network namespace: %v", serr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmount(t, netns) })

	r, err := New(filepath.Join(state, "coat"), "v2test", filepath.Join(bin, "coat"))
	if err != nil {
		t.Fatal(err)
	}
	r.CgroupParent = fmt.Sprintf("/coat-v2test-%d", os.Getpid())
	t.Cleanup(func() {
		if err := unix.Rmdir("/sys/fs/cgroup" + r.CgroupParent); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Errorf("rmdir cgroup: %v", err)
		}
	})
	// The image "sample": its directory is its name (and its key, where
	// images are stored under one).
	rootfs := filepath.Join(r.StateDir, "images", "sample", "rootfs")
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, filepath.Join(bin, "coat-sample"), filepath.Join(rootfs, "bin", "coat-sample"))

	ctx := context.Background()
	// remove is Runtime.Remove, but first unmounts the container's rootfs
	// itself: Runtime's mounted() reads /proc/self/mountinfo, the mount
	// namespace of the process' main thread, not this thread's.
	remove := func(ctx context.Context, name string) error {
		if err := r.Kill(ctx, name); err != nil {
			return err
		}
		if err := unix.Unmount(r.rootfs(name), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return err
		}
		return r.RemoveFiles(name)
	}
	start := func(name string) {
		t.Helper()
		if err := r.Prepare(Spec{Name: name, Image: "sample", Args: []string{"/bin/coat-sample", "server"}, NetNS: netns}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = r.Thaw(name)
			if err := remove(context.Background(), name); err != nil {
				t.Errorf("remove %s: %v", name, err)
			}
		})
		if err := r.Start(ctx, name); err != nil {
			t.Fatal(err)
		}
		// Running, and past the init (which points the streams at the
		// container's log before it execs the command).
		waitFor(t, name+" running coat-sample", func() bool {
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", r.Pid(ctx, name)))
			return r.Status(ctx, name) == "running" && strings.HasSuffix(exe, "/coat-sample")
		})
	}
	opts := func(name string) CheckpointOpts {
		return CheckpointOpts{ImageDir: filepath.Join(state, "img", name), WorkDir: filepath.Join(state, "work", name)}
	}
	// CRIU found the cgroup frozen: it logs cgroup.freeze=1 and skips its
	// own freeze ("freezing processes: N attempts done").
	criuFoundFrozen := func(name string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(state, "work", name, "dump.log"))
		if err != nil {
			t.Fatal(err)
		}
		log := string(b)
		if !strings.Contains(log, "Detected cgroup V2 freezer") || !strings.Contains(log, "cgroup.freeze=1") ||
			strings.Contains(log, "freezing processes:") {
			t.Errorf("CRIU did not find the cgroup v2 frozen; its freeze lines:\n%s", grepLines(log, "freez"))
		}
	}

	start("a")
	stop := errors.New("stop here")
	o := opts("a")
	o.AfterFreeze = func() error {
		if s := r.Status(ctx, "a"); s != "paused" {
			t.Errorf("after the freeze runc says %q, want paused", s)
		}
		return stop
	}
	if err := r.Checkpoint(ctx, "a", o); !errors.Is(err, stop) {
		t.Fatalf("checkpoint stopped after the freeze: %v", err)
	}
	if s := r.Status(ctx, "a"); s != "running" {
		t.Fatalf("after a failed checkpoint %q, want running (thawed)", s)
	}

	o = opts("a")
	o.LeaveRunning = true
	if err := r.Checkpoint(ctx, "a", o); err != nil {
		t.Fatalf("%v\n%s", err, criuErrors(o.WorkDir))
	}
	criuFoundFrozen("a")
	// CRIU wrote back the state it found, frozen, as after a failed dump.
	if s := r.Status(ctx, "a"); s != "paused" {
		t.Fatalf("after a dump leaving it running %q, want paused", s)
	}
	if err := r.Thaw("a"); err != nil {
		t.Fatal(err)
	}
	if s := r.Status(ctx, "a"); s != "running" {
		t.Fatalf("after Thaw %q, want running", s)
	}

	// b serves on the same port in the same network namespace.
	if err := remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	start("b")
	o = opts("b")
	var frozen time.Duration
	t0 := time.Now()
	o.AfterFreeze = func() error { frozen = time.Since(t0); return nil }
	if err := r.Checkpoint(ctx, "b", o); err != nil {
		t.Fatalf("%v\n%s", err, criuErrors(o.WorkDir))
	}
	t.Logf("checkpoint on cgroup v2: %v, frozen %v after the call", time.Since(t0).Round(time.Microsecond), frozen.Round(time.Microsecond))
	criuFoundFrozen("b")
	if s := r.Status(ctx, "b"); s != "" {
		t.Fatalf("after a checkpoint %q, want gone", s)
	}
	if err := r.Thaw("b"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("thaw of a checkpointed container: %v, want os.ErrNotExist", err)
	}
}

func unmount(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Unmount(dir, 0); err != nil {
		t.Errorf("unmount %s: %v", dir, err)
		_ = unix.Unmount(dir, unix.MNT_DETACH)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// criuErrors are the error lines of CRIU's dump log in dir.
func criuErrors(dir string) string {
	b, _ := os.ReadFile(filepath.Join(dir, "dump.log"))
	return grepLines(string(b), "Error")
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
