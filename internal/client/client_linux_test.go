package client

import (
	"net"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/store"
)

func TestAttach(t *testing.T) {
	now := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	hosts := []store.Host{
		{Name: "edge-1", UnderlayIP: "192.0.2.1"},
		{Name: "edge-2", UnderlayIP: "198.51.100.1"},
		{Name: "edge-3", UnderlayIP: "198.51.100.2"},
	}
	subnet := func(s string) *net.IPNet { _, n, _ := net.ParseCIDR(s); return n }
	fresh := store.Client{Name: "phone", OverlayIP: "10.96.0.10", MAC: "02:c0:0a:60:00:0a"}
	for _, tc := range []struct {
		what       string
		rec        store.Client
		ip         string
		on         *net.IPNet
		attachedTo string
		roams      int64
	}{
		{"first attachment: no roam", fresh, "192.0.2.50", subnet("192.0.2.0/24"), "edge-1", 0},
		{"same address: no roam", store.Client{UnderlayIP: "192.0.2.50", Roams: 2}, "192.0.2.50", subnet("192.0.2.0/24"), "edge-1", 2},
		{"handover to a network with one host", store.Client{UnderlayIP: "203.0.113.7", Roams: 2}, "192.0.2.50", subnet("192.0.2.0/24"), "edge-1", 3},
		{"a network with two hosts: none in particular", store.Client{UnderlayIP: "192.0.2.50", Roams: 3}, "198.51.100.9", subnet("198.51.100.0/24"), "", 4},
		{"a network with no host", store.Client{UnderlayIP: "198.51.100.9", Roams: 4}, "203.0.113.7", subnet("203.0.113.0/24"), "", 5},
	} {
		got := Attach(tc.rec, net.ParseIP(tc.ip), tc.on, hosts, now)
		if got.UnderlayIP != tc.ip || got.AttachedTo != tc.attachedTo || got.Roams != tc.roams || !got.Updated.Equal(now) {
			t.Errorf("%s: %+v, want underlay %s attached to %q, %d roams", tc.what, got, tc.ip, tc.attachedTo, tc.roams)
		}
	}
}

func TestConfigCheck(t *testing.T) {
	ok := Config{Name: "phone", Endpoints: []string{"https://10.0.0.1:2379"}, UnderlayDev: "eth0", VNI: 42}
	if err := ok.check(); err != nil {
		t.Fatal(err)
	}
	for what, mod := range map[string]func(*Config){
		"bad name":    func(c *Config) { c.Name = "../x" },
		"no server":   func(c *Config) { c.Endpoints = nil },
		"no link":     func(c *Config) { c.UnderlayDev = "" },
		"vni too big": func(c *Config) { c.VNI = 1 << 24 },
		"vni not set": func(c *Config) { c.VNI = 0 },
	} {
		c := ok
		mod(&c)
		if err := c.check(); err == nil {
			t.Errorf("%s: accepted", what)
		}
	}
}
