package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/coat-project/coat/internal/names"
)

// InitPath is where the agent's binary appears inside every container.
const InitPath = "/.coat/init"

// LogPath is the container's stdout/stderr file inside its rootfs.
const LogPath = "/.coat/log"

// Runtime manages the containers of one host under StateDir.
type Runtime struct {
	StateDir string // images/, containers/ live here
	Host     string // host name, for messages
	Self     string // this binary, bind-mounted as the container init
	// CgroupParent is where the containers' cgroups go, one per host so
	// that hosts sharing a kernel (the lab) never collide.
	CgroupParent string
	// CgroupRoot is where the cgroup filesystems are mounted; "" is
	// /sys/fs/cgroup (see freeze_linux.go).
	CgroupRoot string
	// Init is the copy of Self that containers get (see installInit).
	Init     string
	criuRun  string // CRIU's cache tmpfs, or "" (see criucache_linux.go)
	maskedOK bool   // maskedDir is mounted (see maskedExternals)
	runc     *runc.Runc
}

// New returns a Runtime whose runc state lives in stateDir/runc.
func New(stateDir, host, self string) (*Runtime, error) {
	for _, d := range []string{"images", "containers", "runc"} {
		if err := os.MkdirAll(filepath.Join(stateDir, d), 0o700); err != nil {
			return nil, err
		}
	}
	init, err := installInit(stateDir, self)
	if err != nil {
		return nil, err
	}
	r := &Runtime{
		StateDir:     stateDir,
		Host:         host,
		Self:         self,
		Init:         init,
		CgroupParent: "/coat/" + host,
		runc:         &runc.Runc{Command: "runc", Root: filepath.Join(stateDir, "runc")},
	}
	return r, nil
}

// Spec is what a container runs.
type Spec struct {
	Name  string
	Image string
	Args  []string
	Env   []string
	Cwd   string // working directory; "" is /
	UID   uint32
	GID   uint32
	NetNS string // path of the network namespace
}

// ImageDir is the rootfs of a flattened image on this host (see
// layers.go): under the image's key (names.Image.Key), never under its
// name as given.
func (r *Runtime) ImageDir(image string) (string, error) {
	key, err := names.ImageKey(image)
	if err != nil {
		return "", err
	}
	return filepath.Join(r.StateDir, "images", key, "rootfs"), nil
}

// HasImage reports whether image is a valid reference present on this
// host, with all its layers.
func (r *Runtime) HasImage(image string) bool {
	_, err := r.Lowers(image)
	return err == nil
}

// Dir is the container's directory (bundle, upper and work layers).
func (r *Runtime) Dir(name string) string { return filepath.Join(r.StateDir, "containers", name) }

// UpperDir holds the container's own writes.
func (r *Runtime) UpperDir(name string) string { return filepath.Join(r.Dir(name), "upper") }

func (r *Runtime) rootfs(name string) string { return filepath.Join(r.Dir(name), "rootfs") }

// LogFile is the host path of the container's output.
func (r *Runtime) LogFile(name string) string {
	return filepath.Join(r.UpperDir(name), strings.TrimPrefix(LogPath, "/"))
}

// Prepare mounts the container's rootfs and writes its bundle. It is
// idempotent: an already mounted rootfs is kept, so a restore can reuse a
// received upper layer.
func (r *Runtime) Prepare(s Spec) error {
	if err := names.Container(s.Name); err != nil {
		return err
	}
	if _, err := names.ParseImage(s.Image); err != nil {
		return err
	}
	lowers, err := r.Lowers(s.Image)
	if err != nil {
		return err
	}
	opts, err := overlayOptions(lowers, r.UpperDir(s.Name), filepath.Join(r.Dir(s.Name), "work"))
	if err != nil {
		return fmt.Errorf("image %s: %w", s.Image, err)
	}
	dir := r.Dir(s.Name)
	for _, d := range []string{dir, r.UpperDir(s.Name), filepath.Join(dir, "work"), r.rootfs(s.Name)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := os.Chmod(r.UpperDir(s.Name), 0o755); err != nil {
		return err
	}
	if !mounted(r.rootfs(s.Name)) {
		if err := unix.Mount("overlay", r.rootfs(s.Name), "overlay", 0, opts); err != nil {
			return fmt.Errorf("mount overlay rootfs for %s: %w", s.Name, err)
		}
	}
	if err := r.criuConf(s.Name, false, false, true); err != nil {
		return err
	}
	spec := r.spec(s)
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600)
}

