package runtime

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The fast freeze, on either cgroup hierarchy.
//
// Checkpoint freezes the container's cgroup itself before runc runs CRIU,
// because CRIU's own freeze looks at the state once right after its write
// and then every 100 ms only: on v1 the first look nearly always finds the
// cgroup still FREEZING (100 ms lost); on v2 an idle container is usually
// frozen by then, a busy one not always. CRIU then finds the cgroup frozen
// and seizes the tasks at once; on a failed dump CRIU leaves it frozen as
// it found it, and Checkpoint thaws it.
//
// Which freezer: the hierarchy mounted at the cgroup root (CgroupRoot,
// /sys/fs/cgroup) decides, as it does for runc (which names the cgroup to
// CRIU) and CRIU (which looks for freezer.state, then cgroup.freeze, in it):
//
//   - cgroup2 at the root (statfs: CGROUP2_SUPER_MAGIC; the unified
//     hierarchy, Debian 12's default): ROOT/CGROUP/cgroup.freeze, "1" or
//     "0"; the kernel reports the state reached as "frozen 1" or
//     "frozen 0" in cgroup.events.
//   - otherwise a v1 freezer hierarchy at ROOT/freezer (CGROUP_SUPER_MAGIC,
//     as on hybrid hosts, whose cgroup2 at ROOT/unified has no say here):
//     ROOT/freezer/CGROUP/freezer.state, FROZEN or THAWED, unchanged from
//     before v2 was supported: it is polled every millisecond.
//   - neither: os.ErrNotExist, and CRIU freezes (or fails) as it would.
//
// Waiting for v2: most freezes complete within microseconds of the write
// (a running task is stopped by an IPI, a sleeping one woken to stop), so
// the wait first re-reads cgroup.events for up to v2Spin (200 µs): a
// wake-up from a notification costs a scheduling round trip, milliseconds
// on a busy host. Then it sleeps until the file changes: cgroup.events is
// a kernfs file whose changes are signalled to poll(2) (POLLPRI) and to
// inotify (a modify event); the wait polls the file itself, as kernfs
// wakes pollers at once whereas inotify's event goes through a workqueue.
// The kernel sends these notifications at most once per 10 ms per file
// (CGROUP_FILE_NOTIFY_MIN_INTV, rounded up to jiffies: 12 ms at HZ=250),
// delaying later ones until that time is up: a freeze within that time of
// the previous change of the file (right after a thaw, whose notification
// may itself have been delayed) would be told up to 12 ms late. So the
// wait also re-reads the file every v2Recheck (1 ms, the v1 freezer's
// polling interval): the notification wakes it at once in the usual case,
// and it is never more than a millisecond late otherwise. The whole wait
// is bounded by the timeout (10 s), after which the cgroup is thawed again
// and the freeze reported failed.
//
// CRIU (criu/seize.c, freeze_processes) on v2 reads cgroup.freeze and, if
// it is "1", cgroup.events: "frozen 1" is FROZEN, so it skips its own
// freeze and polling, seizes the tasks, and on a failed dump writes "1"
// back (the state it found): the same as for FROZEN in freezer.state on v1.
// That is why the v2 freeze returns only once cgroup.events says
// "frozen 1": with cgroup.freeze "1" but "frozen 0" CRIU takes the cgroup
// for one still freezing and, skipping its wait for the freeze to
// complete, seizes the tasks mid-transition.

const (
	defaultCgroupRoot = "/sys/fs/cgroup"
	// freezeTimeout bounds a freeze or a thaw.
	freezeTimeout = 10 * time.Second
	// v2Recheck is how often a v2 wait re-reads cgroup.events without a
	// notification (see above).
	v2Recheck = time.Millisecond
	// v2Spin is how long a v2 wait re-reads cgroup.events before it
	// sleeps on its notification.
	v2Spin = 200 * time.Microsecond
)

// Freezer is the cgroup freezer a host offers.
type Freezer int

// Freezers.
const (
	NoFreezer Freezer = iota // none: CRIU freezes (first poll after 100 ms)
	FreezerV1                // cgroup v1 freezer hierarchy: freezer.state
	FreezerV2                // cgroup v2 (unified): cgroup.freeze
)

func (f Freezer) String() string {
	switch f {
	case FreezerV1:
		return "cgroup v1 freezer (freezer.state)"
	case FreezerV2:
		return "cgroup v2 (cgroup.freeze)"
	}
	return "none (CRIU's freeze, polled every 100 ms)"
}

// DetectFreezer says which freezer the cgroup filesystems mounted at root
// ("" for /sys/fs/cgroup) offer.
func DetectFreezer(root string) Freezer {
	if root == "" {
		root = defaultCgroupRoot
	}
	switch {
	case fsType(root) == unix.CGROUP2_SUPER_MAGIC:
		return FreezerV2
	case fsType(filepath.Join(root, "freezer")) == unix.CGROUP_SUPER_MAGIC:
		return FreezerV1
	}
	return NoFreezer
}

