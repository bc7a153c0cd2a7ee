//go:build linux

package overlay

import (
	"errors"
	"fmt"
	"net"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Replaying what the source held.
//
// The source starts holding a container's inbound frames just before it
// freezes it, and the destination takes the MAC over (gratuitous ARP) just
// after: frames the clients send in between reach the source. Dropped
// there, each costs its sender a retransmission timeout (200 ms at least):
// a ping-pong client loses the request it sends on the last reply before
// the freeze almost every time. So once the container is dumped, the
// source lets what it held into the emptied namespace, captures it there
// (with no address left on eth0, the kernel neither answers nor resets
// anything) and hands it to the destination, which injects it into its own
// hold: the frames reach the restored sockets with the rest. Rollback puts
// the address back and injects them at the source instead.

// maxReplay bounds what is captured (bytes); the rest is dropped, as it
// was before replay existed.
const maxReplay = 4 << 20

// TakeHeld releases the frames held on hostVeth into the container's
// emptied namespace at nsPath, after removing eth0's IPv4 addresses there,
// and returns the frames bound for mac (or broadcast), oldest first. The
// link stays unheld, and mac no longer pinned to it (see pinMAC).
// RestoreAddr and PinMAC undo the address removal and the unpinning.
func (h *Host) TakeHeld(hostVeth, nsPath string, mac net.HardwareAddr) ([][]byte, error) {
	var ifindex int
	err := withHandle(nsPath, func(nl *netlink.Handle) error {
		link, err := nl.LinkByName(containerIf)
		if err != nil {
			return err
		}
		ifindex = link.Attrs().Index
		addrs, err := retryDump(func() ([]netlink.Addr, error) { return nl.AddrList(link, netlink.FAMILY_V4) })
		if err != nil {
			return fmt.Errorf("list addrs: %w", err)
		}
		for _, a := range addrs {
			if err := nl.AddrDel(link, &a); err != nil {
				return fmt.Errorf("delete addr %s: %w", a.IPNet, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("take held frames: %w", err)
	}
	fd := -1
	err = inNetNS(nsPath, func() error {
		var err error
		// Protocol 0: no capture until the bind. Made with ETH_P_ALL, the
		// socket would capture on every interface at once, and the bind
		// to one would first take that back and wait for an RCU grace
		// period (synchronize_net: 6-10 ms here, inside the freeze).
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 2*maxReplay)
		// Say which frames still carry a partial checksum (offloaded, never
		// completed on the way: the lab's frames never leave the kernel).
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex})
	})
	if err != nil {
		if fd >= 0 {
			closeAsync(fd)
		}
		return nil, fmt.Errorf("take held frames: capture socket: %w", err)
	}
	defer closeAsync(fd)
	// From now on the container's frames go on to the destination (the
	// bridge floods them over vxlan0 until it learns where the MAC is);
	// what the hold queued is past the bridge already.
	if err := h.UnpinMAC(hostVeth, mac); err != nil {
		return nil, err
	}
	if err := h.Release(hostVeth); err != nil {
		return nil, err
	}
	if err := h.waitDrained(hostVeth); err != nil {
		return nil, err
	}
	var frames [][]byte
	size := 0
	buf := make([]byte, 65536)
	oob := make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.TpacketAuxdata{}))))
	for {
		n, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EWOULDBLOCK) {
			break
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return frames, fmt.Errorf("take held frames: %w", err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n < 14 || !replayable(buf[:n], mac) || size+n > maxReplay {
			continue
		}
		f := append([]byte(nil), buf[:n]...)
		if checksumUnchecked(oob[:oobn]) {
			completeChecksum(f)
		}
		frames = append(frames, f)
		size += n
	}
	return frames, nil
}

// replayable: a frame for the container (its MAC, or broadcast: ARP), not
// the hold's own drain frames.
func replayable(f []byte, mac net.HardwareAddr) bool {
	if int(f[12])<<8|int(f[13]) == junkType {
		return false
	}
	dst := net.HardwareAddr(f[0:6])
	return dst.String() == mac.String() || dst.String() == broadcastMAC.String()
}

