package overlay

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// Defaults applied by Config.withDefaults.
const (
	DefaultBridge = "coat0"
	DefaultVXLAN  = "vxlan0"
	DefaultPort   = 4789
	DefaultMTU    = 1450
)

// maxIfName is IFNAMSIZ-1: the longest interface name the kernel accepts.
const maxIfName = 15

// Config describes one host's overlay devices.
type Config struct {
	VNI         int        // VXLAN network identifier ("id"), e.g. 42
	Port        int        // VXLAN UDP destination port ("dstport"); 0 means 4789
	LocalIP     net.IP     // this host's underlay IP, the VXLAN source ("local")
	UnderlayDev string     // underlay link in this netns, the VXLAN parent ("dev")
	Bridge      string     // bridge name; "" means coat0
	VXLAN       string     // VXLAN device name; "" means vxlan0
	MTU         int        // MTU of bridge and VXLAN; 0 means 1450
	BridgeAddr  *net.IPNet // optional overlay address on the bridge (the lab's client node)
	// BridgeMAC, if set, is the bridge's own MAC. A bridge otherwise takes
	// its lowest port's, which changes when the VXLAN device is recreated
	// (a new local address: a client's handover); a host that talks on
	// the overlay itself (the lab's client node) must keep its MAC.
	BridgeMAC net.HardwareAddr
}

// withDefaults returns cfg with empty fields set to their defaults.
func (cfg Config) withDefaults() Config {
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	if cfg.VXLAN == "" {
		cfg.VXLAN = DefaultVXLAN
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	return cfg
}

// validate checks a config that already has its defaults.
func (cfg Config) validate() error {
	switch {
	case cfg.VNI <= 0 || cfg.VNI >= 1<<24:
		return fmt.Errorf("vni %d out of range 1..16777215", cfg.VNI)
	case cfg.Port <= 0 || cfg.Port > 65535:
		return fmt.Errorf("port %d out of range", cfg.Port)
	case cfg.LocalIP.To4() == nil:
		return fmt.Errorf("local ip %q is not ipv4", cfg.LocalIP)
	case cfg.UnderlayDev == "":
		return errors.New("underlay dev is empty")
	case cfg.MTU < 68:
		return fmt.Errorf("mtu %d too small", cfg.MTU)
	case cfg.BridgeAddr != nil && cfg.BridgeAddr.IP.To4() == nil:
		return fmt.Errorf("bridge addr %s is not ipv4", cfg.BridgeAddr)
	case cfg.BridgeMAC != nil && (len(cfg.BridgeMAC) != 6 || cfg.BridgeMAC[0]&1 != 0):
		return fmt.Errorf("bridge mac %q is not a unicast mac", cfg.BridgeMAC)
	}
	for _, name := range []string{cfg.Bridge, cfg.VXLAN, cfg.UnderlayDev} {
		if err := checkIfName(name); err != nil {
			return err
		}
	}
	return nil
}

// Endpoint is a container's attachment to the overlay.
type Endpoint struct {
	NetNS    string           // path of the container's netns bind mount
	HostVeth string           // host-side veth name (<= 15 chars), e.g. "cv" + short id
	Addr     net.IPNet        // eth0's overlay IP with its prefix, e.g. {10.200.0.11, /24}; not ParseCIDR's network
	MAC      net.HardwareAddr // MAC of eth0; keep it across moves
	MTU      int              // 0 means 1450
}

// containerIf is the container-side name of the veth.
const containerIf = "eth0"

func (ep Endpoint) withDefaults() Endpoint {
	if ep.MTU == 0 {
		ep.MTU = DefaultMTU
	}
	return ep
}

func (ep Endpoint) validate() error {
	switch {
	case ep.NetNS == "":
		return errors.New("endpoint netns is empty")
	case ep.Addr.IP.To4() == nil || ep.Addr.Mask == nil:
		return fmt.Errorf("endpoint addr %s is not an ipv4 prefix", &ep.Addr)
	case isNetworkAddr(ep.Addr):
		return fmt.Errorf("endpoint addr %s is a network address, not a host address", &ep.Addr)
	case len(ep.MAC) != 6:
		return fmt.Errorf("endpoint mac %q is not 6 bytes", ep.MAC)
	case ep.MAC[0]&1 != 0:
		return fmt.Errorf("endpoint mac %s is multicast", ep.MAC)
	case ep.MTU < 68:
		return fmt.Errorf("endpoint mtu %d too small", ep.MTU)
	}
	return checkIfName(ep.HostVeth)
}

// checkIfName applies the kernel's rules for interface names
// (dev_valid_name): 1..15 bytes, not "." or "..", no '/', ':' or white
// space.
func checkIfName(name string) error {
	if name == "" || len(name) > maxIfName {
		return fmt.Errorf("interface name %q must be 1..%d bytes", name, maxIfName)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\v\f\r\x00") {
		return fmt.Errorf("interface name %q: use letters, digits, '-', '_' or '.', not '/', ':' or spaces (and not . or ..)", name)
	}
	return nil
}

// isNetworkAddr tells whether a has an all-zero host part on a prefix that
// has one (a common slip: passing the network that net.ParseCIDR returns).
func isNetworkAddr(a net.IPNet) bool {
	ones, bits := a.Mask.Size()
	return bits-ones >= 2 && a.IP.Mask(a.Mask).Equal(a.IP)
}
