package linkspec

import "testing"

func TestParseRate(t *testing.T) {
	for in, want := range map[string]Rate{"100mbit": 100e6, "1gbit": 1e9, "1.5gbit": 1.5e9, "800kbit": 800e3, "10mbps": 80e6} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "100", "mbit", "-1mbit", "fastmbit", "100 parsecs"} {
		if _, err := ParseRate(bad); err == nil {
			t.Errorf("ParseRate(%q) did not fail", bad)
		}
	}
	if s := Rate(100e6).String(); s != "100mbit" {
		t.Errorf("String = %q", s)
	}
}
