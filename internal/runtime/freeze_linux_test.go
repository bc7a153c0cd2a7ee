package runtime

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// busyEnv makes the test binary a busy process (see TestMain) that counts
// in the 8-byte file it names, mapped shared; with idleEnv set as well it
// counts once and then sleeps.
const busyEnv, idleEnv = "COAT_TEST_BUSY_COUNTER", "COAT_TEST_IDLE"

func TestMain(m *testing.M) {
	if f := os.Getenv(busyEnv); f != "" {
		busy(f, os.Getenv(idleEnv) != "")
	}
	os.Exit(m.Run())
}

// busy counts in the file's first 8 bytes as fast as it can, for ever (or,
// if idle, once).
func busy(path string, idle bool) {
	c, err := mapCounter(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if idle {
		c.Add(1)
		for {
			time.Sleep(time.Hour)
		}
	}
	for {
		c.Add(1)
	}
}

func mapCounter(path string) (*atomic.Uint64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := unix.Mmap(int(f.Fd()), 0, 8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	return (*atomic.Uint64)(unsafe.Pointer(&b[0])), nil
}

// startBusy starts a busy process (the test binary, see busy) and returns
// the command and its counter; t.Cleanup kills it (a cleanup registered
// after this call must thaw it first: a frozen v1 task does not die).
func startBusy(t testing.TB) (*exec.Cmd, *atomic.Uint64) {
	t.Helper()
	return startCounter(t, false)
}

func startCounter(t testing.TB, idle bool) (*exec.Cmd, *atomic.Uint64) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "counter")
	if err := os.WriteFile(path, make([]byte, 8), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := mapCounter(path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), busyEnv+"="+path)
	if idle {
		cmd.Env = append(cmd.Env, idleEnv+"=1")
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, c
}

// waitFor waits up to 10 s (generous: only a broken freezer takes so
// long) until cond holds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
	}
}

// privateCgroup2 moves the calling goroutine's OS thread into a private
// mount namespace and mounts cgroup2 on a temporary directory there, which
// it returns. The thread is never unlocked: Go ends it with the test's
// goroutine, and the namespace with it; t.Cleanup unmounts before that.
// Nothing of it is seen outside: mounts are private first.
func privateCgroup2(t testing.TB) string {
	t.Helper()
	goruntime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		t.Fatalf("unshare mount namespace: %v", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Fatalf("make mounts private: %v", err)
	}
	root := t.TempDir()
	if err := unix.Mount("cgroup2", root, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		t.Skipf("mount cgroup2: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(root, 0); err != nil {
			t.Errorf("unmount %s: %v", root, err)
			_ = unix.Unmount(root, unix.MNT_DETACH)
		}
	})
	return root
}

// mkCgroup makes the cgroup dir (and its parent) and removes both in
// t.Cleanup, once emptied (the busy process' cleanup, registered later,
// runs first).
func mkCgroup(t testing.TB, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range []string{dir, filepath.Dir(dir)} {
			var err error
			// A killed process leaves its cgroup a moment after Wait.
			for range 1000 {
				if err = unix.Rmdir(d); err == nil || errors.Is(err, unix.ENOENT) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err != nil && !errors.Is(err, unix.ENOENT) {
				t.Errorf("rmdir %s: %v", d, err)
			}
		}
	})
}

