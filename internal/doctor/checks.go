package doctor

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// CRIU before this cannot migrate on current kernels.
const criuMinMajor, criuMinMinor = 4, 2

const criuHint = "COAT needs CRIU >= 4.2: Debian 12's criu 3.17 fails on kernels >= 6.13 (vDSO layout) " +
	"and CRIU < 4.2 can't dump TCP sockets on kernels >= 6.16. " +
	"Run `make deps` (scripts/install-deps.sh), which installs CRIU 4.2 privately under /opt/coat/criu " +
	"with a /usr/local/bin/criu wrapper."

func checkRoot(env Env) Result {
	if uid := env.Euid(); uid != 0 {
		return fail("root", fmt.Sprintf("running as uid %d", uid),
			"CRIU, runc and the network setup (namespaces, VXLAN, bridges) need root: run coat as root (sudo).")
	}
	return ok("root", "running as root")
}

var criuVersionRE = regexp.MustCompile(`Version:\s*(\d+)\.(\d+)(?:\.(\d+))?`)

// parseCRIUVersion reads `criu --version` output ("Version: 4.2.1").
func parseCRIUVersion(out string) (version string, major, minor int, ok bool) {
	m := criuVersionRE.FindStringSubmatch(out)
	if m == nil {
		return "", 0, 0, false
	}
	major, _ = strconv.Atoi(m[1])
	minor, _ = strconv.Atoi(m[2])
	return strings.TrimSpace(strings.TrimPrefix(m[0], "Version:")), major, minor, true
}

// checkCRIU checks the criu binary's version and its own kernel check.
func checkCRIU(ctx context.Context, env Env) []Result {
	path, err := env.LookPath("criu")
	if err != nil {
		return []Result{fail("criu", "criu not found on PATH", criuHint)}
	}
	var rs []Result
	out, err := env.Run(ctx, "criu", "--version")
	v, major, minor, found := parseCRIUVersion(out)
	switch {
	case !found && err != nil:
		rs = append(rs, fail("criu", fmt.Sprintf("%s --version failed: %v", path, errDetail(out, err)), criuHint))
	case !found:
		rs = append(rs, fail("criu", fmt.Sprintf("cannot read the version from %q", firstLine(out)), criuHint))
	case major < criuMinMajor || major == criuMinMajor && minor < criuMinMinor:
		rs = append(rs, fail("criu", fmt.Sprintf("version %s (%s) is older than 4.2", v, path), criuHint))
	default:
		rs = append(rs, ok("criu", fmt.Sprintf("version %s (%s)", v, path)))
	}

	out, err = env.Run(ctx, "criu", "check")
	if err == nil && strings.Contains(out, "Looks good") {
		rs = append(rs, ok("criu check", lastLine(out)))
		return rs
	}
	hint := "CRIU's own test of the kernel failed, so it cannot checkpoint containers here; " +
		"run `criu check` to see every problem."
	if env.Euid() != 0 {
		hint = "criu check needs root; run coat doctor as root."
	} else if rs[0].Status == Fail {
		hint = criuHint
	}
	return append(rs, fail("criu check", errDetail(out, err), hint))
}

// errDetail summarises a failed command: its first output line, else err.
func errDetail(out string, err error) string {
	if l := strings.TrimSuffix(firstLine(out), ":"); l != "" {
		return l
	}
	if err != nil {
		return err.Error()
	}
	return "no output"
}

// checkRunc checks that runc runs and reports its version.
func checkRunc(ctx context.Context, env Env) Result {
	const hint = "COAT runs containers with runc (which calls CRIU to checkpoint and restore them): " +
		"apt-get install runc, or run `make deps`."
	path, err := env.LookPath("runc")
	if err != nil {
		return fail("runc", "runc not found on PATH", hint)
	}
	out, err := env.Run(ctx, "runc", "--version")
	if err != nil {
		return fail("runc", fmt.Sprintf("%s --version failed: %s", path, errDetail(out, err)), hint)
	}
	v := strings.TrimPrefix(firstLine(out), "runc version ")
	if v == "" {
		v = "unknown version"
	}
	return ok("runc", fmt.Sprintf("version %s (%s)", v, path))
}

