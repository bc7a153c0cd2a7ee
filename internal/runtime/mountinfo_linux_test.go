package runtime

import (
	"os"
	goruntime "runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// mounted answers for the calling thread's mount namespace, not the main
// thread's: a thread that left for a private namespace (as CRIU's runs
// do) sees its own mounts, and the other threads do not see them.
func TestMountedSeesThisThreadsNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount namespaces)")
	}
	dir := t.TempDir()
	type result struct {
		inside bool
		err    error
	}
	done := make(chan result, 1)
	go func() {
		// Never unlocked: Go discards the thread with its namespace.
		goruntime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			done <- result{err: err}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			done <- result{err: err}
			return
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=4k"); err != nil {
			done <- result{err: err}
			return
		}
		done <- result{inside: mounted(dir)}
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.inside {
		t.Error("mounted() on the thread that mounted a tmpfs in its own namespace: false, want true")
	}
	if mounted(dir) {
		t.Error("mounted() outside that namespace: true, want false")
	}
}
