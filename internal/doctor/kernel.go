package doctor

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// feature is a kernel feature migration uses.
type feature struct {
	name     string
	option   string // CONFIG_ option
	required bool
	use      string // what COAT uses it for
	missing  string // what its absence means (optional features)
	probe    probe  // how to tell without the kernel config; nil: cannot tell
	// fallback is also consulted when the config lacks option (overlay
	// can be there without CONFIG_OVERLAY_FS in a vendor config).
	fallback bool
}

var features = []feature{
	{name: "network namespaces", option: "CONFIG_NET_NS", required: true,
		use:   "every container and lab host gets its own network stack",
		probe: probePath("/proc/self/ns/net")},
	{name: "VXLAN", option: "CONFIG_VXLAN", required: true,
		use:   "the overlay network that lets a container keep its IP address on another host",
		probe: probeModule("vxlan")},
	{name: "bridge", option: "CONFIG_BRIDGE", required: true,
		use:   "each host bridges its containers onto the VXLAN overlay",
		probe: probeModule("bridge")},
	{name: "veth", option: "CONFIG_VETH", required: true,
		use:   "veth pairs link each container's network namespace to the host bridge",
		probe: probeModule("veth")},
	{name: "overlayfs", option: "CONFIG_OVERLAY_FS", required: true, fallback: true,
		use:   "container root filesystems are overlay mounts over the image",
		probe: probeFilesystem("overlay")},
	{name: "checkpoint/restore", option: "CONFIG_CHECKPOINT_RESTORE", required: true,
		use:   "the kernel interfaces CRIU needs to dump and restore processes",
		probe: probePath("/proc/sys/kernel/ns_last_pid")},
	{name: "userfaultfd", option: "CONFIG_USERFAULTFD",
		missing: "needed for lazy/post-copy migration (restore first, fetch memory on demand); " +
			"COAT's stop-and-copy migration works without it.",
		probe: probePath("/proc/sys/vm/unprivileged_userfaultfd")},
	{name: "soft-dirty", option: "CONFIG_MEM_SOFT_DIRTY",
		missing: "no soft-dirty: no iterative pre-copy (--strategy pre-copy is refused); " +
			"--strategy auto moves large memory post-copy (with userfaultfd) or stop-and-copy."},
	{name: "nftables", option: "CONFIG_NF_TABLES",
		missing: "nftables/iptables rules (NAT, filtering) on hosts and in the lab won't work; " +
			"migration itself does not need them.",
		probe: probeModule("nf_tables")},
}

// checkKernel reports the kernel release and each feature.
func checkKernel(ctx context.Context, env Env) []Result {
	rel := "unknown"
	if b, err := env.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		rel = strings.TrimSpace(string(b))
	}
	cfg, src, err := LoadKConfig(env, rel)
	var rs []Result
	if err != nil {
		rs = append(rs, warn("kernel", fmt.Sprintf("%s, no kernel config (/proc/config.gz, /boot/config-%s); probing", rel, rel),
			"Features below were guessed from /proc, /sys and the module lists; "+
				"for exact answers enable CONFIG_IKCONFIG_PROC or install the kernel's /boot config."))
	} else {
		rs = append(rs, ok("kernel", fmt.Sprintf("%s (config from %s)", rel, src)))
	}
	for _, f := range features {
		rs = append(rs, checkFeature(ctx, env, f, cfg, rel))
	}
	rs = append(rs, checkStrategies(rs, env), checkBacklog(env))
	return append(rs, checkLinks(env, cfg, rel))
}

func checkFeature(ctx context.Context, env Env, f feature, cfg KConfig, rel string) Result {
	var present, known bool
	var how string
	switch {
	case cfg != nil && cfg.Enabled(f.option):
		present, known, how = true, true, f.option+"="+cfg[f.option]
		if cfg[f.option] == "m" {
			how += " (module)"
		}
	case cfg != nil && !f.fallback:
		known, how = true, f.option+" not set"
	case f.probe != nil:
		present, known, how = f.probe(env, rel)
		if cfg != nil && !present {
			known, how = true, f.option+" not set; "+how
		}
	case f.option == "CONFIG_MEM_SOFT_DIRTY":
		present, known, how = probeSoftDirty(ctx, env)
	default:
		how = "cannot tell without the kernel config"
	}
	switch {
	case present:
		return ok(f.name, how)
	case !known:
		return warn(f.name, how, f.hint())
	case f.required:
		return fail(f.name, "missing: "+how, f.hint())
	default:
		return warn(f.name, "missing: "+how, f.hint())
	}
}

func (f feature) hint() string {
	if f.required {
		return fmt.Sprintf("Required: %s. Use a kernel built with %s=y (or =m and the module loaded).", f.use, f.option)
	}
	return f.missing
}

// probeSoftDirty asks CRIU, which tests soft-dirty tracking itself.
func probeSoftDirty(ctx context.Context, env Env) (present, known bool, how string) {
	if _, err := env.LookPath("criu"); err != nil {
		return false, false, "cannot tell without the kernel config or criu"
	}
	if _, err := env.Run(ctx, "criu", "check", "--feature", "mem_dirty_track"); err != nil {
		return false, true, "criu check --feature mem_dirty_track failed"
	}
	return true, true, "criu check --feature mem_dirty_track passed"
}

// checkStrategies says which memory strategies `coat migrate --strategy`
// (and auto) can use here, from the feature results above.
func checkStrategies(rs []Result, env Env) Result {
	have := map[string]bool{}
	for _, r := range rs {
		have[r.Name] = r.Status == OK
	}
	list := "stop-and-copy"
	var notes []string
	if have["userfaultfd"] {
		list += ", post-copy"
		if b, err := env.ReadFile("/proc/sys/fs/pipe-user-pages-soft"); err == nil && strings.TrimSpace(string(b)) != "0" {
			notes = append(notes, "post-copy needs fs.pipe-user-pages-soft=0 (a lazy dump pins memory in pipes); the agent sets it when it starts")
		}
	} else {
		notes = append(notes, "no post-copy: the kernel lacks userfaultfd")
	}
	if have["soft-dirty"] {
		notes = append(notes, "pre-copy: the kernel tracks dirty memory, but this version of COAT has no pre-copy pipeline")
	} else {
		notes = append(notes, "no pre-copy: the kernel lacks soft-dirty tracking")
	}
	r := ok("strategies", list+" (auto picks by memory size and link rate)")
	r.Hint = strings.Join(notes, "; ")
	return r
}

// checkBacklog: frames crossing a veth wait in a per-CPU backlog; the
// default (1000) drops a restored container's first burst when it has many
// connections. The agent raises it to 16384 when it starts.
func checkBacklog(env Env) Result {
	b, err := env.ReadFile("/proc/sys/net/core/netdev_max_backlog")
	if err != nil {
		return warn("receive backlog", "cannot read net.core.netdev_max_backlog", "")
	}
	v := strings.TrimSpace(string(b))
	if n, err := strconv.Atoi(v); err == nil && n >= 16384 {
		return ok("receive backlog", "net.core.netdev_max_backlog="+v)
	}
	return warn("receive backlog", "net.core.netdev_max_backlog="+v,
		"a container with hundreds of connections sends and receives thousands of frames at once after a restore; "+
			"beyond this backlog they are dropped and clients wait out retransmission timeouts. "+
			"The agent raises it to 16384 when it starts (sysctl -w net.core.netdev_max_backlog=16384).")
}
