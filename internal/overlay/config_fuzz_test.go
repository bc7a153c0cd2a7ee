package overlay

import (
	"net"
	"strings"
	"testing"
)

// FuzzConfigValidate: any overlay configuration is checked without a
// panic, and an accepted one is within the ranges and names the kernel
// takes.
func FuzzConfigValidate(f *testing.F) {
	f.Add(42, 0, []byte{10, 99, 0, 1}, "eth0", "", "", 0)
	f.Add(1<<24, 4789, []byte{10, 99, 0, 1}, "eth0", "coat0", "vxlan0", 1450)
	f.Add(42, 70000, []byte{}, "", "a/b", "..", 10)
	f.Add(42, 4789, []byte{10, 99, 0, 1}, "eth0:1", "br 0", "averyveryverylongname", 1500)
	f.Fuzz(func(t *testing.T, vni, port int, ip []byte, dev, bridge, vxlan string, mtu int) {
		cfg := Config{VNI: vni, Port: port, LocalIP: net.IP(ip), UnderlayDev: dev, Bridge: bridge, VXLAN: vxlan, MTU: mtu}.withDefaults()
		if cfg.validate() != nil {
			return
		}
		if cfg.VNI < 1 || cfg.VNI > 1<<24-1 || cfg.Port < 1 || cfg.Port > 65535 || cfg.MTU < 68 || cfg.LocalIP.To4() == nil {
			t.Fatalf("accepted %+v", cfg)
		}
		for _, n := range []string{cfg.Bridge, cfg.VXLAN, cfg.UnderlayDev} {
			if n == "" || len(n) > 15 || n == "." || n == ".." || strings.ContainsAny(n, "/: \t\n\x00") {
				t.Fatalf("interface name %q accepted", n)
			}
		}
	})
}
