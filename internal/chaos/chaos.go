// Package chaos is `coat chaos`: containers migrate back and forth on the
// lab while agents are killed and restarted, hosts partitioned and healed,
// and etcd members killed, at random times from a seed. At the end every
// fault is repaired, the cluster is given time to settle, and the
// invariants of a migration are checked for every container:
//
//   - its record is settled (running, not migrating, no migration record,
//     no lock) on one host;
//   - runc runs it on that host and on no other (never two copies);
//   - no other host keeps its namespace, incoming image, rootfs or
//     checkpoint image, and its own host keeps no incoming image;
//   - it answers through the overlay, and its memory (a counter that only
//     grows) has not gone back: no acknowledged increment was lost.
//
// This package holds what can be decided without a lab (the fault plan,
// the classification of outcomes, the checks, the report); the command
// (internal/cli) drives the lab.
package chaos

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"
)

// Fault kinds.
const (
	KillAgent = "kill-agent"
	Partition = "partition"
	KillEtcd  = "kill-etcd"
)

// Fault is one injected fault: what, on which node, for how long before
// it is repaired (agent or etcd restarted, partition healed).
type Fault struct {
	Kind   string        `json:"kind"`
	Node   string        `json:"node"`
	After  time.Duration `json:"-"` // wait before injecting it
	Repair time.Duration `json:"-"` // how long it lasts
	At     float64       `json:"at_s"`
	For    float64       `json:"for_s"`
}

// Plan draws faults and migrations from a seed: the same seed gives the
// same sequence of choices.
type Plan struct {
	r     *rand.Rand
	hosts []string
	etcd  []string
}

// NewPlan makes a plan over the lab's hosts and etcd members (pid keys).
func NewPlan(seed uint64, hosts, etcd []string) *Plan {
	return &Plan{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), hosts: hosts, etcd: etcd}
}

// NextFault draws the next fault: most often an agent killed or a host
// partitioned, sometimes an etcd member killed.
func (p *Plan) NextFault() Fault {
	f := Fault{After: p.between(time.Second, 4*time.Second)}
	switch n := p.r.IntN(10); {
	case n < 4:
		f.Kind, f.Node, f.Repair = KillAgent, p.pick(p.hosts), p.between(500*time.Millisecond, 3*time.Second)
	case n < 8:
		f.Kind, f.Node, f.Repair = Partition, p.pick(p.hosts), p.between(time.Second, 12*time.Second)
	default:
		f.Kind, f.Node, f.Repair = KillEtcd, p.pick(p.etcd), p.between(500*time.Millisecond, 3*time.Second)
	}
	return f
}

// Destination picks a host other than from.
func (p *Plan) Destination(from string) string {
	var others []string
	for _, h := range p.hosts {
		if h != from {
			others = append(others, h)
		}
	}
	return p.pick(others)
}

// Pause is a short random wait between two migrations of one container.
func (p *Plan) Pause() time.Duration { return p.between(0, 400*time.Millisecond) }

func (p *Plan) pick(from []string) string { return from[p.r.IntN(len(from))] }

func (p *Plan) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(p.r.Int64N(int64(hi-lo)+1))
}

// Outcomes of one migrate call.
const (
	Committed  = "committed"
	RolledBack = "rolled-back"
	Refused    = "refused" // did not start: busy, host unknown or unreachable
	Unknown    = "unknown" // the call failed without saying; the checks decide
)

// Classify reads a migrate call's outcome from its error.
func Classify(err error) string {
	if err == nil {
		return Committed
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "rolled back"):
		return RolledBack
	case strings.Contains(msg, "already migrating"), strings.Contains(msg, "busy"),
		strings.Contains(msg, "unknown host"), strings.Contains(msg, "already runs on"),
		strings.Contains(msg, "connection refused"), strings.Contains(msg, "no route to host"):
		return Refused
	}
	return Unknown
}

// Observed is what the command saw of one container once the lab settled.
type Observed struct {
	Name string
	// Host and Status from its record; Migrating says the record or a
	// migration record still says migrating; Locked: its lock is held.
	Host, Status, Error string
	Migrating, Locked   bool
	// Runc is runc's status of it on every host ("" when absent).
	Runc map[string]string
	// Leftovers are paths of it found on hosts that should not have them.
	Leftovers []string
	// Counter is its memory counter now (-1: no answer) and Acked the
	// highest value it acknowledged during the run.
	Counter, Acked int
}

// Check returns the violations of one container's end state.
func Check(o Observed) []string {
	var v []string
	bad := func(format string, args ...any) { v = append(v, o.Name+": "+fmt.Sprintf(format, args...)) }
	if o.Status != "running" || o.Migrating {
		bad("record %s on %s (migrating %v): %s", o.Status, o.Host, o.Migrating, o.Error)
	}
	if o.Locked {
		bad("its lock is still held")
	}
	var running []string
	for h, st := range o.Runc {
		if st == "running" {
			running = append(running, h)
		}
		if h != o.Host && st != "" {
			bad("runc on %s has a copy (%s) while the record says %s", h, st, o.Host)
		}
	}
	sort.Strings(running)
	if len(running) > 1 {
		bad("runs on %d hosts: %v", len(running), running)
	}
	if o.Runc[o.Host] != "running" {
		bad("runc on %s (its record's host) says %q", o.Host, o.Runc[o.Host])
	}
	for _, p := range o.Leftovers {
		bad("left behind: %s", p)
	}
	switch {
	case o.Counter < 0:
		bad("does not answer through the overlay")
	case o.Counter < o.Acked:
		bad("memory went back: counter %d after %d was acknowledged", o.Counter, o.Acked)
	}
	return v
}

// Report is what a chaos run prints.
type Report struct {
	Seed        uint64         `json:"seed"`
	Hosts       int            `json:"hosts"`
	Containers  int            `json:"containers"`
	DurationS   float64        `json:"duration_s"`
	Migrations  int            `json:"migrations"` // committed + rolled back + unknown
	Outcomes    map[string]int `json:"outcomes"`
	FaultCounts map[string]int `json:"faults"`
	Faults      []Fault        `json:"fault_log"`
	SettleS     float64        `json:"settle_s"`
	Violations  []string       `json:"violations"`
}

// Count adds one migrate outcome.
func (r *Report) Count(outcome string) {
	if r.Outcomes == nil {
		r.Outcomes = map[string]int{}
	}
	r.Outcomes[outcome]++
	if outcome != Refused {
		r.Migrations++
	}
}

// String is the report for people.
func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chaos: seed %d, %d hosts, %d containers, %.0f s (+%.0f s to settle)\n", r.Seed, r.Hosts, r.Containers, r.DurationS, r.SettleS)
	fmt.Fprintf(&b, "migrations: %d (committed %d, rolled back %d, outcome told only by the record %d); %d refused before they began\n",
		r.Migrations, r.Outcomes[Committed], r.Outcomes[RolledBack], r.Outcomes[Unknown], r.Outcomes[Refused])
	fmt.Fprintf(&b, "faults: %d agents killed, %d partitions, %d etcd members killed\n", r.FaultCounts[KillAgent], r.FaultCounts[Partition], r.FaultCounts[KillEtcd])
	if len(r.Violations) == 0 {
		b.WriteString("violations: none\n")
	} else {
		fmt.Fprintf(&b, "violations: %d\n", len(r.Violations))
		for _, v := range r.Violations {
			b.WriteString("  " + v + "\n")
		}
	}
	return b.String()
}
