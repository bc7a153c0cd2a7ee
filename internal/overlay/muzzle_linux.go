//go:build linux

package overlay

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Muzzling a frozen container's outbound frames.
//
// A frozen container's processes stop, its kernel does not: its TCP
// sockets keep their timers until CRIU puts them in repair mode, and
// retransmit what their peers' held acknowledgements have not covered.
// On a loaded host a dump can take seconds, and those retransmissions then
// left the source after the destination had announced the container's MAC
// (the switch): each taught the peers that learn forwarding from frames
// (the lab's client node; any VXLAN peer with learning) that the MAC was
// back at the source, where their next frames were lost once the source
// had handed over what it held, costing them TCP's back-off after the
// restore (seen in a storm of 20 migrations: stalls 1.3-5.2 s beyond the
// downtime, each after such a retransmission from the source).
//
// So from the freeze the container's own eth0 holds what the container
// sends, with the same token-bucket queue as the host side's hold (see
// hold_linux.go): opened when the endpoint is made, before its link is up,
// closed at the freeze (Muzzle), opened again if the container runs on
// here (Unmuzzle: a rollback's resumed sockets retransmit at once). A
// committed migration deletes the queue with the namespace; the restored
// sockets retransmit from the destination.

// muzzleSrc is the source MAC of the frames that drain and kick the
// container-side bucket: not the container's (a frame with its MAC that
// reached a learning peer would point it back here), and their
// destination is link-local (01:80:c2:00:00:0e), which a bridge never
// forwards.
var (
	muzzleSrc = net.HardwareAddr{0x02, 0xc0, 0xa7, 0, 0, 0x01}
	muzzleDst = net.HardwareAddr{0x01, 0x80, 0xc2, 0, 0, 0x0e}
)

// openMuzzle puts the open queue on the container's eth0; the link must
// not be up yet (see hold_linux.go on adding a root qdisc to a live link).
func openMuzzle(nsPath string, link netlink.Link) error {
	return inNetNS(nsPath, func() error {
		return SetTBF(link, holdHandle, releaseRate, 1<<20, holdLimit, true)
	})
}

// Muzzle makes the container's eth0 hold every frame the container sends
// until Unmuzzle. A container whose endpoint has no such queue (made by an
// older agent) is left as it is: false, nil.
func Muzzle(nsPath string, mtu int) (bool, error) {
	done := false
	err := inNetNS(nsPath, func() error {
		link, open, err := muzzleState()
		if err != nil || link == nil || !open {
			return err
		}
		if mtu <= 0 {
			mtu = link.Attrs().MTU
		}
		burst := uint32(mtu + 14)
		if err := SetTBF(link, holdHandle, 1, burst, holdLimit, false); err != nil {
			return fmt.Errorf("muzzle: %w", err)
		}
		done = true
		// Empty the bucket: one frame of exactly its size.
		return sendOut(link, int(burst))
	})
	return done, err
}

// Unmuzzle lets out what the container sent since Muzzle, and what it
// sends next. Not muzzled: nothing to do.
func Unmuzzle(nsPath string) error {
	return inNetNS(nsPath, func() error {
		link, open, err := muzzleState()
		if err != nil || link == nil || open {
			return err
		}
		if err := SetTBF(link, holdHandle, releaseRate, 1<<20, holdLimit, false); err != nil {
			return fmt.Errorf("unmuzzle: %w", err)
		}
		// The waiting frames leave with the next dequeue: a small frame
		// makes it happen now.
		return sendOut(link, 60)
	})
}

// Muzzled says whether the container's eth0 holds what it sends.
func Muzzled(nsPath string) (bool, error) {
	muzzled := false
	err := inNetNS(nsPath, func() error {
		link, open, err := muzzleState()
		muzzled = link != nil && !open
		return err
	})
	return muzzled, err
}

// muzzleState finds eth0 in the calling thread's namespace and its queue:
// link nil if it has none, open if it lets frames through.
func muzzleState() (netlink.Link, bool, error) {
	link, err := netlink.LinkByName(containerIf)
	if err != nil {
		return nil, false, fmt.Errorf("find %s: %w", containerIf, err)
	}
	qs, err := netlink.QdiscList(link)
	if err != nil {
		return nil, false, err
	}
	for _, q := range qs {
		if q.Attrs().Handle != holdHandle || q.Attrs().Parent != netlink.HANDLE_ROOT {
			continue
		}
		t, ok := q.(*netlink.Tbf)
		return link, ok && t.Rate >= releaseRate/2, nil
	}
	return nil, false, nil
}

// sendOut sends one frame of size bytes out of link through its queue,
// from the calling thread's namespace.
func sendOut(link netlink.Link, size int) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	frame := make([]byte, size)
	copy(frame[0:6], muzzleDst)
	copy(frame[6:12], muzzleSrc)
	frame[12], frame[13] = junkType>>8, junkType&0xff
	to := &unix.SockaddrLinklayer{Protocol: htons(junkType), Ifindex: link.Attrs().Index, Halen: 6}
	copy(to.Addr[:], muzzleDst)
	if err := unix.Sendto(fd, frame, unix.MSG_DONTWAIT, to); err != nil {
		return fmt.Errorf("send drain frame on %s: %w", link.Attrs().Name, err)
	}
	return nil
}
