//go:build linux

package overlay

import (
	"net"
	"testing"
)

// tcpFrame is an Ethernet/IPv4/TCP frame carrying payload, checksum zero.
func tcpFrame(dst net.HardwareAddr, payload string) []byte {
	f := make([]byte, 14+20+20+len(payload))
	copy(f[0:6], dst)
	f[12], f[13] = 0x08, 0x00
	ip := f[14:]
	ip[0] = 0x45
	total := 20 + 20 + len(payload)
	ip[2], ip[3] = byte(total>>8), byte(total)
	ip[8], ip[9] = 64, 6
	copy(ip[12:16], net.IPv4(10, 0, 0, 1).To4())
	copy(ip[16:20], net.IPv4(10, 0, 0, 2).To4())
	tcp := ip[20:]
	tcp[0], tcp[1], tcp[2], tcp[3] = 0x9c, 0x40, 0x1b, 0x58
	tcp[12] = 5 << 4
	copy(tcp[20:], payload)
	return f
}

// The computed checksum verifies: summing the pseudo-header and the segment
// with it gives 0xffff.
func TestCompleteChecksum(t *testing.T) {
	for _, payload := range []string{"", "x", "replay-me", "an even one"} {
		f := tcpFrame(macOf(t, "02:00:00:00:00:01"), payload)
		// A partial checksum (what offload leaves) is overwritten.
		f[14+20+16], f[14+20+17] = 0x12, 0x34
		completeChecksum(f)
		ip := f[14:]
		seg := ip[20:]
		sum := uint32(0)
		add := func(b []byte) {
			for i := 0; i+1 < len(b); i += 2 {
				sum += uint32(b[i])<<8 | uint32(b[i+1])
			}
			if len(b)%2 == 1 {
				sum += uint32(b[len(b)-1]) << 8
			}
		}
		add(ip[12:20])
		sum += 6 + uint32(len(seg))
		add(seg)
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		if sum != 0xffff {
			t.Errorf("payload %q: checksum does not verify (%#x)", payload, sum)
		}
	}
	// Not IPv4, or truncated: left alone.
	arp := make([]byte, 60)
	arp[12], arp[13] = 0x08, 0x06
	completeChecksum(arp)
	short := tcpFrame(nil, "abc")[:30]
	completeChecksum(short)
}

// Only frames for the container (or broadcast) are replayed, never the
// hold's own drain frames.
func TestReplayable(t *testing.T) {
	mac := macOf(t, "02:c0:0a:ca:00:0a")
	if !replayable(tcpFrame(mac, "x"), mac) {
		t.Error("a frame for the container is not replayed")
	}
	if !replayable(tcpFrame(broadcastMAC, "x"), mac) {
		t.Error("a broadcast is not replayed")
	}
	if replayable(tcpFrame(macOf(t, "02:00:00:00:00:09"), "x"), mac) {
		t.Error("a frame for another MAC is replayed")
	}
	junk := tcpFrame(mac, "x")
	junk[12], junk[13] = junkType>>8, junkType&0xff
	if replayable(junk, mac) {
		t.Error("a drain frame is replayed")
	}
}

func macOf(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