// Start runs a prepared container in the background.
func (r *Runtime) Start(ctx context.Context, name string) error {
	stderr, read, err := r.stderrFile(name)
	if err != nil {
		return err
	}
	defer stderr.Close()
	if _, err := r.runc.Run(ctx, name, r.Dir(name), &runc.CreateOpts{Detach: true, IO: stderr}); err != nil {
		return fmt.Errorf("runc run %s: %w%s%s", name, err, read(), r.lastRuncError())
	}
	return nil
}

// Status is runc's view: "running", "stopped", "paused", or "" if absent.
func (r *Runtime) Status(ctx context.Context, name string) string {
	c, err := r.runc.State(ctx, name)
	if err != nil {
		return ""
	}
	return c.Status
}

// Pid of the container's init process, 0 if not running.
func (r *Runtime) Pid(ctx context.Context, name string) int {
	c, err := r.runc.State(ctx, name)
	if err != nil {
		return 0
	}
	return c.Pid
}

// CheckpointOpts tunes a checkpoint.
type CheckpointOpts struct {
	ImageDir string // where CRIU writes the image
	WorkDir  string // where CRIU writes dump.log
	// LeaveRunning keeps the container running (used for tests/pre-checks).
	LeaveRunning bool
	// AfterFreeze, if set, runs once the container is frozen and before
	// CRIU dumps it (with Slow, or without a cgroup freezer, just
	// before runc runs). An error thaws the container and aborts.
	AfterFreeze func() error
	// Slow leaves freezing to CRIU (first poll after 100 ms): runc's stock
	// behaviour, kept to measure what the fast path saves.
	Slow bool
	// PageServer is where a lazy dump serves memory (CheckpointLazy).
	PageServer string
	lazy       bool
	status     *os.File
}

// Checkpoint dumps the container, established TCP connections included,
// and stops it. On failure the error names CRIU's log.
func (r *Runtime) Checkpoint(ctx context.Context, name string, o CheckpointOpts) error {
	for _, d := range []string{o.ImageDir, o.WorkDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	var actions []runc.CheckpointAction
	if o.LeaveRunning {
		actions = append(actions, runc.LeaveRunning)
	}
	opts := &runc.CheckpointOpts{
		ImagePath:    o.ImageDir,
		WorkDir:      o.WorkDir,
		AllowOpenTCP: true,
		FileLocks:    true,
	}
	lazyOpts(opts, o)
	if err := r.criuConf(name, o.Slow, false, false); err != nil {
		return err
	}
	// Read and marked before the freeze: none of it needs the container
	// stopped.
	netns := ""
	if !o.Slow {
		netns = r.netNSOf(name)
	}
	if netns != "" {
		if err := os.WriteFile(filepath.Join(o.ImageDir, inNetNSMarker), nil, 0o600); err != nil {
			return err
		}
	}
	frozen := false
	if !o.Slow {
		// Freeze it ourselves (cgroup v1 or v2, see freeze_linux.go):
		// CRIU's own freeze polls first after 100 ms. CRIU finds it
		// frozen and proceeds at once.
		switch err := r.freeze(name, true); {
		case errors.Is(err, os.ErrNotExist):
			// No cgroup freezer here: CRIU freezes as usual.
		case err != nil:
			return fmt.Errorf("freeze %s: %w", name, err)
		default:
			frozen = true
		}
	}
	var err error
	if o.AfterFreeze != nil {
		err = o.AfterFreeze()
	}
	if err == nil {
		err = r.withCriuIn(o.Slow, netns, func() error { return r.runc.Checkpoint(ctx, name, opts, actions...) })
	}
	if err != nil && frozen {
		if terr := r.freeze(name, false); terr != nil {
			err = fmt.Errorf("%w; thaw: %v", err, terr)
		}
	}
	if err != nil {
		log := filepath.Join(o.WorkDir, "dump.log")
		return fmt.Errorf("runc checkpoint %s: %w%s (CRIU log: %s)%s", name, err, r.lastRuncError(), log, criuHint(log))
	}
	return nil
}

// criuHint explains, from CRIU's log of a failed dump or restore, a
// failure whose cause the user can remove; "" when the log shows none of
// those.
//
//   - A UNIX socket of the container connected to a process outside it
//     (dump): the server side of a connection accepted from outside
//     belongs to the client's network namespace, where CRIU does not look
//     ("Unix socket N not found"); a connection from the container to a
//     socket outside it is "External socket is used". CRIU cannot move
//     either end.
//   - A UNIX socket that cannot be bound again (restore): a file that is
//     not a socket is at its path on the destination, which can only come
//     from the container's image (the source's upper layer hid it).
func criuHint(log string) string {
	b, err := os.ReadFile(log)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, "Error") {
			continue
		}
		if strings.Contains(line, "unix: Unix socket ") && strings.HasSuffix(line, " not found") ||
			strings.Contains(line, "External socket is used") {
			return "; a UNIX socket of the container is connected to a process outside it (e.g. a client on the host " +
				"using a socket file in its rootfs), and that connection cannot move: close it and migrate again"
		}
		if strings.Contains(line, "Can't get rlimit") && strings.HasSuffix(line, "Operation not permitted") {
			return "; the container runs as a non-root user and CRIU lacks CAP_SYS_RESOURCE on this host " +
				"(it cannot read another user's resource limits): run the container as root (`coat run --user 0`) " +
				"to migrate it here, or run the agent with CAP_SYS_RESOURCE"
		}
		if _, after, ok := strings.Cut(line, "unix: Can't bind id "); ok && strings.HasSuffix(line, "Address already in use") {
			path := after
			if _, p, ok := strings.Cut(after, " addr "); ok {
				path = strings.TrimSuffix(p, ": Address already in use")
			}
			return fmt.Sprintf("; the container's UNIX socket %s cannot be bound again: its image has a file at that path "+
				"(hidden on the source by the socket): remove it from the image, or bind the socket elsewhere", path)
		}
	}
	return ""
}