// RestoreAddr puts the container's address back on eth0 in nsPath (after
// TakeHeld, when the container is restored there after all).
func RestoreAddr(nsPath string, addr net.IPNet) error {
	return withHandle(nsPath, func(nl *netlink.Handle) error {
		link, err := nl.LinkByName(containerIf)
		if err != nil {
			return err
		}
		return ensureOnlyAddr(nl, link, addr)
	})
}

// Inject sends frames out of hostVeth towards the container, through its
// qdisc: while it is held they queue with the rest.
func (h *Host) Inject(hostVeth string, frames [][]byte) error {
	if len(frames) == 0 {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	link, err := h.nl.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("inject on %s: %w", hostVeth, err)
	}
	if err := h.packetSocket(); err != nil {
		return err
	}
	// Queued frames stay charged to the sending socket until the hold lets
	// them go: a blocking send would wait for the restore, which waits for
	// this. So the socket's budget covers the most that is ever replayed,
	// and a send that would block drops the rest instead (their senders
	// retransmit, as without replay).
	_ = unix.SetsockoptInt(h.pkt, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4*maxReplay)
	for i, f := range frames {
		if len(f) < 14 {
			continue
		}
		to := &unix.SockaddrLinklayer{Protocol: htons(uint16(f[12])<<8 | uint16(f[13])), Ifindex: link.Attrs().Index, Halen: 6}
		copy(to.Addr[:], f[0:6])
		err := unix.Sendto(h.pkt, f, unix.MSG_DONTWAIT, to)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.ENOBUFS) {
			return fmt.Errorf("inject on %s: %d of %d frames dropped: %w", hostVeth, len(frames)-i, len(frames), err)
		}
		if err != nil {
			return fmt.Errorf("inject on %s: %w", hostVeth, err)
		}
	}
	return nil
}

// checksumUnchecked reads PACKET_AUXDATA: whether the kernel vouches for
// the frame's transport checksum without its bytes being the real one:
// partial (CHECKSUM_PARTIAL: the pseudo-header sum, left for a NIC to
// finish) or already validated (CHECKSUM_UNNECESSARY, which a frame sent
// with a partial checksum keeps through VXLAN within one kernel, as in the
// lab). Replayed as they are, such frames fail the receiver's check, so
// their checksum is computed; the kernel's verdict stands. Frames it has
// not checked keep theirs.
func checksumUnchecked(oob []byte) bool {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_PACKET && m.Header.Type == unix.PACKET_AUXDATA && len(m.Data) >= 4 {
			status := uint32(m.Data[0]) | uint32(m.Data[1])<<8 | uint32(m.Data[2])<<16 | uint32(m.Data[3])<<24
			return status&(unix.TP_STATUS_CSUMNOTREADY|unix.TP_STATUS_CSUM_VALID) != 0
		}
	}
	return false
}

// completeChecksum computes the TCP or UDP checksum of an IPv4 frame in
// place (nothing else is offloaded on the overlay).
func completeChecksum(f []byte) {
	if len(f) < 14+20 || f[12] != 0x08 || f[13] != 0x00 {
		return
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(ip[2])<<8 | int(ip[3])
	if ihl < 20 || total < ihl || total > len(ip) {
		return
	}
	seg := ip[ihl:total]
	var off int
	switch ip[9] {
	case unix.IPPROTO_TCP:
		off = 16
	case unix.IPPROTO_UDP:
		off = 6
	default:
		return
	}
	if len(seg) < off+2 {
		return
	}
	seg[off], seg[off+1] = 0, 0
	sum := uint32(0)
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(ip[12:20]) // source and destination addresses
	sum += uint32(ip[9]) + uint32(len(seg))
	add(seg)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	c := ^uint16(sum)
	if c == 0 && ip[9] == unix.IPPROTO_UDP {
		c = 0xffff
	}
	seg[off], seg[off+1] = byte(c>>8), byte(c)
}
