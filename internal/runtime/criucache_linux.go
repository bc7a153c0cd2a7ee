package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// CRIU's kernel-feature cache.
//
// Every CRIU run first probes the kernel's features (~30 ms here, on both
// the dump and the restore side of a migration) unless it finds them cached
// in /run/criu.kdat. CRIU keeps that cache only on a tmpfs, so that a reboot
// (perhaps into another kernel) clears it; where /run is no tmpfs (as on
// these machines) it probes every time. The agent therefore keeps a small
// tmpfs of its own (StateDir/criu-run, 0700, root's alone) and runs runc,
// and through it CRIU, in a private mount namespace where that tmpfs is
// /run. CRIU then writes and reads its cache there by its own rules; the
// host's /run and mount table are untouched. runc and CRIU need nothing from
// the host's /run: runc's state is under StateDir, and namespaces, images
// and the rootfs are named by paths outside it.
//
// The private namespace belongs to one OS thread: unshare(CLONE_NEWNS) on a
// thread locked for the purpose, then the child is forked from that thread
// (Go forks from the calling thread) and inherits its namespace. The thread
// is never unlocked, so Go discards it afterwards instead of reusing it.

const criuRunDir = "criu-run"

// EnableFastPaths mounts the two small tmpfs the fast checkpoint and
// restore use, unless they are there already (left by an agent that died;
// Close, `coat lab down` or a reboot removes them): CRIU's cache (above)
// and the stand-in for masked directories (see maskedExternals). A failure
// only costs speed: CRIU then probes and archives as before.
func (r *Runtime) EnableFastPaths() error {
	var errs []error
	dir := filepath.Join(r.StateDir, criuRunDir)
	if err := ensureTmpfs(dir, 0o700, 0, "size=1m,mode=0700"); err != nil {
		errs = append(errs, err)
	} else {
		r.criuRun = dir
	}
	if err := ensureTmpfs(r.maskedDir(), 0o555, unix.MS_RDONLY, "size=4k,mode=0555"); err != nil {
		errs = append(errs, err)
	} else {
		r.maskedOK = true
	}
	return errors.Join(errs...)
}

// Close unmounts what EnableFastPaths mounted, so that an agent that stops
// leaves no mount behind. Containers keep their own binds of the masked
// stand-in; the next agent mounts a fresh one.
func (r *Runtime) Close() error {
	var errs []error
	for _, d := range []string{filepath.Join(r.StateDir, criuRunDir), r.maskedDir()} {
		if mounted(d) {
			if err := unix.Unmount(d, unix.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", d, err))
			}
		}
	}
	r.criuRun, r.maskedOK = "", false
	return errors.Join(errs...)
}

func ensureTmpfs(dir string, perm os.FileMode, flags uintptr, data string) error {
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	if mounted(dir) && isTmpfs(dir) && (flags&unix.MS_RDONLY == 0 || isReadOnly(dir)) {
		return nil // ours, from an agent before this one
	}
	if err := unix.Mount("coat-"+filepath.Base(dir), dir, "tmpfs", flags|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, data); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	return nil
}

func isTmpfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
}

func isReadOnly(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Flags&unix.ST_RDONLY != 0
}

// withCriuCache runs f (which runs runc) where /run is the cache tmpfs;
// with slow (the stock path) or without the tmpfs, f runs as it is.
func (r *Runtime) withCriuCache(slow bool, f func() error) error {
	return r.withCriuIn(slow, "", f)
}

// withCriuIn is withCriuCache, with f run inside the network namespace at
// nsPath as well when nsPath is set (the package note: dumps inside the
// network namespace). Failing to enter it is an error, and f does not run:
// an image dumped inside the namespace must be restored inside one.
func (r *Runtime) withCriuIn(slow bool, nsPath string, f func() error) error {
	if r.criuRun == "" || slow {
		if nsPath == "" {
			return f()
		}
		return inNetNSHere(nsPath, f)
	}
	done := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		// No UnlockOSThread: once this thread has left the host's mount
		// (or network) namespace it must not run anything else.
		// If the mount namespace cannot be made, f still runs: CRIU
		// probes the kernel as it would without the cache.
		_ = privateRun(r.criuRun)
		if nsPath != "" {
			if err := enterNetNS(nsPath); err != nil {
				done <- err
				return
			}
		}
		done <- f()
	}()
	return <-done
}

