package linkspec

import (
	"strings"
	"testing"
	"time"
)

func TestParseDelay(t *testing.T) {
	for in, want := range map[string]time.Duration{"20ms": 20 * time.Millisecond, "1.5ms": 1500 * time.Microsecond, "500us": 500 * time.Microsecond, "0": 0, "0s": 0} {
		if got, err := ParseDelay(in); err != nil || got != want {
			t.Errorf("ParseDelay(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "20", "-1ms", "fast", "11s"} {
		if _, err := ParseDelay(bad); err == nil || !strings.Contains(err.Error(), "e.g. 20ms") {
			t.Errorf("ParseDelay(%q) = %v; want an error saying what to write", bad, err)
		}
	}
}

func TestParseLoss(t *testing.T) {
	for in, want := range map[string]float64{"1%": 0.01, "0.5%": 0.005, "0.02": 0.02, "0": 0, "0%": 0} {
		if got, err := ParseLoss(in); err != nil || got != want {
			t.Errorf("ParseLoss(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "%", "100%", "1", "-1%", "lots", "NaN"} {
		if _, err := ParseLoss(bad); err == nil || !strings.Contains(err.Error(), "e.g. 1%") {
			t.Errorf("ParseLoss(%q) = %v; want an error saying what to write", bad, err)
		}
	}
	if s := FormatLoss(0.005); s != "0.5%" {
		t.Errorf("FormatLoss = %q", s)
	}
}

func TestParseNodeLink(t *testing.T) {
	node, l, err := ParseNodeLink("edge-2=rate=100mbit,delay=20ms,loss=1%")
	want := Link{Rate: 100e6, Delay: 20 * time.Millisecond, Loss: 0.01}
	if err != nil || node != "edge-2" || l != want {
		t.Fatalf("got %q %+v %v; want edge-2 %+v", node, l, err, want)
	}
	if s := l.String(); s != "rate=100mbit,delay=20ms,loss=1%" {
		t.Errorf("String = %q", s)
	}
	if back, err := ParseLink(l.String()); err != nil || back != l {
		t.Errorf("round trip: %+v, %v", back, err)
	}
	if _, l, err := ParseNodeLink("client=none"); err != nil || !l.Zero() || l.String() != "none" {
		t.Errorf("none: %+v %v", l, err)
	}
	if _, l, _ := ParseNodeLink("edge-1=delay=5ms"); !l.NeedsRelay() || l.Rate != 0 {
		t.Errorf("delay only: %+v", l)
	}
	if _, l, _ := ParseNodeLink("edge-1=rate=1gbit"); l.NeedsRelay() {
		t.Errorf("rate only needs no relay: %+v", l)
	}
	for _, bad := range []string{"", "edge-2", "=rate=1gbit", "edge-2=", "edge-2=rate", "edge-2=speed=1gbit",
		"edge-2=rate=fast", "edge-2=delay=20", "edge-2=loss=2", "edge-2=rate=1gbit,rate=2gbit", "edge-2=rate=1gbit,"} {
		_, _, err := ParseNodeLink(bad)
		if err == nil || !strings.Contains(err.Error(), "e.g.") {
			t.Errorf("ParseNodeLink(%q) = %v; want an error saying what to write", bad, err)
		}
	}
}