// checkTools checks the optional tools the lab and benchmarks use.
func checkTools(env Env) []Result {
	var rs []Result
	for _, t := range []struct{ name, use string }{
		{"iperf3", "throughput benchmarks"},
		{"sockperf", "latency benchmarks"},
	} {
		path, err := env.LookPath(t.name)
		if err != nil {
			rs = append(rs, warn(t.name, "not found on PATH", fmt.Sprintf(
				"`coat lab up` builds the %s image from the host's binary for %s; "+
					"without it that image is missing (apt-get install %s, or `make deps`).", t.name, t.use, t.name)))
			continue
		}
		rs = append(rs, ok(t.name, path))
	}
	return append(rs, checkCgroups(env), checkFreezer(env), checkConntrack(env))
}

// checkConntrack reports the host's conntrack hash table. CRIU dumps a
// network namespace's conntrack entries (and expectations) whenever it
// checkpoints from outside it, even the external namespace of a container,
// and each such dump walks the kernel's whole, host-wide table, empty or
// not: ~9 ms per walk at this VM's 262144 buckets, twice per freeze. The
// agent's dumps run inside the container's namespace and skip it (see
// internal/runtime's package note); only runc's stock path (--slow, the
// bench's baseline) still walks it. So the size is reported, not warned
// about.
func checkConntrack(env Env) Result {
	const name = "conntrack"
	b, err := env.ReadFile("/proc/sys/net/netfilter/nf_conntrack_buckets")
	if err != nil {
		return ok(name, "no conntrack table: nothing for CRIU to walk")
	}
	var n int
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &n); err != nil {
		return warn(name, fmt.Sprintf("unreadable bucket count %q", strings.TrimSpace(string(b))), "")
	}
	return ok(name, fmt.Sprintf("%d hash buckets; checkpoints skip CRIU's walk of the table (they run inside the container's network namespace)", n))
}

// checkCgroups looks for a cgroup v1 freezer or a cgroup v2 mount, which
// runc uses to freeze a container while CRIU dumps it.
func checkCgroups(env Env) Result {
	const name = "cgroups"
	b, err := env.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return warn(name, fmt.Sprintf("cannot read mounts: %v", err),
			"runc freezes containers through cgroups while CRIU dumps them; check that cgroups are mounted.")
	}
	var found []string
	for l := range strings.Lines(string(b)) {
		// mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS] - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		switch {
		case g[0] == "cgroup2":
			found = append(found, "v2 at "+f[4])
		case g[0] == "cgroup" && hasOpt(g[2], "freezer"):
			found = append(found, "v1 freezer at "+f[4])
		}
	}
	if len(found) == 0 {
		return warn(name, "no cgroup v1 freezer or cgroup v2 mounted",
			"runc freezes a container through its cgroup while CRIU dumps it; "+
				"mount cgroup2 on /sys/fs/cgroup (or a v1 freezer hierarchy).")
	}
	return ok(name, strings.Join(found, ", "))
}

// checkFreezer says which freezer the agent uses to freeze a container
// before CRIU dumps it, decided as internal/runtime decides it
// (DetectFreezer): cgroup2 mounted at /sys/fs/cgroup (cgroup.freeze), else
// a v1 freezer hierarchy at /sys/fs/cgroup/freezer (freezer.state), else
// none, and CRIU freezes, looking first after 100 ms.
func checkFreezer(env Env) Result {
	const name = "freezer"
	b, err := env.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return warn(name, fmt.Sprintf("cannot read mounts: %v", err), "")
	}
	const root, v1 = "/sys/fs/cgroup", "/sys/fs/cgroup/freezer"
	fs := map[string]string{} // mount point -> "FSTYPE SUPEROPTS" of the last (visible) mount
	for l := range strings.Lines(string(b)) {
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if ok && len(f) >= 5 && len(g) >= 3 && (f[4] == root || f[4] == v1) {
			fs[f[4]] = g[0] + " " + g[2]
		}
	}
	if strings.HasPrefix(fs[root], "cgroup2 ") {
		return ok(name, "cgroup v2 at "+root+": the agent freezes containers itself (cgroup.freeze)")
	}
	if t, opts, _ := strings.Cut(fs[v1], " "); t == "cgroup" && hasOpt(opts, "freezer") {
		return ok(name, "cgroup v1 freezer at "+v1+": the agent freezes containers itself (freezer.state)")
	}
	return warn(name, "none at "+root+": CRIU freezes containers, looking first after 100 ms",
		"Every checkpoint then keeps the container frozen about 100 ms longer: mount cgroup2 on /sys/fs/cgroup "+
			"(systemd's default, as on Debian 12) or a cgroup v1 freezer hierarchy on /sys/fs/cgroup/freezer.")
}

func hasOpt(opts, opt string) bool {
	for o := range strings.SplitSeq(opts, ",") {
		if o == opt {
			return true
		}
	}
	return false
}