func enter(t testing.TB, dir string, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readString(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The fast freeze on a cgroup v2 hierarchy: a busy process stops (its
// counter stays put) and cgroup.events says "frozen 1", with cgroup.freeze
// "1" (what CRIU's seize takes for a frozen cgroup); a thaw resumes it,
// also after a failed dump in which CRIU wrote "1" back; a cgroup that is
// gone is reported as such.
func TestFreezeV2(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts cgroup2 in a private mount namespace")
	}
	root := privateCgroup2(t)
	if got := DetectFreezer(root); got != FreezerV2 {
		t.Fatalf("DetectFreezer(%s) = %v", root, got)
	}
	parent := fmt.Sprintf("coat-freeze-test-%d", os.Getpid())
	r := &Runtime{CgroupRoot: root, CgroupParent: "/" + parent}
	dir := filepath.Join(root, parent, "ctr")
	mkCgroup(t, dir)
	cmd, counter := startBusy(t)
	t.Cleanup(func() { _ = os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0o644) }) // before the kill
	enter(t, dir, cmd.Process.Pid)
	waitFor(t, "busy process counting", func() bool { return counter.Load() > 0 })

	frozenCheck := func(step string) {
		t.Helper()
		if ev := readString(t, filepath.Join(dir, "cgroup.events")); !strings.Contains(ev, "frozen 1") {
			t.Fatalf("%s: cgroup.events %q, want frozen 1", step, ev)
		}
		if f := strings.TrimSpace(readString(t, filepath.Join(dir, "cgroup.freeze"))); f != "1" {
			t.Fatalf("%s: cgroup.freeze %q, want 1", step, f)
		}
		// Frozen, it cannot count, however long we look.
		n := counter.Load()
		time.Sleep(50 * time.Millisecond)
		if m := counter.Load(); m != n {
			t.Fatalf("%s: frozen process counted from %d to %d", step, n, m)
		}
	}
	resumes := func(step string) {
		t.Helper()
		if ev := readString(t, filepath.Join(dir, "cgroup.events")); !strings.Contains(ev, "frozen 0") {
			t.Fatalf("%s: cgroup.events %q, want frozen 0", step, ev)
		}
		n := counter.Load()
		waitFor(t, step+": thawed process counting", func() bool { return counter.Load() > n })
	}

	if err := r.freeze("ctr", true); err != nil {
		t.Fatalf("freeze: %v", err)
	}
	frozenCheck("freeze")
	if err := r.Thaw("ctr"); err != nil {
		t.Fatalf("thaw: %v", err)
	}
	resumes("thaw")

	// A failed dump: CRIU found the cgroup frozen and writes "1" back
	// before it exits; Checkpoint then thaws it.
	if err := r.freeze("ctr", true); err != nil {
		t.Fatalf("second freeze: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	frozenCheck("after CRIU's restore of the state")
	if err := r.freeze("ctr", false); err != nil {
		t.Fatalf("thaw after a failed dump: %v", err)
	}
	resumes("thaw after a failed dump")

	// Gone: the process killed, the cgroup removed.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitFor(t, "cgroup removed", func() bool { return unix.Rmdir(dir) == nil })
	for _, frozen := range []bool{true, false} {
		err := r.freeze("ctr", frozen)
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), dir+" is gone") {
			t.Errorf("freeze(%v) of a removed cgroup: %v, want one saying %s is gone (os.ErrNotExist)", frozen, err, dir)
		}
	}
}

// The v1 freezer, unchanged, on this host's hierarchy if it has one.
func TestFreezeV1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a cgroup in the host's freezer hierarchy")
	}
	if DetectFreezer("") != FreezerV1 {
		t.Skip("no cgroup v1 freezer at /sys/fs/cgroup/freezer")
	}
	parent := fmt.Sprintf("coat-freeze-test-%d", os.Getpid())
	r := &Runtime{CgroupParent: "/" + parent}
	dir := filepath.Join(defaultCgroupRoot, "freezer", parent, "ctr")
	mkCgroup(t, dir)
	cmd, counter := startBusy(t)
	t.Cleanup(func() { _ = os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0o644) })
	enter(t, dir, cmd.Process.Pid)
	waitFor(t, "busy process counting", func() bool { return counter.Load() > 0 })

	if err := r.freeze("ctr", true); err != nil {
		t.Fatalf("freeze: %v", err)
	}
	if s := strings.TrimSpace(readString(t, filepath.Join(dir, "freezer.state"))); s != "FROZEN" {
		t.Fatalf("freezer.state %q after freeze", s)
	}
	n := counter.Load()
	time.Sleep(50 * time.Millisecond)
	if m := counter.Load(); m != n {
		t.Fatalf("frozen process counted from %d to %d", n, m)
	}
	if err := r.Thaw("ctr"); err != nil {
		t.Fatalf("thaw: %v", err)
	}
	waitFor(t, "thawed process counting", func() bool { return counter.Load() > n })

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitFor(t, "cgroup removed", func() bool { return unix.Rmdir(dir) == nil })
	if err := r.freeze("ctr", true); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("freeze of a removed cgroup: %v, want os.ErrNotExist", err)
	}
}

// Without any cgroup freezer the freeze says so with os.ErrNotExist (and
// Checkpoint leaves freezing to CRIU).
func TestFreezeNoFreezer(t *testing.T) {
	root := t.TempDir()
	if got := DetectFreezer(root); got != NoFreezer {
		t.Fatalf("DetectFreezer(%s) = %v", root, got)
	}
	r := &Runtime{CgroupRoot: root, CgroupParent: "/coat/h"}
	if err := r.freeze("c", true); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("freeze without a freezer: %v, want os.ErrNotExist", err)
	}
}

