package doctor

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io/fs"
	"os/exec"
	"strings"
	"testing"
)

// fakeEnv is a machine made of maps.
type fakeEnv struct {
	euid  int
	files map[string]string
	paths map[string]string // name -> path on PATH
	cmds  map[string]string // "name args..." -> output; missing: fails
	fails map[string]bool   // commands that print their output and fail
}

func (f *fakeEnv) Run(_ context.Context, name string, args ...string) (string, error) {
	key := strings.Join(append([]string{name}, args...), " ")
	out, ok := f.cmds[key]
	if !ok || f.fails[key] {
		return out, errors.New("exit status 1")
	}
	return out, nil
}

func (f *fakeEnv) ReadFile(path string) ([]byte, error) {
	if s, ok := f.files[path]; ok {
		return []byte(s), nil
	}
	return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
}

func (f *fakeEnv) Euid() int { return f.euid }

func (f *fakeEnv) LookPath(file string) (string, error) {
	if p, ok := f.paths[file]; ok {
		return p, nil
	}
	return "", &exec.Error{Name: file, Err: exec.ErrNotFound}
}

const sampleConfig = `#
# Automatically generated file; DO NOT EDIT.
CONFIG_LOCALVERSION="-test"
CONFIG_NET_NS=y
CONFIG_CHECKPOINT_RESTORE=y
# CONFIG_MEM_SOFT_DIRTY is not set
CONFIG_USERFAULTFD=y
CONFIG_NF_TABLES=m
CONFIG_BRIDGE=y
CONFIG_VXLAN=m
CONFIG_VETH=y
CONFIG_OVERLAY_FS=y
CONFIG_HZ=250
`

