package overlay

import (
	"bytes"
	"encoding/hex"
	"net"
	"testing"
)

func TestGARPFrame(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0xc0, 0xa7, 0, 0, 0x0b}
	f, err := garpFrame(net.IPv4(10, 200, 0, 11), mac)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := hex.DecodeString("" +
		"ffffffffffff" + "02c0a700000b" + "0806" + // Ethernet: broadcast, from mac, ARP
		"0001" + "0800" + "06" + "04" + "0002" + // Ethernet/IPv4, reply
		"02c0a700000b" + "0ac8000b" + // sender mac/ip
		"02c0a700000b" + "0ac8000b") // target mac/ip = sender (gratuitous)
	if len(f) != 60 {
		t.Fatalf("frame is %d bytes, want 60 (padded)", len(f))
	}
	if !bytes.Equal(f[:len(want)], want) || !bytes.Equal(f[len(want):], make([]byte, 60-len(want))) {
		t.Fatalf("frame\n got %x\nwant %x + zero padding", f, want)
	}
}

func TestGARPFrameRejects(t *testing.T) {
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	if _, err := garpFrame(net.ParseIP("fd00::1"), mac); err == nil {
		t.Error("ipv6 accepted")
	}
	if _, err := garpFrame(net.IPv4(10, 0, 0, 1), mac[:3]); err == nil {
		t.Error("short mac accepted")
	}
}