// RestoreOpts tunes a restore.
type RestoreOpts struct {
	ImageDir string
	WorkDir  string
	// CloseTCP restores established connections closed (CRIU tcp-close):
	// the baseline "traditional" migration that drops them.
	CloseTCP bool
	// Slow: see CheckpointOpts.Slow.
	Slow bool
	// Lazy restores with the memory left to a running LazyDaemon whose
	// work directory is WorkDir.
	Lazy bool
	// BeforeCleanup, if set, is called when the restore failed, before
	// the half-made container is killed: the restored sockets, closing,
	// would send their FIN or RST to the clients unless the caller cuts
	// the container off first.
	BeforeCleanup func()
}

// Restore brings a prepared container back from a checkpoint image.
func (r *Runtime) Restore(ctx context.Context, s Spec, o RestoreOpts) error {
	netns := ""
	if _, err := os.Stat(filepath.Join(o.ImageDir, inNetNSMarker)); err == nil {
		if s.NetNS == "" {
			return fmt.Errorf("restore %s: its image was dumped inside its network namespace, and it has none to restore into", s.Name)
		}
		netns = s.NetNS
	}
	if err := os.MkdirAll(o.WorkDir, 0o700); err != nil {
		return err
	}
	if err := r.criuConf(s.Name, o.Slow, o.CloseTCP, true); err != nil {
		return err
	}
	err := r.withCriuIn(o.Slow, netns, func() error {
		_, err := r.runc.Restore(ctx, s.Name, r.Dir(s.Name), &runc.RestoreOpts{
			CheckpointOpts: runc.CheckpointOpts{
				ImagePath:    o.ImageDir,
				WorkDir:      o.WorkDir,
				AllowOpenTCP: true,
				FileLocks:    true,
				LazyPages:    o.Lazy,
			},
			Detach: true,
		})
		return err
	})
	if err != nil {
		// A failed restore can leave a half-made runc container behind.
		if o.BeforeCleanup != nil {
			o.BeforeCleanup()
		}
		_ = r.runc.Delete(context.WithoutCancel(ctx), s.Name, &runc.DeleteOpts{Force: true})
		log := filepath.Join(o.WorkDir, "restore.log")
		return &RestoreError{Name: s.Name, Log: log, Hint: criuHint(log), Err: fmt.Errorf("%w%s", err, r.lastRuncError())}
	}
	return nil
}

// inNetNSMarker, in an image directory, says CRIU dumped the container from
// inside its network namespace (the package note in doc.go); its restore must
// run inside the destination's namespace too.
const inNetNSMarker = "coat-in-netns"