// inNetNSHere runs f on the calling goroutine's thread, moved into the
// network namespace at path for the call and back afterwards (the
// thread's mount namespace, in which path resolves, stays as it is).
func inNetNSHere(path string, f func() error) error {
	goruntime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		goruntime.UnlockOSThread()
		return fmt.Errorf("this thread's network namespace: %w", err)
	}
	defer orig.Close()
	if err := enterNetNS(path); err != nil {
		goruntime.UnlockOSThread()
		return err
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// The thread stays locked, so that nothing else runs in the
		// container's namespace; Go ends it with its goroutine.
		return errors.Join(ferr, fmt.Errorf("return to the host's network namespace: %w", err))
	}
	goruntime.UnlockOSThread()
	return ferr
}

// enterNetNS moves the calling thread into the network namespace at path.
func enterNetNS(path string) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	return nil
}

// privateRun moves the calling thread into a mount namespace of its own in
// which the host's mounts are slaves (nothing made here reaches the host)
// and dir is bind-mounted on /run.
func privateRun(dir string) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return err
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return err
	}
	return unix.Mount(dir, "/run", "", unix.MS_BIND, "")
}

// installInit copies this binary to StateDir/init/coat-HASH and returns that
// path: the file bind-mounted as every container's init. A container's
// mount of it lives as long as the container, so it must never change
// under it: replacing the agent's binary (an upgrade, a rebuild) would
// otherwise leave the mount's source deleted, which CRIU cannot checkpoint.
// Copies no container's config.json names any more are removed.
func installInit(stateDir, self string) (string, error) {
	dir := filepath.Join(stateDir, "init")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	src, err := os.Open(self)
	if err != nil {
		return "", err
	}
	defer src.Close()
	h := sha256.New()
	if _, err := io.Copy(h, src); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "coat-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(dst); err != nil {
		if _, err := src.Seek(0, io.SeekStart); err != nil {
			return "", err
		}
		tmp, err := os.CreateTemp(dir, ".tmp-")
		if err != nil {
			return "", err
		}
		_, err = io.Copy(tmp, src)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Chmod(tmp.Name(), 0o555)
		}
		if err == nil {
			err = os.Rename(tmp.Name(), dst)
		}
		if err != nil {
			os.Remove(tmp.Name())
			return "", fmt.Errorf("install container init %s: %w", dst, err)
		}
	}
	gcInits(stateDir, dst)
	return dst, nil
}

// gcInits removes init copies other than keep that no container's
// config.json refers to.
func gcInits(stateDir, keep string) {
	used := map[string]bool{keep: true}
	configs, _ := filepath.Glob(filepath.Join(stateDir, "containers", "*", "config.json"))
	for _, c := range configs {
		b, err := os.ReadFile(c)
		if err != nil {
			return // unsure: keep everything
		}
		for _, p := range strings.Split(string(b), `"`) {
			if strings.HasPrefix(p, filepath.Join(stateDir, "init")+"/") {
				used[p] = true
			}
		}
	}
	olds, _ := filepath.Glob(filepath.Join(stateDir, "init", "*"))
	for _, p := range olds {
		if !used[p] {
			os.Remove(p)
		}
	}
}

// MemDirs are the state directories that hold checkpoint images: they are
// tmpfs mounts (root's alone), so an image is written and read at memory
// speed and never reaches a disk. A stop-and-copy migration makes up to
// four passes over the container's memory while it is frozen (dump,
// send, receive, restore); on a disk each was a full write or read.
var MemDirs = []string{"checkpoints", "incoming"}

// MountMemDirs mounts MemDirs as tmpfs (kept if already there).
func (r *Runtime) MountMemDirs() error {
	var errs []error
	for _, d := range MemDirs {
		if err := ensureTmpfs(filepath.Join(r.StateDir, d), 0o700, 0, "mode=0700"); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// UnmountMemDirs unmounts the MemDirs that hold nothing: an image kept
// for recovery or after a failed rollback stays until `coat rm` or
// `coat lab down`.
func (r *Runtime) UnmountMemDirs() {
	for _, d := range MemDirs {
		p := filepath.Join(r.StateDir, d)
		if ents, err := os.ReadDir(p); err == nil && len(ents) == 0 && mounted(p) {
			_ = unix.Unmount(p, unix.MNT_DETACH)
		}
	}
}

// Warm makes a host's first migration as fast as the next ones: CRIU
// probes the kernel once (`criu check`, which leaves its cache in the
// tmpfs), and runc's and CRIU's binaries and libraries are read into the
// page cache, instead of on the first freeze's clock.
func (r *Runtime) Warm(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var errs []error
	err := r.withCriuCache(false, func() error {
		return exec.CommandContext(ctx, "criu", "check").Run()
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("criu check: %w", err))
	}
	if err := exec.CommandContext(ctx, "runc", "--version").Run(); err != nil {
		errs = append(errs, fmt.Errorf("runc --version: %w", err))
	}
	return errors.Join(errs...)
}
