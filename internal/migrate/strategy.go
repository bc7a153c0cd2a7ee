package migrate

import (
	"fmt"
	"strings"
	"time"
)

// Strategy is how memory moves.
//
//   - stop-and-copy: frozen while the whole image is dumped, streamed and
//     restored; downtime grows with memory / link rate, but a failure
//     anywhere before the commit rolls back from the source's own image.
//   - post-copy: frozen only while everything but anonymous memory moves;
//     the container then runs on the destination and faults its pages in
//     from the source (CRIU lazy pages over userfaultfd), the rest pushed
//     in the background. Downtime no longer grows with memory, but until
//     the last page arrives the container needs both hosts: if either dies
//     then, the container is stopped and reported failed, never run on
//     with memory missing.
//   - pre-copy: memory copied while the container runs, then only what it
//     dirtied since (iterations until the dirty set is small or stops
//     shrinking). Needs the kernel's soft-dirty tracking.
type Strategy string

// The strategies; Auto picks one per migration (Choose).
const (
	Auto        Strategy = "auto"
	StopAndCopy Strategy = "stop-and-copy"
	PostCopy    Strategy = "post-copy"
	PreCopy     Strategy = "pre-copy"
)

// Strategies lists what --strategy accepts.
var Strategies = []Strategy{Auto, StopAndCopy, PostCopy, PreCopy}

// ParseStrategy reads a --strategy value; "" is Auto.
func ParseStrategy(s string) (Strategy, error) {
	if s == "" {
		return Auto, nil
	}
	for _, k := range Strategies {
		if string(k) == s {
			return k, nil
		}
	}
	names := make([]string, len(Strategies))
	for i, k := range Strategies {
		names[i] = string(k)
	}
	return "", fmt.Errorf("unknown strategy %q: use one of %s", s, strings.Join(names, ", "))
}

// Features are what the two hosts' kernels and CRIU offer.
type Features struct {
	// LazyPages: userfaultfd on the destination and CRIU lazy pages.
	LazyPages bool
	// SoftDirty: memory change tracking on the source's kernel.
	SoftDirty bool
	// PreCopy: the agents have an iterative pre-dump pipeline. This
	// version has none (no machine it runs on has soft-dirty tracking to
	// build and test one with), so pre-copy is refused even where the
	// kernel could track memory.
	PreCopy bool
}

// Inputs is what Choose weighs.
type Inputs struct {
	Requested   Strategy
	MemoryBytes int64   // the container's memory (what a full dump moves)
	LinkRate    float64 // bits/s between the hosts; 0: unknown, taken as fast
	Features    Features
	// NoTCP (the traditional migration) and holding off are about
	// connections, not memory; they work with every strategy.
}

// StopAndCopyBudget is the downtime Auto accepts from moving all memory
// while frozen before it prefers post-copy.
const StopAndCopyBudget = 300 * time.Millisecond

// fastLink is the rate assumed for a link of unknown rate (a LAN). Memory
// is also read and written at about this rate by CRIU and the agents.
const fastLink = 4e9

// EstimateFreeze is the time to move memory while frozen at rate (bits/s).
func EstimateFreeze(memory int64, rate float64) time.Duration {
	if rate <= 0 || rate > fastLink {
		rate = fastLink
	}
	return time.Duration(float64(memory) * 8 / rate * float64(time.Second))
}

// Choose picks the strategy, or says why the requested one cannot run.
func Choose(in Inputs) (Strategy, string, error) {
	switch in.Requested {
	case StopAndCopy:
		return StopAndCopy, "requested", nil
	case PostCopy:
		if !in.Features.LazyPages {
			return "", "", fmt.Errorf("post-copy needs userfaultfd and CRIU lazy pages on the destination, which it lacks (`coat doctor` on that host says why); use --strategy stop-and-copy")
		}
		return PostCopy, "requested", nil
	case PreCopy:
		if !in.Features.SoftDirty {
			return "", "", fmt.Errorf("pre-copy needs the kernel's soft-dirty memory tracking (CONFIG_MEM_SOFT_DIRTY), which the source's kernel lacks (`coat doctor` says so); use --strategy post-copy or stop-and-copy")
		}
		if !in.Features.PreCopy {
			return "", "", fmt.Errorf("pre-copy is not built into this version of COAT (the kernel has soft-dirty tracking, but no iterative pre-dump pipeline was built); use --strategy post-copy or stop-and-copy")
		}
		return PreCopy, "requested", nil
	case Auto, "":
	default:
		return "", "", fmt.Errorf("unknown strategy %q", in.Requested)
	}
	est := EstimateFreeze(in.MemoryBytes, in.LinkRate)
	link := "a fast link"
	if in.LinkRate > 0 {
		link = fmt.Sprintf("%.0f Mbit/s", in.LinkRate/1e6)
	}
	mem := fmt.Sprintf("%.0f MiB", float64(in.MemoryBytes)/(1<<20))
	if est <= StopAndCopyBudget {
		return StopAndCopy, fmt.Sprintf("%s of memory moves in about %v over %s, within the %v freeze budget", mem, est.Round(time.Millisecond), link, StopAndCopyBudget), nil
	}
	if in.Features.LazyPages {
		return PostCopy, fmt.Sprintf("%s of memory would take about %v frozen over %s: post-copy moves it after the restore", mem, est.Round(time.Millisecond), link), nil
	}
	if in.Features.SoftDirty && in.Features.PreCopy {
		return PreCopy, fmt.Sprintf("%s of memory would take about %v frozen over %s, and lazy pages are unavailable: pre-copy moves it before the freeze", mem, est.Round(time.Millisecond), link), nil
	}
	return StopAndCopy, fmt.Sprintf("%s of memory takes about %v frozen over %s, but neither lazy pages nor soft-dirty tracking is available", mem, est.Round(time.Millisecond), link), nil
}

// DefaultBudget is a migration's budget when the user gives none: 30 s
// overall and 15 s frozen for a small container, plus five (overall) and
// four (frozen) times the time its memory takes to move at rate, so a
// large container on a slow link is not cut short while it still moves.
func DefaultBudget(s Strategy, memory int64, rate float64) Budget {
	est := EstimateFreeze(memory, rate)
	b := Budget{Timeout: 30*time.Second + 5*est, Freeze: 15*time.Second + 4*est}
	if s == PostCopy {
		// Frozen only for the non-memory part of the image; the memory
		// moves after the restore, within the overall timeout.
		b.Freeze = 15*time.Second + est/2
	}
	return b
}
