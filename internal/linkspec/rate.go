// Package linkspec parses and formats the link properties operators and the
// lab speak of: rates ("100mbit", "1gbit", "1.5gbit", "800kbit"), as tc
// spells them, delays ("20ms"), losses ("1%") and whole links
// ("edge-2=rate=100mbit,delay=20ms,loss=1%").
package linkspec

import (
	"fmt"
	"strconv"
	"strings"
)

// Rate is a link rate in bits per second; 0 means unknown or unshaped.
type Rate int64

var rateUnits = []struct {
	suffix string
	mult   float64
}{
	{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1},
	{"gbps", 8e9}, {"mbps", 8e6}, {"kbps", 8e3}, {"bps", 8},
}

// ParseRate reads a rate such as "100mbit" (bits per second, tc's units:
// bit, kbit, mbit, gbit; bps, kbps, mbps, gbps are bytes per second).
func ParseRate(s string) (Rate, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	for _, u := range rateUnits {
		num, ok := strings.CutSuffix(t, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(num, 64)
		// NaN fails every comparison: check what must hold, not what
		// must not; below 1 bit/s would be 0, unshaped.
		if err != nil || !(v*u.mult >= 1 && v*u.mult <= 1e12) {
			break
		}
		return Rate(v * u.mult), nil
	}
	return 0, fmt.Errorf("bad rate %q: write a number and a unit, from 1bit to 1000gbit, e.g. 100mbit, 1gbit or 800kbit", s)
}

// String formats the rate the way ParseRate reads it.
func (r Rate) String() string {
	switch {
	case r <= 0:
		return "unshaped"
	case r%1e9 == 0:
		return fmt.Sprintf("%dgbit", r/1e9)
	case r%1e6 == 0:
		return fmt.Sprintf("%dmbit", r/1e6)
	case r%1e3 == 0:
		return fmt.Sprintf("%dkbit", r/1e3)
	}
	return fmt.Sprintf("%dbit", int64(r))
}

// BytesPerSecond is the rate in bytes per second.
func (r Rate) BytesPerSecond() float64 { return float64(r) / 8 }
