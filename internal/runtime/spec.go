package runtime

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// maskedPaths are hidden from the container (runc binds /dev/null over a
// file and mounts an empty read-only tmpfs over a directory).
var maskedPaths = []string{
	"/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
	"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
	"/sys/firmware", "/proc/scsi",
}

var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// spec renders the OCI runtime configuration of a container: its own PID,
// mount, UTS and IPC namespaces, the agent-made network namespace, a cgroup
// per host and container, and the init bind mount.
func (r *Runtime) spec(s Spec) *specs.Spec {
	// CRIU cannot dump MPTCP sockets, which Go >= 1.24 listeners use by
	// default; the container's own --env can override this.
	// A later KEY replaces an earlier one (a process sees only the first).
	// HOME, unless the image or --env sets it, comes from the container's
	// /etc/passwd: runc sets root's, the init another user's (homeFlag).
	env := MergeEnv([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GODEBUG=multipathtcp=0"}, s.Env)
	cwd := s.Cwd
	if cwd == "" {
		cwd = "/"
	}
	caps := append([]string(nil), defaultCaps...)
	return &specs.Spec{
		Version:  specs.Version,
		Hostname: s.Name,
		Annotations: map[string]string{
			"org.criu.config": filepath.Join(r.Dir(s.Name), criuConfName),
		},
		Root: &specs.Root{Path: r.rootfs(s.Name)},
		Process: &specs.Process{
			Args:            initArgs(s),
			Env:             env,
			Cwd:             cwd,
			NoNewPrivileges: true,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
		},
		// /dev/shm is a directory of /dev's tmpfs (the init makes it), not
		// a tmpfs of its own: CRIU archives every tmpfs with tar and gzip
		// on each checkpoint and unpacks it on each restore (~8 ms a mount).
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: InitPath, Type: "bind", Source: r.initPath(), Options: []string{"rbind", "ro"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: r.CgroupParent + "/" + s.Name,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
				{Type: specs.NetworkNamespace, Path: s.NetNS},
			},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			MaskedPaths: append([]string(nil), maskedPaths...),
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
}

// initPath is the file bind-mounted as the container's init: the stable
// copy of the agent's binary, or the binary itself when there is none.
func (r *Runtime) initPath() string {
	if r.Init != "" {
		return r.Init
	}
	return r.Self
}

// MergeEnv joins lists of KEY=VALUE; a later KEY replaces an earlier one
// in place (a process's getenv sees only the first). The image's config
// and the user's --env are merged with it too (internal/oci).
func MergeEnv(lists ...[]string) []string {
	var out []string
	at := map[string]int{}
	for _, l := range lists {
		for _, kv := range l {
			k, _, _ := strings.Cut(kv, "=")
			if i, ok := at[k]; ok {
				out[i] = kv
				continue
			}
			at[k] = len(out)
			out = append(out, kv)
		}
	}
	return out
}

// userFlag, the init's first argument if any, names the uid:gid the init
// switches to before it execs the command: the init itself runs as root,
// to make the container's log file and /dev/shm.
const userFlag = "--coat-user="

// homeFlag, after userFlag, tells the init to set HOME from the
// container's /etc/passwd for the user it becomes: neither the image nor
// --env set it, and runc set it for root, as whom the init runs.
const homeFlag = "--coat-home-from-passwd"

// initArgs is the container process's argv: the init, the user to become
// (if not root) and whether HOME is the init's to set, then the command.
func initArgs(s Spec) []string {
	args := []string{InitPath}
	if s.UID != 0 || s.GID != 0 {
		args = append(args, fmt.Sprintf("%s%d:%d", userFlag, s.UID, s.GID))
		if !slices.ContainsFunc(s.Env, func(e string) bool { return strings.HasPrefix(e, "HOME=") }) {
			args = append(args, homeFlag)
		}
	}
	return append(args, s.Args...)
}

// HomeDir is uid's home directory in an /etc/passwd, as `podman run` and
// `docker run` set HOME when the image does not: the entry's sixth field;
// without an entry, /root for root and / for any other user.
func HomeDir(passwd []byte, uid int) string {
	for _, line := range strings.Split(string(passwd), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 6 && f[2] == strconv.Itoa(uid) && f[5] != "" && !strings.HasPrefix(strings.TrimSpace(line), "#") {
			return f[5]
		}
	}
	if uid == 0 {
		return "/root"
	}
	return "/"
}
