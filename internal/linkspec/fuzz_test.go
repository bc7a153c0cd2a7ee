package linkspec

import (
	"math"
	"testing"
	"time"
)

// FuzzParseLink: any accepted link specification is within its bounds and
// its String form reads back as the same link (a loss to within rounding).
func FuzzParseLink(f *testing.F) {
	for _, s := range []string{
		"rate=100mbit,delay=20ms,loss=1%", "none", "", "rate=1gbit", "delay=0", "loss=0.5%", "loss=0.01",
		"rate=nanmbit", "rate=0.1bit", "rate=infgbit", "delay=-1ms", "delay=11s", "loss=100%", "loss=NaN",
		"rate=1gbit,rate=2gbit", "speed=1", "rate", ",", "rate=1e3kbps",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLink(s)
		if err != nil {
			return
		}
		if l.Rate < 0 || l.Rate > 1e12 || l.Delay < 0 || l.Delay > 10*time.Second || math.IsNaN(l.Loss) || l.Loss < 0 || l.Loss >= 1 {
			t.Fatalf("%q accepted out of bounds: %+v", s, l)
		}
		back, err := ParseLink(l.String())
		if err != nil {
			t.Fatalf("%q: String %q does not parse: %v", s, l.String(), err)
		}
		if back.Rate != l.Rate || back.Delay != l.Delay || math.Abs(back.Loss-l.Loss) > 1e-12 {
			t.Fatalf("%q: %+v reads back as %+v", s, l, back)
		}
	})
}

// FuzzParseNodeLink: an accepted node is a plain name.
func FuzzParseNodeLink(f *testing.F) {
	for _, s := range []string{"edge-2=rate=100mbit", "client=none", "../x=none", "=none", "Edge=none", "a,b=none"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		node, _, err := ParseNodeLink(s)
		if err != nil {
			return
		}
		for _, c := range node {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				t.Fatalf("%q: node %q accepted", s, node)
			}
		}
	})
}
