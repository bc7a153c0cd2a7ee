package runtime

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func testRuntime(t *testing.T) *Runtime {
	t.Helper()
	self := filepath.Join(t.TempDir(), "coat")
	if err := os.WriteFile(self, []byte("agent binary v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := New(t.TempDir(), "edge-1", self)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

func TestNewCreatesDirs(t *testing.T) {
	r := testRuntime(t)
	for _, d := range []string{"images", "containers", "runc"} {
		st, err := os.Stat(filepath.Join(r.StateDir, d))
		if err != nil || !st.IsDir() {
			t.Errorf("%s: want a directory, got %v", d, err)
		}
	}
	if r.CgroupParent != "/coat/edge-1" {
		t.Errorf("CgroupParent = %q, want /coat/edge-1", r.CgroupParent)
	}
	if r.Host != "edge-1" || filepath.Base(r.Self) != "coat" {
		t.Errorf("Host/Self = %q/%q", r.Host, r.Self)
	}
}

func TestPaths(t *testing.T) {
	r := &Runtime{StateDir: "/state"}
	if got, want := r.Dir("web"), "/state/containers/web"; got != want {
		t.Errorf("Dir = %q, want %q", got, want)
	}
	if got, want := r.UpperDir("web"), "/state/containers/web/upper"; got != want {
		t.Errorf("UpperDir = %q, want %q", got, want)
	}
	if got, want := r.LogFile("web"), "/state/containers/web/upper/.coat/log"; got != want {
		t.Errorf("LogFile = %q, want %q", got, want)
	}
	for img, want := range map[string]string{
		"alpine":        "/state/images/alpine/rootfs",
		"alpine:latest": "/state/images/alpine/rootfs",
		"lab/redis:7.0": "/state/images/lab+redis@7.0/rootfs",
	} {
		if got, err := r.ImageDir(img); err != nil || got != want {
			t.Errorf("ImageDir(%q) = %q, %v; want %q", img, got, err, want)
		}
	}
	// Names as given never reach the filesystem: no path tricks.
	for _, img := range []string{"../containers/a", "/etc", "a/../../b", "..", "a/./b", ""} {
		if got, err := r.ImageDir(img); err == nil {
			t.Errorf("ImageDir(%q) = %q, want an error", img, got)
		}
	}
	// LogFile is LogPath inside the upper layer, where the container's
	// init writes it.
	if !strings.HasSuffix(r.LogFile("x"), LogPath) {
		t.Errorf("LogFile %q does not end in LogPath %q", r.LogFile("x"), LogPath)
	}
}

func TestHasImage(t *testing.T) {
	r := testRuntime(t)
	if r.HasImage("alpine") {
		t.Fatal("HasImage true before import")
	}
	dir, err := r.ImageDir("alpine")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if !r.HasImage("alpine") {
		t.Fatal("HasImage false after the rootfs exists")
	}
}

// An image name that is a path to another container's files is refused
// before anything is made, though the directory it names exists.
func TestPrepareRefusesPathImage(t *testing.T) {
	r := testRuntime(t)
	if err := os.MkdirAll(filepath.Join(r.Dir("victim"), "rootfs"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, img := range []string{"../containers/victim", "/" + r.Dir("victim")} {
		if r.HasImage(img) {
			t.Errorf("HasImage(%q) = true", img)
		}
		err := r.Prepare(Spec{Name: "web", Image: img, Args: []string{"x"}})
		if err == nil || !strings.Contains(err.Error(), "invalid image") {
			t.Errorf("Prepare with image %q: %v", img, err)
		}
	}
	for _, name := range []string{"../victim", "Web", ""} {
		if err := r.Prepare(Spec{Name: name, Image: "alpine", Args: []string{"x"}}); err == nil || !strings.Contains(err.Error(), "invalid name") {
			t.Errorf("Prepare of container %q: %v", name, err)
		}
	}
	if _, err := os.Stat(r.Dir("web")); !os.IsNotExist(err) {
		t.Errorf("Prepare made the container dir before failing: %v", err)
	}
}

func TestPrepareMissingImage(t *testing.T) {
	r := testRuntime(t)
	err := r.Prepare(Spec{Name: "web", Image: "nope", Args: []string{"x"}})
	if err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "edge-1") {
		t.Fatalf("Prepare with a missing image: %v", err)
	}
	if _, err := os.Stat(r.Dir("web")); !os.IsNotExist(err) {
		t.Errorf("Prepare made the container dir before failing: %v", err)
	}
}

func TestSpecCwdAndUser(t *testing.T) {
	r := &Runtime{StateDir: "/state", Self: "/opt/coat"}
	p := r.spec(Spec{Name: "web", Args: []string{"/bin/app"}, Cwd: "/srv", UID: 1000, GID: 50}).Process
	if p.Cwd != "/srv" {
		t.Errorf("Cwd = %q, want /srv", p.Cwd)
	}
	// The init runs as root (it makes the log file and /dev/shm), then
	// becomes the user before it execs the command.
	// HOME set by neither the image nor --env: the init sets the user's.
	if want := []string{InitPath, "--coat-user=1000:50", "--coat-home-from-passwd", "/bin/app"}; !slices.Equal(p.Args, want) {
		t.Errorf("Args = %q, want %q", p.Args, want)
	}
	withHome := r.spec(Spec{Name: "web", Args: []string{"/bin/app"}, UID: 1000, GID: 50, Env: []string{"HOME=/data"}}).Process
	if want := []string{InitPath, "--coat-user=1000:50", "/bin/app"}; !slices.Equal(withHome.Args, want) || !slices.Contains(withHome.Env, "HOME=/data") {
		t.Errorf("with HOME in the env: Args = %q, Env = %q, want %q and HOME=/data", withHome.Args, withHome.Env, want)
	}
	if root := r.spec(Spec{Name: "web", Args: []string{"/bin/app"}}).Process; !slices.Equal(root.Args, []string{InitPath, "/bin/app"}) {
		t.Errorf("as root: Args = %q, want the init and the command (runc sets root's HOME)", root.Args)
	}
	if p.User.UID != 0 || p.User.GID != 0 {
		t.Errorf("User = %+v, want root for the init", p.User)
	}
}

func TestSpec(t *testing.T) {
	r := &Runtime{StateDir: "/state", Self: "/opt/coat", CgroupParent: "/coat/edge-2"}
	s := Spec{
		Name:  "web",
		Image: "alpine",
		Args:  []string{"/bin/sh", "-c", "echo hi"},
		Env:   []string{"FOO=bar", "GODEBUG=multipathtcp=1"},
		NetNS: "/state/netns/web",
	}
	sp := r.spec(s)

	if sp.Hostname != "web" {
		t.Errorf("Hostname = %q", sp.Hostname)
	}
	if sp.Root == nil || sp.Root.Path != "/state/containers/web/rootfs" {
		t.Errorf("Root = %+v", sp.Root)
	}
	if got, want := sp.Annotations["org.criu.config"], "/state/containers/web/criu.conf"; got != want {
		t.Errorf("org.criu.config = %q, want %q", got, want)
	}

	// Namespaces: own PID, IPC, UTS, mount; network by path.
	ns := map[specs.LinuxNamespaceType]string{}
	for _, n := range sp.Linux.Namespaces {
		if _, dup := ns[n.Type]; dup {
			t.Errorf("namespace %s listed twice", n.Type)
		}
		ns[n.Type] = n.Path
	}
	for _, typ := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace} {
		p, ok := ns[typ]
		if !ok {
			t.Errorf("no %s namespace", typ)
		} else if p != "" {
			t.Errorf("%s namespace has path %q, want a new one", typ, p)
		}
	}
	if p, ok := ns[specs.NetworkNamespace]; !ok || p != "/state/netns/web" {
		t.Errorf("network namespace = %q (present %v), want /state/netns/web", p, ok)
	}
	if _, ok := ns[specs.UserNamespace]; ok {
		t.Error("unexpected user namespace")
	}
	if len(ns) != 5 {
		t.Errorf("got %d namespaces, want 5: %v", len(ns), ns)
	}

	if got, want := sp.Linux.CgroupsPath, "/coat/edge-2/web"; got != want {
		t.Errorf("CgroupsPath = %q, want %q", got, want)
	}

	// The init bind mount.
	var initMount *specs.Mount
	for i := range sp.Mounts {
		if sp.Mounts[i].Destination == InitPath {
			if initMount != nil {
				t.Errorf("%s mounted twice", InitPath)
			}
			initMount = &sp.Mounts[i]
		}
	}
	if initMount == nil {
		t.Fatalf("no mount at %s", InitPath)
	}
	if initMount.Source != "/opt/coat" || initMount.Type != "bind" {
		t.Errorf("init mount = %+v, want a bind of /opt/coat", *initMount)
	}
	if !slices.Contains(initMount.Options, "ro") || !slices.Contains(initMount.Options, "rbind") {
		t.Errorf("init mount options = %v, want rbind and ro", initMount.Options)
	}
	if InitPath != "/.coat/init" {
		t.Errorf("InitPath = %q", InitPath)
	}

	// Process.
	p := sp.Process
	if want := append([]string{InitPath}, s.Args...); !slices.Equal(p.Args, want) {
		t.Errorf("Args = %q, want %q", p.Args, want)
	}
	if p.Cwd != "/" || !p.NoNewPrivileges {
		t.Errorf("Cwd = %q, NoNewPrivileges = %v", p.Cwd, p.NoNewPrivileges)
	}
	idx := func(prefix string) int {
		return slices.IndexFunc(p.Env, func(e string) bool { return strings.HasPrefix(e, prefix) })
	}
	if i := idx("PATH="); i < 0 || !strings.Contains(p.Env[i], "/usr/bin") {
		t.Errorf("Env has no usable PATH: %q", p.Env)
	}
	// The user's env replaces a default of the same name in place (a
	// process sees only the first value of a variable), and adds the rest
	// after the defaults, in order.
	if slices.Contains(p.Env, "GODEBUG=multipathtcp=0") {
		t.Errorf("Env keeps the default GODEBUG the user replaced: %q", p.Env)
	}
	if got := slices.Index(p.Env, "GODEBUG=multipathtcp=1"); got != 1 {
		t.Errorf("user's GODEBUG at %d, want 1 (in place of the default): %q", got, p.Env)
	}
	if p.Env[len(p.Env)-1] != "FOO=bar" || len(p.Env) != 3 {
		t.Errorf("Env = %q, want the two defaults (GODEBUG replaced) then FOO=bar", p.Env)
	}
	// HOME comes from the container's /etc/passwd (runc, the init).
	if idx("HOME=") >= 0 {
		t.Errorf("Env sets HOME: %q, want it left to runc and the init", p.Env)
	}
	if d := r.spec(Spec{Name: "web"}).Process.Env; !slices.Contains(d, "GODEBUG=multipathtcp=0") {
		t.Errorf("default Env lacks GODEBUG=multipathtcp=0: %q", d)
	}

	// Capabilities: the three sets agree, no CAP_SYS_ADMIN.
	c := p.Capabilities
	if c == nil || !slices.Equal(c.Bounding, c.Effective) || !slices.Equal(c.Bounding, c.Permitted) || len(c.Bounding) == 0 {
		t.Errorf("Capabilities = %+v", c)
	} else if slices.Contains(c.Bounding, "CAP_SYS_ADMIN") {
		t.Error("CAP_SYS_ADMIN granted")
	}

	// Devices denied by default.
	if sp.Linux.Resources == nil || len(sp.Linux.Resources.Devices) == 0 || sp.Linux.Resources.Devices[0].Allow {
		t.Errorf("device cgroup does not deny by default: %+v", sp.Linux.Resources)
	}
}

// The spec must not share or alter the caller's slices.
func TestSpecDoesNotAliasInput(t *testing.T) {
	r := &Runtime{StateDir: "/s", Self: "/c", CgroupParent: "/coat/h"}
	args := make([]string, 1, 8)
	args[0] = "a"
	env := make([]string, 1, 8)
	env[0] = "X=1"
	s1 := r.spec(Spec{Name: "one", Args: args, Env: env})
	s2 := r.spec(Spec{Name: "two", Args: args, Env: env})
	s1.Process.Args[1] = "changed"
	s1.Process.Env[len(s1.Process.Env)-1] = "X=changed"
	s1.Process.Capabilities.Bounding[0] = "CAP_CHANGED"
	if args[0] != "a" || env[0] != "X=1" {
		t.Errorf("caller slices changed: %q %q", args, env)
	}
	if s2.Process.Args[1] != "a" || s2.Process.Env[len(s2.Process.Env)-1] != "X=1" {
		t.Errorf("specs share slices: %q %q", s2.Process.Args, s2.Process.Env)
	}
	if s2.Process.Capabilities.Bounding[0] == "CAP_CHANGED" || defaultCaps[0] == "CAP_CHANGED" {
		t.Error("specs share the capability list")
	}
}

// criuConf: the fast path ignores cgroup properties (and may add other
// fast-path options), slow keeps CRIU's stock behaviour, and closeTCP adds
// tcp-close.
func TestCriuConf(t *testing.T) {
	r := &Runtime{StateDir: t.TempDir()}
	if err := os.MkdirAll(r.Dir("web"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, slow := range []bool{false, true} {
		for _, closeTCP := range []bool{false, true} {
			if err := r.criuConf("web", slow, closeTCP, false); err != nil {
				t.Fatalf("criuConf(slow=%v, closeTCP=%v): %v", slow, closeTCP, err)
			}
			path := filepath.Join(r.Dir("web"), "criu.conf")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			conf := string(b)
			if conf != "" && !strings.HasSuffix(conf, "\n") {
				t.Errorf("criu.conf %q does not end in a newline", conf)
			}
			lines := strings.Split(strings.TrimSuffix(conf, "\n"), "\n")
			has := func(l string) bool { return slices.Contains(lines, l) }
			if got := has("manage-cgroups=ignore"); got == slow {
				t.Errorf("slow=%v closeTCP=%v: manage-cgroups=ignore present=%v in %q", slow, closeTCP, got, conf)
			}
			if got := has("tcp-close"); got != closeTCP {
				t.Errorf("slow=%v closeTCP=%v: tcp-close present=%v in %q", slow, closeTCP, got, conf)
			}
			if slow {
				// Stock CRIU behaviour: nothing but what closeTCP asks for.
				want := ""
				if closeTCP {
					want = "tcp-close\n"
				}
				if conf != want {
					t.Errorf("slow, closeTCP=%v: criu.conf %q, want %q", closeTCP, conf, want)
				}
			}
			// The annotation names this very file.
			if got := r.spec(Spec{Name: "web"}).Annotations["org.criu.config"]; got != path {
				t.Errorf("annotation %q != criu.conf %q", got, path)
			}
		}
	}
}

func TestCriuConfNoDir(t *testing.T) {
	r := &Runtime{StateDir: t.TempDir()}
	if err := r.criuConf("missing", false, false, false); err == nil {
		t.Fatal("criuConf without the container dir: want an error")
	}
}

func TestRestoreError(t *testing.T) {
	inner := os.ErrPermission
	e := &RestoreError{Name: "web", Log: "/w/restore.log", Err: inner}
	if !strings.Contains(e.Error(), "web") || !strings.Contains(e.Error(), "/w/restore.log") {
		t.Errorf("Error() = %q", e.Error())
	}
	if e.Unwrap() != inner {
		t.Error("Unwrap does not return Err")
	}
}

func TestMountedAndLastRuncError(t *testing.T) {
	if mounted(t.TempDir()) {
		t.Error("a fresh temp dir reported mounted")
	}
	if !mounted("/") {
		t.Error("/ not reported mounted")
	}
	r := testRuntime(t)
	r.runc.Log = filepath.Join(r.StateDir, "runc.log")
	if got := r.lastRuncError(); got != "" {
		t.Errorf("no log: got %q", got)
	}
	log := `{"level":"info","msg":"starting"}
{"level":"error","msg":"first"}
{"level":"error","msg":"container_linux.go: boom"}
{"level":"warning","msg":"later"}
not json
`
	if err := os.WriteFile(r.runc.Log, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, want := r.lastRuncError(), ": container_linux.go: boom"; got != want {
		t.Errorf("lastRuncError = %q, want %q", got, want)
	}
}

func TestIsInit(t *testing.T) {
	if IsInit() {
		t.Fatalf("IsInit() true in a test binary (os.Args[0] = %q)", os.Args[0])
	}
}

// Masked directories are external to CRIU on the fast path: named by their
// own path on a dump, bound to the empty read-only StateDir/masked on a
// restore; masked files (runc binds /dev/null) and the slow path are left
// alone.
func TestCriuConfMaskedDirs(t *testing.T) {
	r := &Runtime{StateDir: t.TempDir(), maskedOK: true}
	if err := os.MkdirAll(r.Dir("web"), 0o700); err != nil {
		t.Fatal(err)
	}
	read := func() []string {
		b, err := os.ReadFile(filepath.Join(r.Dir("web"), "criu.conf"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	var dirs []string
	for _, p := range maskedPaths {
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			dirs = append(dirs, p)
		}
	}
	if len(dirs) == 0 {
		t.Skip("no masked path is a directory on this kernel")
	}
	for _, restore := range []bool{false, true} {
		if err := r.criuConf("web", false, false, restore); err != nil {
			t.Fatal(err)
		}
		lines := read()
		for _, d := range dirs {
			want := "external mnt[" + d + "]:" + d
			if restore {
				want = "external mnt[" + d + "]:" + filepath.Join(r.StateDir, "masked")
			}
			if !slices.Contains(lines, want) {
				t.Errorf("restore=%v: %q missing from %q", restore, want, lines)
			}
		}
		for _, l := range lines {
			if strings.HasPrefix(l, "external mnt[/proc/kcore]") {
				t.Errorf("masked file made external: %q", l)
			}
		}
		if err := r.criuConf("web", true, false, restore); err != nil {
			t.Fatal(err)
		}
		for _, l := range read() {
			if strings.HasPrefix(l, "external") {
				t.Errorf("slow path has %q", l)
			}
		}
	}
	// A state dir CRIU's configuration syntax cannot carry: no externals.
	r2 := &Runtime{StateDir: filepath.Join(t.TempDir(), "a b"), maskedOK: true}
	if got := r2.maskedExternals(true); got != "" {
		t.Errorf("state dir with a space: %q, want none", got)
	}
	// No stand-in mounted: no externals.
	r3 := &Runtime{StateDir: r.StateDir}
	if got := r3.maskedExternals(true); got != "" {
		t.Errorf("without the stand-in tmpfs: %q, want none", got)
	}
}

// Containers get a copy of the agent's binary named by its content: it does
// not change when the agent's binary is replaced (CRIU cannot checkpoint a
// bind mount whose source was deleted), a new build gets a new copy, and
// copies no container uses are removed.
func TestInstallInit(t *testing.T) {
	state := t.TempDir()
	self := filepath.Join(t.TempDir(), "coat")
	write := func(s string) {
		// Replace, as a rebuild does: a new file under the old name.
		tmp := self + ".new"
		if err := os.WriteFile(tmp, []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, self); err != nil {
			t.Fatal(err)
		}
	}
	write("agent binary v1")
	p1, err := installInit(state, self)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p1); string(b) != "agent binary v1" {
		t.Fatalf("copy holds %q", b)
	}
	if st, _ := os.Stat(p1); st.Mode().Perm() != 0o555 {
		t.Errorf("copy mode %v, want 0555", st.Mode().Perm())
	}
	if again, _ := installInit(state, self); again != p1 {
		t.Errorf("same binary, new copy: %s != %s", again, p1)
	}
	// A container made with v1 keeps its copy through the upgrade.
	dir := filepath.Join(state, "containers", "web")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"mounts":[{"source":"`+p1+`"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	write("agent binary v2")
	p2, err := installInit(state, self)
	if err != nil {
		t.Fatal(err)
	}
	if p2 == p1 {
		t.Fatal("a new build got the old copy")
	}
	if b, _ := os.ReadFile(p1); string(b) != "agent binary v1" {
		t.Errorf("v1 copy changed or went while a container uses it: %q", b)
	}
	// Once no container names v1, the next start removes it.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := installInit(state, self); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p1); !os.IsNotExist(err) {
		t.Errorf("unused v1 copy still there: %v", err)
	}
	if _, err := os.Stat(p2); err != nil {
		t.Errorf("current copy gone: %v", err)
	}
	// The spec binds the copy.
	r := &Runtime{StateDir: state, Self: self, Init: p2}
	for _, m := range r.spec(Spec{Name: "web"}).Mounts {
		if m.Destination == InitPath && m.Source != p2 {
			t.Errorf("init mount source %q, want %q", m.Source, p2)
		}
	}
}

func TestHomeDir(t *testing.T) {
	passwd := []byte("root:x:0:0:root:/root:/bin/sh\n# app:x:1000:1000::/nope:/bin/sh\napp:x:1000:1000::/srv:/bin/sh\nnohome:x:1001:1001:::/bin/sh\n")
	for _, c := range []struct {
		passwd []byte
		uid    int
		want   string
	}{
		{passwd, 0, "/root"},
		{passwd, 1000, "/srv"},
		{passwd, 1001, "/"}, // an entry without a home
		{passwd, 4242, "/"}, // no entry
		{nil, 0, "/root"},   // no /etc/passwd
		{[]byte("garbage"), 1000, "/"},
	} {
		if got := HomeDir(c.passwd, c.uid); got != c.want {
			t.Errorf("HomeDir(uid %d) = %q, want %q", c.uid, got, c.want)
		}
	}
}
