package overlay

import (
	"bytes"
	"net"
)

// zeroMAC is the all-zero FDB address: an entry for it is a flood target.
var zeroMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}

func isZeroMAC(mac net.HardwareAddr) bool {
	return len(mac) == 6 && bytes.Equal(mac, zeroMAC)
}

// diffPeers returns the peers in want but not in have (to add) and those in
// have but not in want (to delete). Duplicates and nil IPs are dropped.
func diffPeers(have, want []net.IP) (add, del []net.IP) {
	haveSet := ipSet(have)
	wantSet := ipSet(want)
	for _, ip := range want {
		key := ip.String()
		if ip != nil && !haveSet[key] {
			add = append(add, ip)
			haveSet[key] = true // drop duplicates in want
		}
	}
	for _, ip := range have {
		key := ip.String()
		if ip != nil && !wantSet[key] {
			del = append(del, ip)
			wantSet[key] = true
		}
	}
	return add, del
}

func ipSet(ips []net.IP) map[string]bool {
	set := make(map[string]bool, len(ips))
	for _, ip := range ips {
		if ip != nil {
			set[ip.String()] = true
		}
	}
	return set
}