func fsType(path string) int64 {
	var st unix.Statfs_t
	if unix.Statfs(path, &st) != nil {
		return 0
	}
	return int64(st.Type)
}

// cgroupRoot is where the cgroup filesystems are mounted.
func (r *Runtime) cgroupRoot() string {
	if r.CgroupRoot != "" {
		return r.CgroupRoot
	}
	return defaultCgroupRoot
}

// freeze freezes (or thaws) the container's cgroup and waits until the
// kernel reports it; os.ErrNotExist if the host has no freezer or the
// cgroup is gone.
func (r *Runtime) freeze(name string, frozen bool) error {
	return freezeCgroup(r.cgroupRoot(), filepath.Join(r.CgroupParent, name), frozen, freezeTimeout)
}

// freezeCgroup freezes (or thaws) the cgroup rel (a path below the root of
// the hierarchy) of the cgroup filesystems mounted at root, within timeout.
func freezeCgroup(root, rel string, frozen bool, timeout time.Duration) error {
	switch DetectFreezer(root) {
	case FreezerV2:
		return freezeV2(filepath.Join(root, rel), frozen, timeout)
	case FreezerV1:
		return freezeV1(filepath.Join(root, "freezer", rel), frozen, timeout)
	}
	return fmt.Errorf("no cgroup freezer at %s (neither cgroup2 nor a v1 freezer hierarchy): %w", root, os.ErrNotExist)
}

// freezeV1 sets the freezer state of the v1 cgroup dir and waits, polling
// every millisecond, until the kernel reports it.
func freezeV1(dir string, frozen bool, timeout time.Duration) error {
	state := filepath.Join(dir, "freezer.state")
	want := "THAWED"
	if frozen {
		want = "FROZEN"
	}
	if err := os.WriteFile(state, []byte(want), 0o644); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(state)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(b)) == want {
			return nil
		}
		if time.Now().After(deadline) {
			_ = os.WriteFile(state, []byte("THAWED"), 0o644)
			return fmt.Errorf("cgroup freezer did not reach %s within %v", want, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// freezeV2 writes cgroup.freeze of the v2 cgroup dir and waits, on
// cgroup.events' notifications, until it reports the state (see above).
// A cgroup that is gone is an error wrapping os.ErrNotExist that says so.
func freezeV2(dir string, frozen bool, timeout time.Duration) error {
	want := "0"
	if frozen {
		want = "1"
	}
	gone := func(err error) error {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("cgroup %s is gone: %w", dir, os.ErrNotExist)
		}
		return err
	}
	// Open cgroup.events first, so that no change after the write can
	// go unnoticed.
	ev, err := unix.Open(filepath.Join(dir, "cgroup.events"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return gone(fmt.Errorf("open %s/cgroup.events: %w", dir, err))
	}
	defer unix.Close(ev)
	if err := writeCgroupFile(filepath.Join(dir, "cgroup.freeze"), want); err != nil {
		return gone(err)
	}
	start := time.Now()
	deadline := start.Add(timeout)
	buf := make([]byte, 512)
	for {
		// Reading the file also arms poll for the next change.
		state, err := readFrozen(ev, buf)
		if err != nil {
			return gone(fmt.Errorf("read %s/cgroup.events: %w", dir, err))
		}
		if state == want {
			return nil
		}
		if time.Since(start) < v2Spin {
			continue
		}
		left := time.Until(deadline)
		if left <= 0 {
			if frozen {
				_ = writeCgroupFile(filepath.Join(dir, "cgroup.freeze"), "0")
			}
			return fmt.Errorf("cgroup %s did not report frozen %s within %v (is a parent cgroup frozen?)", dir, want, timeout)
		}
		wait := min(left, v2Recheck)
		fds := []unix.PollFd{{Fd: int32(ev), Events: unix.POLLPRI}}
		if _, err := unix.Poll(fds, int((wait+time.Millisecond-1)/time.Millisecond)); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll %s/cgroup.events: %w", dir, err)
		}
	}
}

// readFrozen reads the "frozen" key of cgroup.events from its start.
func readFrozen(fd int, buf []byte) (string, error) {
	n, err := unix.Pread(fd, buf, 0)
	if err != nil {
		return "", err
	}
	for line := range bytes.SplitSeq(buf[:n], []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("frozen ")); ok {
			return string(bytes.TrimSpace(v)), nil
		}
	}
	return "", errors.New(`no "frozen" key (kernel older than 5.2?)`)
}

func writeCgroupFile(path, val string) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(val)); err != nil {
		return fmt.Errorf("write %q to %s: %w", val, path, err)
	}
	return nil
}
