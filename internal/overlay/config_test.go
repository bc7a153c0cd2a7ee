package overlay

import (
	"net"
	"strings"
	"testing"
)

func validConfig() Config {
	return Config{VNI: 42, LocalIP: net.IPv4(10, 99, 0, 1), UnderlayDev: "eth0"}
}

func TestConfigDefaults(t *testing.T) {
	got := validConfig().withDefaults()
	if got.Port != 4789 || got.Bridge != "coat0" || got.VXLAN != "vxlan0" || got.MTU != 1450 {
		t.Fatalf("defaults: %+v", got)
	}
	if err := got.validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	kept := Config{Port: 8472, Bridge: "br", VXLAN: "vx", MTU: 1400}.withDefaults()
	if kept.Port != 8472 || kept.Bridge != "br" || kept.VXLAN != "vx" || kept.MTU != 1400 {
		t.Fatalf("explicit values overwritten: %+v", kept)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"vni zero", func(c *Config) { c.VNI = 0 }, "vni"},
		{"vni too big", func(c *Config) { c.VNI = 1 << 24 }, "vni"},
		{"port", func(c *Config) { c.Port = 70000 }, "port"},
		{"no local ip", func(c *Config) { c.LocalIP = nil }, "local ip"},
		{"ipv6 local ip", func(c *Config) { c.LocalIP = net.ParseIP("fd00::1") }, "local ip"},
		{"no underlay", func(c *Config) { c.UnderlayDev = "" }, "underlay"},
		{"long bridge name", func(c *Config) { c.Bridge = "a-very-long-bridge" }, "interface name"},
		{"tiny mtu", func(c *Config) { c.MTU = 10 }, "mtu"},
		{"ipv6 bridge addr", func(c *Config) {
			c.BridgeAddr = &net.IPNet{IP: net.ParseIP("fd00::1"), Mask: net.CIDRMask(64, 128)}
		}, "bridge addr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := validConfig().withDefaults()
			tc.mod(&cfg)
			err := cfg.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate() = %v, want error about %q", err, tc.want)
			}
		})
	}
}

func validEndpoint() Endpoint {
	return Endpoint{
		NetNS:    "/run/netns/c1",
		HostVeth: "cv1234567890abc",
		Addr:     net.IPNet{IP: net.IPv4(10, 200, 0, 11), Mask: net.CIDRMask(24, 32)},
		MAC:      net.HardwareAddr{0x02, 0xc0, 0xa7, 0, 0, 0x0b},
	}
}

func TestEndpointValidate(t *testing.T) {
	if err := validEndpoint().withDefaults().validate(); err != nil {
		t.Fatalf("valid endpoint rejected: %v", err)
	}
	if validEndpoint().withDefaults().MTU != 1450 {
		t.Fatal("endpoint mtu default is not 1450")
	}
	for _, tc := range []struct {
		name string
		mod  func(*Endpoint)
		want string
	}{
		{"no netns", func(e *Endpoint) { e.NetNS = "" }, "netns"},
		{"veth name too long", func(e *Endpoint) { e.HostVeth = "cv1234567890abcd" }, "interface name"},
		{"no addr", func(e *Endpoint) { e.Addr = net.IPNet{} }, "addr"},
		{"network addr from ParseCIDR", func(e *Endpoint) {
			_, n, _ := net.ParseCIDR("10.200.0.11/24")
			e.Addr = *n
		}, "network address"},
		{"short mac", func(e *Endpoint) { e.MAC = e.MAC[:4] }, "mac"},
		{"multicast mac", func(e *Endpoint) { e.MAC = net.HardwareAddr{1, 0, 0x5e, 0, 0, 1} }, "multicast"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ep := validEndpoint().withDefaults()
			tc.mod(&ep)
			err := ep.validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate() = %v, want error about %q", err, tc.want)
			}
		})
	}
}

func TestIsNetworkAddr(t *testing.T) {
	for _, tc := range []struct {
		ones int
		ip   net.IP
		want bool
	}{
		{24, net.IPv4(10, 0, 0, 0), true},
		{24, net.IPv4(10, 0, 0, 5), false},
		{32, net.IPv4(10, 0, 0, 0), false}, // a host route has no host part
		{31, net.IPv4(10, 0, 0, 0), false}, // RFC 3021 point-to-point
	} {
		a := net.IPNet{IP: tc.ip, Mask: net.CIDRMask(tc.ones, 32)}
		if got := isNetworkAddr(a); got != tc.want {
			t.Errorf("isNetworkAddr(%s) = %t, want %t", &a, got, tc.want)
		}
	}
}