// netNSOf is the network namespace path in the container's config.json
// ("" if none can be read).
func (r *Runtime) netNSOf(name string) string {
	b, err := os.ReadFile(filepath.Join(r.Dir(name), "config.json"))
	if err != nil {
		return ""
	}
	var spec struct {
		Linux struct {
			Namespaces []struct {
				Type string `json:"type"`
				Path string `json:"path"`
			} `json:"namespaces"`
		} `json:"linux"`
	}
	if json.Unmarshal(b, &spec) != nil {
		return ""
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == "network" {
			return ns.Path
		}
	}
	return ""
}

// RestoreError is a failed restore; Log is CRIU's restore log, Hint what
// the user can do about it ("; ...") if known.
type RestoreError struct {
	Name, Log, Hint string
	Err             error
}

func (e *RestoreError) Error() string {
	return fmt.Sprintf("restore %s: %v (CRIU log: %s)%s", e.Name, e.Err, e.Log, e.Hint)
}

func (e *RestoreError) Unwrap() error { return e.Err }

// criuConf writes the container's CRIU configuration file, which runc
// passes to CRIU through the org.criu.config annotation (runc 1.1 has
// neither --manage-cgroups-mode ignore nor --tcp-close). CRIU reads it
// after runc's own settings. restore says which operation it is for.
//
//   - manage-cgroups=ignore: the container's cgroup is its own, made by runc
//     from config.json on either host, so CRIU need not save and restore
//     its properties (about 80 ms of a dump here). Not with slow.
//   - network-lock=skip: see below. Not with slow.
//   - external mnt[DIR]: the masked directories (see maskedDirs). Not with
//     slow.
//   - tcp-close: restore established connections closed (the traditional
//     migration that drops them).
func (r *Runtime) criuConf(name string, slow, closeTCP, restore bool) error {
	var conf string
	if !slow {
		conf += "manage-cgroups=ignore\n"
		// The agent cuts the container off itself (its veth holds or
		// goes down before the dump), so CRIU's iptables lock is not
		// needed; running iptables to lock and unlock took ~50 ms of a
		// restore, and in a fresh namespace the unlock fails anyway.
		conf += "network-lock=skip\n"
		conf += r.maskedExternals(restore)
	}
	if closeTCP {
		conf += "tcp-close\n"
	}
	return os.WriteFile(filepath.Join(r.Dir(name), criuConfName), []byte(conf), 0o600)
}

// maskedExternals: runc masks a directory of MaskedPaths (/proc/acpi,
// /sys/firmware) with an empty read-only tmpfs of its own, and CRIU would
// archive and unpack each such tmpfs with tar and gzip (three programs
// exec'd per mount and side, ~4 ms each). They are empty and read-only by
// construction, so CRIU is told they are external: the dump records them
// by name, and the restore binds StateDir/masked in their place: an empty
// tmpfs mounted read-only, so that no bind of it can be written whatever
// its mount flags (EnableFastPaths mounts it; without it, tar it is).
func (r *Runtime) maskedExternals(restore bool) string {
	if !r.maskedOK {
		return ""
	}
	if strings.ContainsAny(r.StateDir, " \t\n\"'\\") {
		return "" // not expressible in CRIU's configuration file: tar it is
	}
	var conf string
	for _, p := range maskedPaths {
		if st, err := os.Stat(p); err != nil || !st.IsDir() {
			continue // a file (bound to /dev/null by runc) or absent
		}
		val := p
		if restore {
			val = r.maskedDir()
		}
		conf += fmt.Sprintf("external mnt[%s]:%s\n", p, val)
	}
	return conf
}

// maskedDir is the empty, read-only tmpfs that stands in for masked
// directories after a restore.
func (r *Runtime) maskedDir() string { return filepath.Join(r.StateDir, "masked") }

const criuConfName = "criu.conf"

// Kill stops the container and removes runc's record of it. It is a no-op
// for a container runc does not know.
func (r *Runtime) Kill(ctx context.Context, name string) error {
	if r.Status(ctx, name) == "" {
		return nil
	}
	_ = r.runc.Kill(ctx, name, int(unix.SIGKILL), &runc.KillOpts{All: true})
	if err := r.runc.Delete(ctx, name, &runc.DeleteOpts{Force: true}); err != nil {
		return fmt.Errorf("runc delete %s: %w", name, err)
	}
	return nil
}

