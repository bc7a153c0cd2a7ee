package runtime

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ShmPath is made by the init in the container's /dev.
const ShmPath = "/dev/shm"

// IsInit reports whether this process was started as a container's init
// (argv[0] is InitPath).
func IsInit() bool { return len(os.Args) > 0 && os.Args[0] == InitPath }

// RunInit points the standard streams at the container's own files and
// execs the container's command in place of this process. It only returns
// on error, with the exit code to use.
func RunInit() int {
	args := os.Args[1:]
	var user string
	if len(args) > 0 && strings.HasPrefix(args[0], userFlag) {
		user, args = strings.TrimPrefix(args[0], userFlag), args[1:]
	}
	home := false
	if len(args) > 0 && args[0] == homeFlag {
		home, args = true, args[1:]
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "coat init: no command")
		return 127
	}
	if err := os.MkdirAll(filepath.Dir(LogPath), 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "coat init:", err)
		return 126
	}
	logf, err := os.OpenFile(LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, "coat init:", err)
		return 126
	}
	// /dev/shm lives in /dev's tmpfs (see spec): sticky and open to all,
	// as a tmpfs of its own would be.
	if err := os.Mkdir(ShmPath, 0o1777); err != nil && !os.IsExist(err) {
		fmt.Fprintln(os.Stderr, "coat init:", err)
		return 126
	}
	if err := os.Chmod(ShmPath, os.ModeSticky|0o777); err != nil {
		fmt.Fprintln(os.Stderr, "coat init:", err)
		return 126
	}
	null, err := os.OpenFile("/dev/null", os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "coat init:", err)
		return 126
	}
	for fd, f := range []*os.File{null, logf, logf} {
		if err := unix.Dup3(int(f.Fd()), fd, 0); err != nil {
			fmt.Fprintln(os.Stderr, "coat init: dup:", err)
			return 126
		}
	}
	if home {
		us, _, _ := strings.Cut(user, ":")
		uid, _ := strconv.Atoi(us)
		passwd, _ := os.ReadFile("/etc/passwd") // the container's
		if err := os.Setenv("HOME", HomeDir(passwd, uid)); err != nil {
			fmt.Fprintln(os.Stderr, "coat init:", err)
			return 126
		}
	}
	if user != "" {
		if err := becomeUser(user); err != nil {
			fmt.Fprintln(os.Stderr, "coat init:", err)
			return 126
		}
	}
	path, err := exec.LookPath(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "coat init: %s: %v\n", args[0], err)
		return 127
	}
	err = unix.Exec(path, args, os.Environ())
	fmt.Fprintf(os.Stderr, "coat init: exec %s: %v\n", path, err)
	return 126
}

// becomeUser switches every thread to uid:gid with no supplementary
// groups (and so drops the capabilities, as for any non-root user).
func becomeUser(user string) error {
	us, gs, _ := strings.Cut(user, ":")
	uid, err := strconv.Atoi(us)
	if err != nil {
		return fmt.Errorf("bad user %q", user)
	}
	gid, err := strconv.Atoi(gs)
	if err != nil {
		return fmt.Errorf("bad user %q", user)
	}
	if err := unix.Setgroups(nil); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := unix.Setgid(gid); err != nil {
		return fmt.Errorf("setgid %d: %w", gid, err)
	}
	if err := unix.Setuid(uid); err != nil {
		return fmt.Errorf("setuid %d: %w", uid, err)
	}
	return nil
}