// The v2 wait on plain files (no kernel behind them): a state already
// reported returns at once; one never reported fails after the timeout
// and thaws again; a missing cgroup is gone.
func TestFreezeV2Files(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("cgroup.freeze", "1\n")
	write("cgroup.events", "populated 1\nfrozen 0\n")
	if err := freezeV2(dir, false, time.Minute); err != nil {
		t.Fatalf("thaw, frozen 0 reported: %v", err)
	}
	if got := readString(t, filepath.Join(dir, "cgroup.freeze")); !strings.HasPrefix(got, "0") {
		t.Fatalf("cgroup.freeze %q after thaw, want 0", got)
	}
	err := freezeV2(dir, true, 20*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not report frozen 1") {
		t.Fatalf("freeze never reported: %v", err)
	}
	if got := readString(t, filepath.Join(dir, "cgroup.freeze")); !strings.HasPrefix(got, "0") {
		t.Fatalf("cgroup.freeze %q after a failed freeze, want 0 (thawed again)", got)
	}
	write("cgroup.events", "populated 1\nfrozen 1\n")
	if err := freezeV2(dir, true, time.Minute); err != nil {
		t.Fatalf("freeze, frozen 1 reported: %v", err)
	}
	gone := filepath.Join(dir, "gone")
	if err := freezeV2(gone, true, time.Minute); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), gone+" is gone") {
		t.Fatalf("missing cgroup: %v", err)
	}
}

func TestDumpedMemory(t *testing.T) {
	v1 := "cache 4096\nrss 100\nshmem 7\ntotal_cache 8192\ntotal_rss 1048576\ntotal_shmem 4096\ntotal_mapped_file 12\n"
	if got := dumpedMemory([]byte(v1), false); got != 1048576+4096 {
		t.Errorf("v1: %d", got)
	}
	v2 := "anon 2097152\nfile 9999999\nkernel 5\nshmem 8192\nfile_mapped 4\nanon_thp 0\n"
	if got := dumpedMemory([]byte(v2), true); got != 2097152+8192 {
		t.Errorf("v2: %d", got)
	}
}

// benchFreeze times freezes of a cgroup holding a busy process (busy) or
// one that sleeps (idle), which setup makes (returning the root of its
// hierarchy, its path there, and its directory): ns/op is their mean, and
// median and p95 are reported too (a busy 2-core machine gives a long
// tail: the process' threads must get a CPU to stop). Each sub-benchmark
// runs in a goroutine of its own, so setup runs in it.
func benchFreeze(b *testing.B, setup func(b *testing.B) (root, rel, dir string)) {
	for _, mode := range []string{"busy", "idle"} {
		b.Run(mode, func(b *testing.B) {
			root, rel, dir := setup(b)
			idle := mode == "idle"
			cmd, counter := startCounter(b, idle)
			// Thawed before the kill (a frozen v1 task does not die).
			b.Cleanup(func() { _ = freezeCgroup(root, rel, false, time.Second) })
			enter(b, dir, cmd.Process.Pid)
			waitFor(b, "process counting", func() bool { return counter.Load() > 0 })
			d := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if err := freezeCgroup(root, rel, true, freezeTimeout); err != nil {
					b.Fatal(err)
				}
				d = append(d, time.Since(t0))
				b.StopTimer()
				if err := freezeCgroup(root, rel, false, freezeTimeout); err != nil {
					b.Fatal(err)
				}
				// Let it run again, and let the kernel's limit on
				// cgroup.events notifications pass (one per 10 ms, 12 ms
				// at HZ=250; the thaw's own can be delayed by as much),
				// as between two migrations; within it the wait falls
				// back on re-reading every v2Recheck.
				if n := counter.Load(); !idle {
					waitFor(b, "thawed", func() bool { return counter.Load() > n })
				}
				time.Sleep(50 * time.Millisecond)
				b.StartTimer()
			}
			b.StopTimer()
			slices.Sort(d)
			b.ReportMetric(float64(d[len(d)/2].Microseconds()), "µs-median")
			b.ReportMetric(float64(d[len(d)*95/100].Microseconds()), "µs-p95")
		})
	}
}

// BenchmarkFreezeV2: the freeze of a cgroup v2 (mounted in a private mount
// namespace), from the write of cgroup.freeze until cgroup.events says
// frozen 1.
func BenchmarkFreezeV2(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	benchFreeze(b, func(b *testing.B) (string, string, string) {
		root := privateCgroup2(b)
		rel := fmt.Sprintf("coat-freeze-bench-%d/ctr", os.Getpid())
		mkCgroup(b, filepath.Join(root, rel))
		return root, rel, filepath.Join(root, rel)
	})
}

// BenchmarkFreezeV1: the same with the v1 freezer (freezer.state polled
// every millisecond), on this host's hierarchy.
func BenchmarkFreezeV1(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	if DetectFreezer("") != FreezerV1 {
		b.Skip("no cgroup v1 freezer at /sys/fs/cgroup/freezer")
	}
	benchFreeze(b, func(b *testing.B) (string, string, string) {
		rel := fmt.Sprintf("coat-freeze-bench-%d/ctr", os.Getpid())
		dir := filepath.Join(defaultCgroupRoot, "freezer", rel)
		mkCgroup(b, dir)
		return defaultCgroupRoot, rel, dir
	})
}
