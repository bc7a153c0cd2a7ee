package store

import (
	"net"
	"strings"
	"testing"
)

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"web", true},
		{"web-1", true},
		{"0", true},
		{"9lives", true},
		{"a-b-c-d", true},
		{strings.Repeat("a", 32), true},
		{strings.Repeat("a", 33), false},
		{"a" + strings.Repeat("-", 30) + "b", true},
		{"", false},
		{"-web", false},
		{"web-", false},
		{"Web", false},
		{"web_1", false},
		{"web.1", false},
		{"web 1", false},
		{"../etc", false},
		{"a/b", false},
		{"wéb", false},
		{"web\n", false},
	}
	for _, tt := range tests {
		err := ValidName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestMACFor(t *testing.T) {
	tests := []struct {
		ip   string
		want string
	}{
		{"10.202.1.11", "02:c0:0a:ca:01:0b"},
		{"192.168.0.255", "02:c0:c0:a8:00:ff"},
		{"::ffff:10.0.0.1", "02:c0:0a:00:00:01"}, // IPv4-mapped is IPv4
	}
	for _, tt := range tests {
		mac := MACFor(net.ParseIP(tt.ip))
		if mac.String() != tt.want {
			t.Errorf("MACFor(%s) = %s, want %s", tt.ip, mac, tt.want)
		}
		// Locally administered (bit 1) unicast (bit 0 clear).
		if mac[0]&0x02 == 0 || mac[0]&0x01 != 0 {
			t.Errorf("MACFor(%s) = %s: not a locally administered unicast MAC", tt.ip, mac)
		}
	}
	if mac := MACFor(net.ParseIP("fd00::1")); mac != nil {
		t.Errorf("MACFor(IPv6) = %s, want nil", mac)
	}
	if a, b := MACFor(net.ParseIP("10.0.0.1")), MACFor(net.ParseIP("10.0.0.2")); a.String() == b.String() {
		t.Errorf("distinct IPs share MAC %s", a)
	}
}

func mustCIDR(t *testing.T, s string) *net.IPNet {
	t.Helper()
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAllocatable24(t *testing.T) {
	ips := Allocatable(mustCIDR(t, "10.202.3.0/24"))
	// 256 addresses minus indices 0..9 (network + first nine hosts) and
	// 245..255 (last ten hosts + broadcast).
	if len(ips) != 235 {
		t.Fatalf("len = %d, want 235", len(ips))
	}
	if got := ips[0].String(); got != "10.202.3.10" {
		t.Errorf("first = %s, want 10.202.3.10", got)
	}
	if got := ips[len(ips)-1].String(); got != "10.202.3.244" {
		t.Errorf("last = %s, want 10.202.3.244", got)
	}
	seen := map[string]bool{}
	for i, ip := range ips {
		if len(ip) != net.IPv4len {
			t.Fatalf("ips[%d] = %v: not a 4-byte IPv4", i, ip)
		}
		if ip[3] < 10 || ip[3] > 244 {
			t.Errorf("ips[%d] = %s: in a reserved range", i, ip)
		}
		if seen[ip.String()] {
			t.Errorf("duplicate %s", ip)
		}
		seen[ip.String()] = true
		if i > 0 && ip[3] != ips[i-1][3]+1 {
			t.Errorf("not in order at %d: %s after %s", i, ip, ips[i-1])
		}
	}
	// The lab's client node lives at .250, gateways/lab nodes at the bottom.
	for _, reserved := range []string{"10.202.3.0", "10.202.3.1", "10.202.3.9", "10.202.3.245", "10.202.3.250", "10.202.3.254", "10.202.3.255"} {
		if seen[reserved] {
			t.Errorf("%s must not be allocatable", reserved)
		}
	}
}

func TestAllocatableOtherSizes(t *testing.T) {
	tests := []struct {
		cidr        string
		n           int
		first, last string
	}{
		{"10.9.0.0/16", 65536 - 21, "10.9.0.10", "10.9.255.244"},
		{"10.9.8.0/23", 512 - 21, "10.9.8.10", "10.9.9.244"},
		{"10.9.8.0/27", 32 - 21, "10.9.8.10", "10.9.8.20"},
		{"10.9.8.0/28", 0, "", ""}, // 16 - 21 < 0
		{"10.9.8.0/29", 0, "", ""},
		{"fd00::/64", 0, "", ""},
	}
	for _, tt := range tests {
		ips := Allocatable(mustCIDR(t, tt.cidr))
		if len(ips) != tt.n {
			t.Errorf("%s: len = %d, want %d", tt.cidr, len(ips), tt.n)
			continue
		}
		if tt.n == 0 {
			continue
		}
		if ips[0].String() != tt.first || ips[len(ips)-1].String() != tt.last {
			t.Errorf("%s: range %s..%s, want %s..%s", tt.cidr, ips[0], ips[len(ips)-1], tt.first, tt.last)
		}
	}
}

func TestInSubnet(t *testing.T) {
	subnet := mustCIDR(t, "10.202.3.0/24")
	tests := []struct {
		ip string
		ok bool
	}{
		{"10.202.3.10", true},
		{"10.202.3.100", true},
		{"10.202.3.244", true},
		{"::ffff:10.202.3.100", true},
		{"10.202.3.0", false},   // network address
		{"10.202.3.255", false}, // broadcast address
		{"10.202.4.10", false},
		{"10.202.2.255", false},
		{"192.168.1.1", false},
		{"fd00::1", false},
		{"", false},
		{"not-an-ip", false},
	}
	for _, tt := range tests {
		err := InSubnet(subnet, net.ParseIP(tt.ip))
		if (err == nil) != tt.ok {
			t.Errorf("InSubnet(%q) = %v, want ok=%v", tt.ip, err, tt.ok)
		}
	}
}
