package overlay

import (
	"fmt"
	"net"
	"testing"
)

func ips(ss ...string) []net.IP {
	var out []net.IP
	for _, s := range ss {
		out = append(out, net.ParseIP(s))
	}
	return out
}

func TestDiffPeers(t *testing.T) {
	for _, tc := range []struct {
		name           string
		have, want     []net.IP
		wantAdd, wantD string
	}{
		{"empty", nil, nil, "[]", "[]"},
		{"add all", nil, ips("10.0.0.1", "10.0.0.2"), "[10.0.0.1 10.0.0.2]", "[]"},
		{"shrink", ips("10.0.0.1", "10.0.0.2", "10.0.0.3"), ips("10.0.0.2"), "[]", "[10.0.0.1 10.0.0.3]"},
		{"swap", ips("10.0.0.1"), ips("10.0.0.2"), "[10.0.0.2]", "[10.0.0.1]"},
		{"same", ips("10.0.0.1"), ips("10.0.0.1"), "[]", "[]"},
		{"duplicates", ips("10.0.0.1", "10.0.0.1"), ips("10.0.0.2", "10.0.0.2"), "[10.0.0.2]", "[10.0.0.1]"},
		{"4-in-6 equals 4", []net.IP{net.IPv4(10, 0, 0, 1).To16()}, []net.IP{net.IPv4(10, 0, 0, 1).To4()}, "[]", "[]"},
		{"nil ignored", []net.IP{nil}, []net.IP{nil}, "[]", "[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			add, del := diffPeers(tc.have, tc.want)
			if got := fmt.Sprint(add); got != tc.wantAdd {
				t.Errorf("add = %s, want %s", got, tc.wantAdd)
			}
			if got := fmt.Sprint(del); got != tc.wantD {
				t.Errorf("del = %s, want %s", got, tc.wantD)
			}
		})
	}
}

func TestIsZeroMAC(t *testing.T) {
	if !isZeroMAC(net.HardwareAddr{0, 0, 0, 0, 0, 0}) {
		t.Error("zero mac not recognised")
	}
	if isZeroMAC(net.HardwareAddr{0, 0, 0, 0, 0, 1}) || isZeroMAC(nil) {
		t.Error("non-zero or nil mac taken for zero")
	}
}