func gz(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	if _, err := w.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// healthy is this lab's machine: root, CRIU 4.2.1, runc 1.1.5, no soft-dirty.
func healthy(t *testing.T) *fakeEnv {
	return &fakeEnv{
		euid: 0,
		files: map[string]string{
			"/proc/config.gz":            gz(t, sampleConfig),
			"/proc/sys/kernel/osrelease": "6.18.44\n",
			"/proc/self/mountinfo": "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n" +
				"37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n",
		},
		paths: map[string]string{"criu": "/usr/local/bin/criu", "runc": "/usr/sbin/runc",
			"iperf3": "/usr/bin/iperf3", "sockperf": "/usr/bin/sockperf"},
		cmds: map[string]string{
			"criu --version": "Version: 4.2.1\n",
			"criu check":     "Looks good.\n",
			"runc --version": "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n",
		},
	}
}

func byName(t *testing.T, rs []Result, name string) Result {
	t.Helper()
	for _, r := range rs {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no result %q in %+v", name, rs)
	return Result{}
}

func TestHealthy(t *testing.T) {
	rs := Check(context.Background(), healthy(t))
	if n := Failed(rs); n != 0 {
		t.Fatalf("%d failed: %+v", n, rs)
	}
	for _, name := range []string{"root", "criu", "criu check", "runc", "VXLAN", "overlayfs", "cgroups", "freezer"} {
		if r := byName(t, rs, name); r.Status != OK {
			t.Errorf("%s: %+v, want ok", name, r)
		}
	}
	if r := byName(t, rs, "criu"); !strings.Contains(r.Detail, "4.2.1") {
		t.Errorf("criu detail %q", r.Detail)
	}
	if r := byName(t, rs, "runc"); !strings.Contains(r.Detail, "1.1.5+ds1") {
		t.Errorf("runc detail %q", r.Detail)
	}
	if r := byName(t, rs, "VXLAN"); r.Detail != "CONFIG_VXLAN=m (module)" {
		t.Errorf("VXLAN detail %q", r.Detail)
	}
}

func TestCRIUTooOld(t *testing.T) {
	env := healthy(t)
	env.cmds["criu --version"] = "Version: 3.17.1\n"
	env.cmds["criu check"] = "Error (criu/vdso.c:...): vDSO mismatch\n"
	env.fails = map[string]bool{"criu check": true}
	rs := Check(context.Background(), env)
	r := byName(t, rs, "criu")
	if r.Status != Fail || !strings.Contains(r.Detail, "3.17.1") {
		t.Fatalf("criu: %+v", r)
	}
	for _, s := range []string{"3.17", "6.13", "vDSO", "4.2", "TCP sockets", "6.16", "make deps", "install-deps.sh"} {
		if !strings.Contains(r.Hint, s) {
			t.Errorf("hint lacks %q: %s", s, r.Hint)
		}
	}
	if c := byName(t, rs, "criu check"); c.Status != Fail || c.Hint != criuHint {
		t.Errorf("criu check: %+v", c)
	}
	if n := Failed(rs); n != 2 {
		t.Errorf("Failed = %d, want 2", n)
	}
}

func TestCRIUMissing(t *testing.T) {
	env := healthy(t)
	delete(env.paths, "criu")
	rs := Check(context.Background(), env)
	if r := byName(t, rs, "criu"); r.Status != Fail || !strings.Contains(r.Hint, "make deps") {
		t.Fatalf("criu: %+v", r)
	}
}

func TestCRIUVersions(t *testing.T) {
	for out, want := range map[string]Status{
		"Version: 4.2\n": OK, "Version: 4.2.1\nGitID: v4.2.1\n": OK, "Version: 4.10\n": OK,
		"Version: 5.0\n": OK, "Version: 4.1.1\n": Fail, "Version: 3.17\n": Fail, "garbage\n": Fail,
	} {
		env := healthy(t)
		env.cmds["criu --version"] = out
		if r := checkCRIU(context.Background(), env)[0]; r.Status != want {
			t.Errorf("%q: %+v, want %s", out, r, want)
		}
	}
}

func TestSoftDirtyMissing(t *testing.T) {
	rs := Check(context.Background(), healthy(t))
	r := byName(t, rs, "soft-dirty")
	if r.Status != Warn {
		t.Fatalf("soft-dirty: %+v, want warn", r)
	}
	if !strings.Contains(r.Hint, "--strategy pre-copy is refused") {
		t.Errorf("hint: %s", r.Hint)
	}
	s := byName(t, rs, "strategies")
	if s.Status != OK || !strings.Contains(s.Detail, "post-copy") || !strings.Contains(s.Hint, "no pre-copy") {
		t.Errorf("strategies: %+v, want post-copy available and pre-copy not", s)
	}
}

func TestNonRoot(t *testing.T) {
	env := healthy(t)
	env.euid = 1000
	env.fails = map[string]bool{"criu check": true}
	rs := Check(context.Background(), env)
	if r := byName(t, rs, "root"); r.Status != Fail || !strings.Contains(r.Detail, "1000") {
		t.Fatalf("root: %+v", r)
	}
	if r := byName(t, rs, "criu check"); r.Status != Fail || !strings.Contains(r.Hint, "root") {
		t.Errorf("criu check: %+v", r)
	}
}

func TestRequiredKernelFeatureMissing(t *testing.T) {
	env := healthy(t)
	env.files["/proc/config.gz"] = gz(t, strings.Replace(sampleConfig, "CONFIG_VXLAN=m", "# CONFIG_VXLAN is not set", 1))
	rs := Check(context.Background(), env)
	if r := byName(t, rs, "VXLAN"); r.Status != Fail || !strings.Contains(r.Hint, "overlay") {
		t.Fatalf("VXLAN: %+v", r)
	}
	if n := Failed(rs); n != 1 {
		t.Errorf("Failed = %d, want 1", n)
	}
}

func TestParseKConfigGzip(t *testing.T) {
	c, err := ParseKConfig([]byte(gz(t, sampleConfig)))
	if err != nil {
		t.Fatal(err)
	}
	for opt, want := range map[string]string{"CONFIG_NET_NS": "y", "CONFIG_VXLAN": "m",
		"CONFIG_MEM_SOFT_DIRTY": "n", "CONFIG_LOCALVERSION": "-test", "CONFIG_HZ": "250", "CONFIG_NOPE": ""} {
		if c[opt] != want {
			t.Errorf("%s = %q, want %q", opt, c[opt], want)
		}
	}
	if !c.Enabled("CONFIG_VXLAN") || c.Enabled("CONFIG_MEM_SOFT_DIRTY") || c.Enabled("CONFIG_NOPE") {
		t.Error("Enabled wrong")
	}
	if _, err := ParseKConfig([]byte{0x1f, 0x8b, 0}); err == nil {
		t.Error("truncated gzip parsed")
	}
}

func TestLoadKConfigBootFallback(t *testing.T) {
	env := healthy(t)
	delete(env.files, "/proc/config.gz")
	env.files["/boot/config-6.18.44"] = sampleConfig
	c, src, err := LoadKConfig(env, "6.18.44")
	if err != nil || src != "/boot/config-6.18.44" || c["CONFIG_VETH"] != "y" {
		t.Fatalf("LoadKConfig = %v, %q, %v", c, src, err)
	}
}

func TestProbeWithoutConfig(t *testing.T) {
	env := healthy(t)
	delete(env.files, "/proc/config.gz")
	env.files["/proc/self/ns/net"] = ""
	env.files["/proc/sys/kernel/ns_last_pid"] = "1\n"
	env.files["/proc/filesystems"] = "nodev\tproc\nnodev\toverlay\n"
	env.files["/proc/modules"] = "vxlan 139264 0 - Live 0x0\n"
	env.files["/lib/modules/6.18.44/modules.builtin"] = "kernel/net/bridge/bridge.ko\n"
	env.files["/lib/modules/6.18.44/modules.dep"] = "kernel/drivers/net/veth.ko:\n"
	rs := Check(context.Background(), env)
	if n := Failed(rs); n != 0 {
		t.Fatalf("%d failed: %+v", n, rs)
	}
	if r := byName(t, rs, "kernel"); r.Status != Warn {
		t.Errorf("kernel: %+v", r)
	}
	for _, name := range []string{"network namespaces", "VXLAN", "bridge", "veth", "overlayfs", "checkpoint/restore"} {
		if r := byName(t, rs, name); r.Status != OK {
			t.Errorf("%s: %+v", name, r)
		}
	}
	// criu's own test says soft-dirty is off; nf_tables is in no list.
	for _, name := range []string{"soft-dirty", "nftables", "userfaultfd"} {
		if r := byName(t, rs, name); r.Status != Warn {
			t.Errorf("%s: %+v", name, r)
		}
	}
}

// The freezer the agent uses: the one internal/runtime picks.
func TestFreezer(t *testing.T) {
	env := healthy(t)
	for _, tc := range []struct {
		mountinfo string
		status    Status
		detail    string
	}{
		{env.files["/proc/self/mountinfo"], OK, "cgroup v1 freezer at /sys/fs/cgroup/freezer: the agent freezes containers itself (freezer.state)"},
		{"30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n", OK, "cgroup v2 at /sys/fs/cgroup: the agent freezes containers itself (cgroup.freeze)"},
		// Hybrid: cgroup2 at /sys/fs/cgroup/unified has no say, the v1 freezer has.
		{env.files["/proc/self/mountinfo"] + "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n", OK, "cgroup v1 freezer"},
		// Hybrid without a freezer hierarchy: CRIU's freeze.
		{"31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n", Warn, "CRIU freezes containers"},
		// The last mount on a point is the one seen.
		{"30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n31 30 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n", Warn, "none at /sys/fs/cgroup"},
		{"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n", Warn, "looking first after 100 ms"},
	} {
		env.files["/proc/self/mountinfo"] = tc.mountinfo
		r := checkFreezer(env)
		if r.Status != tc.status || !strings.Contains(r.Detail, tc.detail) {
			t.Errorf("mountinfo %q: %+v, want %s with %q", tc.mountinfo, r, tc.status, tc.detail)
		}
		if r.Status == Warn && !strings.Contains(r.Hint, "mount cgroup2 on /sys/fs/cgroup") {
			t.Errorf("hint %q", r.Hint)
		}
	}
}

func TestCgroupsMissing(t *testing.T) {
	env := healthy(t)
	env.files["/proc/self/mountinfo"] = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
	if r := checkCgroups(env); r.Status != Warn {
		t.Errorf("cgroups: %+v", r)
	}
	env.files["/proc/self/mountinfo"] = "30 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
	if r := checkCgroups(env); r.Status != OK || r.Detail != "v2 at /sys/fs/cgroup" {
		t.Errorf("cgroups: %+v", r)
	}
}

// The conntrack table is reported, whatever its size (the agent's dumps
// skip CRIU's walk of it); an unreadable count warns.
func TestConntrack(t *testing.T) {
	env := healthy(t)
	for _, tt := range []struct {
		buckets string
		want    Status
	}{
		{"262144\n", OK}, {"16384\n", OK}, {"", OK}, {"lots\n", Warn},
	} {
		delete(env.files, "/proc/sys/net/netfilter/nf_conntrack_buckets")
		if tt.buckets != "" {
			env.files["/proc/sys/net/netfilter/nf_conntrack_buckets"] = tt.buckets
		}
		r := checkConntrack(env)
		if r.Status != tt.want {
			t.Errorf("buckets %q: %+v, want %s", tt.buckets, r, tt.want)
		}
		if tt.buckets == "262144\n" && !strings.Contains(r.Detail, "262144") {
			t.Errorf("the size is not reported: %+v", r)
		}
	}
}

func TestPrint(t *testing.T) {
	var b bytes.Buffer
	err := Print(&b, []Result{ok("root", "running as root"), fail("criu", "version 3.17", "run make deps"),
		warn("soft-dirty", "missing", "no pre-copy")})
	if err != nil {
		t.Fatal(err)
	}
	want := "[ ok ] root        running as root\n" +
		"[FAIL] criu        version 3.17\n" +
		"       run make deps\n" +
		"[warn] soft-dirty  missing\n" +
		"       no pre-copy\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestLinkEmulation(t *testing.T) {
	env := healthy(t)
	// This machine's kind: TBF, HTB, ingress, u32, mirred; no netem.
	env.files["/proc/config.gz"] = gz(t, sampleConfig+"CONFIG_PACKET=y\nCONFIG_NET_SCH_TBF=y\nCONFIG_NET_SCH_INGRESS=y\n"+
		"CONFIG_NET_CLS_U32=y\nCONFIG_NET_ACT_MIRRED=y\n# CONFIG_NET_SCH_NETEM is not set\n")
	r := byName(t, Check(context.Background(), env), "link emulation")
	if r.Status != OK || r.Detail != "rate: TBF; delay and loss: COAT's userspace relay (no netem)" {
		t.Errorf("%+v", r)
	}
	// No TBF, no u32: a warning that says what each flag needs.
	env.files["/proc/config.gz"] = gz(t, sampleConfig+"CONFIG_PACKET=y\nCONFIG_NET_SCH_INGRESS=y\nCONFIG_NET_ACT_MIRRED=y\nCONFIG_NET_SCH_NETEM=m\n")
	r = byName(t, Check(context.Background(), env), "link emulation")
	if r.Status != Warn || !strings.Contains(r.Detail, "rate: none") || !strings.Contains(r.Detail, "netem present") ||
		!strings.Contains(r.Hint, "CONFIG_NET_SCH_TBF") || !strings.Contains(r.Hint, "CONFIG_NET_CLS_U32") {
		t.Errorf("%+v", r)
	}
	if n := Failed(Check(context.Background(), env)); n != 0 {
		t.Errorf("link emulation must never fail the doctor: %d failed", n)
	}
}
