package linkspec

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/coat-project/coat/internal/names"
)

// Link is what an emulated link does to the frames a node sends: a rate
// cap (both directions), a one-way delay and a loss probability (the
// node's egress). The zero Link is a plain, unshaped link.
type Link struct {
	Rate  Rate          `json:"rate,omitempty"`  // bits per second; 0: unshaped
	Delay time.Duration `json:"delay,omitempty"` // added to every frame the node sends
	Loss  float64       `json:"loss,omitempty"`  // probability in [0, 1) that a sent frame is dropped
}

// Zero reports whether the link is plain.
func (l Link) Zero() bool { return l == Link{} }

// NeedsRelay reports whether the link needs delay or loss, which this
// kernel's qdiscs cannot do (no netem).
func (l Link) NeedsRelay() bool { return l.Delay > 0 || l.Loss > 0 }

// String formats the link the way ParseLink reads it ("none" if plain).
func (l Link) String() string {
	var parts []string
	if l.Rate > 0 {
		parts = append(parts, "rate="+l.Rate.String())
	}
	if l.Delay > 0 {
		parts = append(parts, "delay="+FormatDelay(l.Delay))
	}
	if l.Loss > 0 {
		parts = append(parts, "loss="+FormatLoss(l.Loss))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// ParseDelay reads a one-way delay such as "20ms", "1.5ms", "500us" or
// "0" (Go duration syntax; at most 10 s).
func ParseDelay(s string) (time.Duration, error) {
	t := strings.TrimSpace(s)
	if t == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(t)
	if err != nil || d < 0 || d > 10*time.Second {
		return 0, fmt.Errorf("bad delay %q: write a duration between 0 and 10s, e.g. 20ms, 1.5ms or 500us", s)
	}
	return d, nil
}

// FormatDelay formats a delay the way ParseDelay reads it.
func FormatDelay(d time.Duration) string { return d.String() }

// ParseLoss reads a loss probability as a percentage ("1%", "0.5%") or a
// fraction ("0.01"); it must be below 100%.
func ParseLoss(s string) (float64, error) {
	t := strings.TrimSpace(s)
	num, pct := strings.CutSuffix(t, "%")
	v, err := strconv.ParseFloat(num, 64)
	if err == nil && pct {
		v /= 100
	}
	if err != nil || math.IsNaN(v) || v < 0 || v >= 1 {
		return 0, fmt.Errorf("bad loss %q: write a percentage below 100%%, e.g. 1%% or 0.5%% (or a fraction such as 0.01)", s)
	}
	return v, nil
}

// FormatLoss formats a loss probability as a percentage.
func FormatLoss(p float64) string {
	return strconv.FormatFloat(p*100, 'f', -1, 64) + "%"
}

// ParseLink reads "rate=100mbit,delay=20ms,loss=1%" (any subset, any
// order) or "none" (a plain link).
func ParseLink(s string) (Link, error) {
	var l Link
	t := strings.TrimSpace(s)
	if t == "none" {
		return l, nil
	}
	if t == "" {
		return l, fmt.Errorf("empty link specification: write KEY=VALUE pairs, e.g. rate=100mbit,delay=20ms,loss=1%% (or none)")
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(t, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return l, fmt.Errorf("bad link setting %q: write KEY=VALUE with KEY rate, delay or loss, e.g. rate=100mbit,delay=20ms,loss=1%%", kv)
		}
		if seen[k] {
			return l, fmt.Errorf("link setting %q given twice in %q: give each of rate, delay and loss at most once, e.g. rate=100mbit,delay=20ms", k, s)
		}
		seen[k] = true
		var err error
		switch k {
		case "rate":
			l.Rate, err = ParseRate(v)
		case "delay":
			l.Delay, err = ParseDelay(v)
		case "loss":
			l.Loss, err = ParseLoss(v)
		default:
			err = fmt.Errorf("unknown link setting %q: use rate, delay or loss, e.g. rate=100mbit,delay=20ms,loss=1%%", k)
		}
		if err != nil {
			return l, err
		}
	}
	return l, nil
}

// ParseNodeLink reads "NODE=SPEC", e.g. "edge-2=rate=100mbit,delay=20ms".
func ParseNodeLink(s string) (node string, l Link, err error) {
	node, spec, ok := strings.Cut(strings.TrimSpace(s), "=")
	if !ok || !names.Label(node) {
		return "", l, fmt.Errorf("bad link %q: write NODE=SETTINGS with NODE a node's name (lowercase letters, digits, dashes), e.g. edge-2=rate=100mbit,delay=20ms,loss=1%%", s)
	}
	l, err = ParseLink(spec)
	if err != nil {
		return "", l, fmt.Errorf("link of %s: %w", node, err)
	}
	return node, l, nil
}