// Remove kills the container, unmounts its rootfs and deletes its files.
func (r *Runtime) Remove(ctx context.Context, name string) error {
	if err := r.Kill(ctx, name); err != nil {
		return err
	}
	return r.RemoveFiles(name)
}

// RemoveFiles unmounts the rootfs and deletes the container's directory.
func (r *Runtime) RemoveFiles(name string) error {
	// Every mount there: an interrupted restore can leave more than one
	// stacked on the rootfs.
	for i := 0; i < 64 && mounted(r.rootfs(name)); i++ {
		if err := unix.Unmount(r.rootfs(name), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount rootfs of %s: %w", name, err)
		}
	}
	// A directory that refills while it is removed (seen under load in
	// a storm of migrations: ENOTEMPTY on the container's directory, its
	// entries all removed) gets a few more tries; what stays is named.
	var err error
	for try := 0; try < 5; try++ {
		if err = os.RemoveAll(r.Dir(name)); err == nil || !(errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EBUSY)) {
			break
		}
		time.Sleep(time.Duration(try+1) * 50 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("%w (left: %s)", err, leftEntries(r.Dir(name), 8))
	}
	return nil
}

// leftEntries names up to max paths still under dir, with their mode: what
// a failed removal could not delete or what appeared meanwhile.
func leftEntries(dir string, max int) string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		if len(out) == max {
			return filepath.SkipAll
		}
		mode := "?"
		if info, ierr := d.Info(); ierr == nil {
			mode = info.Mode().String()
		}
		if mounted(p) {
			mode += " (a mount point)"
		}
		out = append(out, strings.TrimPrefix(p, dir+"/")+" "+mode)
		return nil
	})
	if len(out) == 0 {
		return "nothing"
	}
	return strings.Join(out, ", ")
}

// List names the containers runc knows on this host.
func (r *Runtime) List(ctx context.Context) (map[string]string, error) {
	cs, err := r.runc.List(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, c := range cs {
		out[c.ID] = c.Status
	}
	return out, nil
}

// MountInfo is the mount table of the calling thread's mount namespace.
// Not /proc/self's: that is the main thread's, and a goroutine that left
// the host's namespace for CRIU's cache (see criucache_linux.go) and ran on
// the main thread leaves it there for good (Go parks the main thread
// rather than discarding it), so /proc/self would show a private copy that
// no later mount or unmount reaches. The threads that run the agent's
// other goroutines never leave the host's namespace.
func MountInfo() ([]byte, error) {
	b, err := os.ReadFile("/proc/thread-self/mountinfo")
	if errors.Is(err, os.ErrNotExist) { // before Linux 3.17
		return os.ReadFile(fmt.Sprintf("/proc/self/task/%d/mountinfo", unix.Gettid()))
	}
	return b, err
}

// mounted reports whether dir is a mount point (its device differs from its
// parent's, or it is listed in mountinfo).
func mounted(dir string) bool {
	b, err := MountInfo()
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// lastRuncError returns ": MSG" for the last error runc logged, or "".
func (r *Runtime) lastRuncError() string {
	b, err := os.ReadFile(r.runc.Log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i := len(lines) - 1; i >= 0 && i >= len(lines)-20; i-- {
		var e struct{ Level, Msg string }
		if json.Unmarshal([]byte(lines[i]), &e) == nil && e.Level == "error" {
			return ": " + e.Msg
		}
	}
	return ""
}

// fileIO gives runc a file as stderr, so its complaints can be reported
// (the container's init then points its streams elsewhere).
type fileIO struct{ f *os.File }

func (f fileIO) Close() error          { return f.f.Close() }
func (f fileIO) Stdin() io.WriteCloser { return nil }
func (f fileIO) Stdout() io.ReadCloser { return nil }
func (f fileIO) Stderr() io.ReadCloser { return nil }
func (f fileIO) Set(cmd *exec.Cmd)     { cmd.Stderr = f.f }
func (r *Runtime) stderrFile(name string) (fileIO, func() string, error) {
	p := filepath.Join(r.Dir(name), "runc.err")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fileIO{}, nil, err
	}
	return fileIO{f}, func() string {
		b, _ := os.ReadFile(p)
		if s := strings.TrimSpace(string(b)); s != "" {
			return ": " + s
		}
		return ""
	}, nil
}
