package agent

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/coat-project/coat/internal/doctor"
	"github.com/coat-project/coat/internal/migrate"
)

// hostFeatures says which memory strategies this host's kernel allows.
// Lazy pages need userfaultfd (probed by opening one) and, because root
// lacks CAP_SYS_RESOURCE on some machines, fs.pipe-user-pages-soft=0: a
// lazy dump keeps all memory in pipes, beyond the default per-user soft
// limit. The agent sets that sysctl itself and says so in its log.
func hostFeatures() (migrate.Features, string) {
	var f migrate.Features
	var note string
	if fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK, 0, 0); errno == 0 {
		unix.Close(int(fd))
		f.LazyPages = true
		const soft = "/proc/sys/fs/pipe-user-pages-soft"
		if b, err := os.ReadFile(soft); err == nil && string(b) != "0\n" {
			if err := os.WriteFile(soft, []byte("0"), 0o644); err != nil {
				f.LazyPages = false
				note = "post-copy unavailable: cannot set fs.pipe-user-pages-soft=0: " + err.Error()
			} else {
				note = "set fs.pipe-user-pages-soft=0 (was " + string(b[:len(b)-1]) + ") so that lazy dumps can pin memory in pipes"
			}
		}
	}
	if n := raiseBacklog(); n != "" {
		if note != "" {
			note += "; "
		}
		note += n
	}
	if b, err := os.ReadFile("/proc/config.gz"); err == nil {
		if kc, err := doctor.ParseKConfig(b); err == nil {
			f.SoftDirty = kc.Enabled("CONFIG_MEM_SOFT_DIRTY")
		}
	}
	return f, note
}

// minBacklog is the per-CPU receive backlog (net.core.netdev_max_backlog)
// the agent makes sure of. Frames crossing a veth wait there, and the
// kernel's default of 1000 drops a restored container's first burst when
// it has many connections (a thousand clients' held frames going in, its
// replies to all of them going out): each lost frame cost its client a
// retransmission timeout of a second or more (CRIU does not restore RTT
// estimates). Raised, never lowered.
const minBacklog = 16384

func raiseBacklog() string {
	const p = "/proc/sys/net/core/netdev_max_backlog"
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	cur, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || cur >= minBacklog {
		return ""
	}
	if err := os.WriteFile(p, []byte(strconv.Itoa(minBacklog)), 0o644); err != nil {
		return "could not raise net.core.netdev_max_backlog (" + err.Error() + "): migrations of containers with many connections may stall clients"
	}
	return fmt.Sprintf("raised net.core.netdev_max_backlog from %d to %d (many connections' frames after a restore)", cur, minBacklog)
}
