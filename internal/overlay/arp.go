package overlay

import (
	"encoding/binary"
	"fmt"
	"net"
)

const (
	etherTypeARP  = 0x0806
	arpOpReply    = 2
	minFrameBytes = 60 // Ethernet minimum without FCS
)

// broadcastMAC is the Ethernet broadcast address.
var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// garpFrame builds a gratuitous ARP reply frame: Ethernet broadcast from mac,
// sender and target both ip/mac (as "arping -A" sends), padded to 60 bytes.
func garpFrame(ip net.IP, mac net.HardwareAddr) ([]byte, error) {
	ip4 := ip.To4()
	if ip4 == nil {
		return nil, fmt.Errorf("garp ip %q is not ipv4", ip)
	}
	if len(mac) != 6 {
		return nil, fmt.Errorf("garp mac %q is not 6 bytes", mac)
	}
	f := make([]byte, minFrameBytes)
	copy(f[0:6], broadcastMAC)
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:14], etherTypeARP)
	arp := f[14:]
	binary.BigEndian.PutUint16(arp[0:2], 1)      // htype: Ethernet
	binary.BigEndian.PutUint16(arp[2:4], 0x0800) // ptype: IPv4
	arp[4], arp[5] = 6, 4                        // hlen, plen
	binary.BigEndian.PutUint16(arp[6:8], arpOpReply)
	copy(arp[8:14], mac)  // sender hardware address
	copy(arp[14:18], ip4) // sender protocol address
	copy(arp[18:24], mac) // target hardware address
	copy(arp[24:28], ip4) // target protocol address
	return f, nil
}
