//go:build linux

package overlay

import (
	"fmt"
	"net"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Holding a container's inbound traffic during a migration.
//
// While a container is frozen, its clients keep sending; a dropped segment
// costs a client its retransmission timeout, which doubles each time
// (200 ms, 400 ms, 800 ms ...), so a 400 ms freeze can stall a client for
// 1.4 s. Instead, the destination host holds every frame bound for the
// container in a queue on the host side of its veth, and releases them the
// moment the restored sockets are live: the client's retransmission is
// answered at once and its back-off ends.
//
// The queue is a token-bucket qdisc (sch_tbf; this kernel has neither
// sch_plug nor netem) whose bucket is emptied and refills at one byte per
// second: frames queue instead of passing, up to holdLimit bytes. An
// emptied bucket must hold exactly one frame's worth, so it is drained by
// sending one junk frame (an ethertype nobody handles) of that size.
// Release raises the rate, then one more junk frame makes the kernel
// dequeue everything that waited.
//
// The qdisc is never removed while the container lives, only opened
// (rate raised to releaseRate, far above what a veth carries) and closed
// again: adding or deleting a root qdisc on a link that is up deactivates
// the link's queues for a moment, and frames that cross it then are
// dropped. Right after a restore that moment is when the clients' next
// frames arrive, and each drop cost one a 200 ms retransmission timeout.
// Changing an existing qdisc drops nothing. So the endpoint gets the open
// qdisc when it is made (AttachEndpoint), before its link is up.

const (
	holdHandle  = 0xc0a70000          // qdisc handle c0a7:
	holdLimit   = 8 << 20             // bytes queued at most while held
	junkType    = 0x88b5              // IEEE "local experimental" ethertype
	releaseRate = 100_000_000_000 / 8 // 100 Gbit/s: open
)

// Hold makes the host side of a container's veth queue every frame bound
// for the container, and brings the link up. Nothing reaches the
// container's namespace until Release.
func (h *Host) Hold(hostVeth string, mtu int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	link, err := h.nl.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("hold %s: %w", hostVeth, err)
	}
	if mtu <= 0 {
		mtu = link.Attrs().MTU
	}
	burst := uint32(mtu + 14)
	if err := h.tbf(link, 1, burst, true); err != nil {
		return fmt.Errorf("hold %s: %w", hostVeth, err)
	}
	if err := h.nl.LinkSetUp(link); err != nil {
		return err
	}
	if err := waitOperUp(h.nl, hostVeth); err != nil {
		return err
	}
	// Empty the bucket: one frame of exactly its size.
	return h.junk(link, int(burst))
}

// IsHeld says whether hostVeth's inbound frames are being held.
func (h *Host) IsHeld(hostVeth string) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	link, err := h.nl.LinkByName(hostVeth)
	if err != nil {
		return false, err
	}
	held, _, err := h.holdState(link)
	return held, err
}

// Release lets the held frames through, in order, and stops holding.
func (h *Host) Release(hostVeth string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	link, err := h.nl.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("release %s: %w", hostVeth, err)
	}
	held, n, err := h.holdState(link)
	if err != nil || !held {
		return err // nothing held: nothing to release
	}
	if n > pacedAbove {
		return h.releasePaced(link, n)
	}
	if err := h.tbf(link, releaseRate, 1<<20, false); err != nil {
		return fmt.Errorf("release %s: %w", hostVeth, err)
	}
	// The qdisc stays, open; the frames drain at once (see waitDrained).
	return h.junk(link, 60)
}

// Paced release. Frames that cross a veth wait in the receiving CPU's
// backlog, which drops beyond net.core.netdev_max_backlog (1000 by
// default): a thousand connections' worth of held frames let go at once
// lost hundreds, and each loss cost its client a retransmission timeout
// (seen: stalls of 1.6 s after 0.8 s of downtime). So a big queue is let
// go at a pace the receiver keeps up with (bursts of about a hundred
// small frames), and the qdisc opens fully once it is empty (or after
// pacedFor, whatever is left then goes at once).
const (
	pacedAbove = 256      // frames queued: more are paced
	pacedRate  = 48 << 20 // bytes/s while pacing
	pacedBurst = 16 << 10 // bytes per burst while pacing
	pacedFor   = 300 * time.Millisecond
)

func (h *Host) releasePaced(link netlink.Link, queued int) error {
	name := link.Attrs().Name
	if err := h.tbf(link, pacedRate, pacedBurst, false); err != nil {
		return fmt.Errorf("release %s: %w", name, err)
	}
	if err := h.junk(link, 60); err != nil {
		return err
	}
	deadline := time.Now().Add(pacedFor)
	for h.queued(link) > 0 && time.Now().Before(deadline) {
		time.Sleep(500 * time.Microsecond)
	}
	if err := h.tbf(link, releaseRate, 1<<20, false); err != nil {
		return fmt.Errorf("release %s: %w", name, err)
	}
	return h.junk(link, 60)
}

// queued is the number of frames held on link's qdisc (0 if unknown).
func (h *Host) queued(link netlink.Link) int {
	_, n, _ := h.holdState(link)
	return n
}

// waitDrained waits (briefly, up to ~100 ms) until nothing is queued on
// hostVeth's hold any more: after Release, when what it let go must have
// arrived before going on.
func (h *Host) waitDrained(hostVeth string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	link, err := h.nl.LinkByName(hostVeth)
	if err != nil {
		return err
	}
	for i := 0; i < 100 && h.queued(link) > 0; i++ {
		time.Sleep(time.Millisecond)
	}
	return nil
}

// openHold puts the hold's qdisc on link, open, unless it is there.
func (h *Host) openHold(link netlink.Link) error {
	qs, err := h.nl.QdiscList(link)
	if err != nil {
		return err
	}
	for _, q := range qs {
		if q.Attrs().Handle == holdHandle {
			return nil
		}
	}
	if err := h.tbf(link, releaseRate, 1<<20, true); err != nil {
		return fmt.Errorf("hold qdisc: %w", err)
	}
	return nil
}

// tbf adds (create) or changes the holding token bucket: rate in bytes/s,
// burst in bytes.
func (h *Host) tbf(link netlink.Link, rate uint64, burst uint32, create bool) error {
	return h.inNS(func() error { return SetTBF(link, holdHandle, rate, burst, holdLimit, create) })
}

// SetTBF puts a token-bucket qdisc at the root of link, or changes the one
// there: rate in bytes/s, burst and limit in bytes ("tc qdisc add|change
// dev X root handle H tbf rate R burst B limit L"). netlink's Tbf type
// cannot set TCA_TBF_BURST, which is what lets a slow bucket hold a whole
// frame, so the message is built here. It acts in the calling thread's
// network namespace.
func SetTBF(link netlink.Link, handle uint32, rate uint64, burst, limit uint32, create bool) error {
	flags := unix.NLM_F_ACK
	if create {
		flags |= unix.NLM_F_CREATE | unix.NLM_F_REPLACE
	}
	req := nl.NewNetlinkRequest(unix.RTM_NEWQDISC, flags)
	req.AddData(&nl.TcMsg{
		Family:  nl.FAMILY_ALL,
		Ifindex: int32(link.Attrs().Index),
		Handle:  handle,
		Parent:  netlink.HANDLE_ROOT,
	})
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("tbf")))
	opts := nl.NewRtAttr(nl.TCA_OPTIONS, nil)
	qopt := nl.TcTbfQopt{Limit: limit}
	qopt.Rate.Linklayer = 1 // ethernet: no rate table needed
	if rate < 1<<32 {
		qopt.Rate.Rate = uint32(rate)
	} else {
		qopt.Rate.Rate = ^uint32(0)
		opts.AddRtAttr(nl.TCA_TBF_RATE64, nl.Uint64Attr(rate))
	}
	opts.AddRtAttr(nl.TCA_TBF_PARMS, qopt.Serialize())
	opts.AddRtAttr(nl.TCA_TBF_BURST, nl.Uint32Attr(burst))
	req.AddData(opts)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// inNS runs fn on a thread in the host's netns.
func (h *Host) inNS(fn func() error) error {
	return onThread(func() error { return netns.Set(h.ns) }, fn)
}

// junk sends one frame of size bytes out of link towards the container:
// an ethertype no stack handles, so the container's kernel drops it.
func (h *Host) junk(link netlink.Link, size int) error {
	if err := h.packetSocket(); err != nil {
		return err
	}
	fd := h.pkt
	frame := make([]byte, size)
	copy(frame[0:6], net.HardwareAddr{0x02, 0, 0, 0, 0, 0})
	copy(frame[6:12], link.Attrs().HardwareAddr)
	frame[12], frame[13] = junkType>>8, junkType&0xff
	to := &unix.SockaddrLinklayer{Protocol: htons(junkType), Ifindex: link.Attrs().Index, Halen: 6}
	copy(to.Addr[:], frame[0:6])
	if err := unix.Sendto(fd, frame, unix.MSG_DONTWAIT, to); err != nil {
		return fmt.Errorf("send drain frame on %s: %w", link.Attrs().Name, err)
	}
	return nil
}

// packetSocket opens h.pkt if needed; h.mu must be held.
func (h *Host) packetSocket() error {
	if h.pkt > 0 {
		return nil
	}
	fd := -1
	err := h.inNS(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	h.pkt = fd
	return nil
}

// holdState reads link's hold qdisc once: whether it holds (its rate is
// the closed one) and how many frames wait in it.
func (h *Host) holdState(link netlink.Link) (held bool, queued int, err error) {
	qs, err := h.nl.QdiscList(link)
	if err != nil {
		return false, 0, err
	}
	for _, q := range qs {
		if q.Attrs().Handle != holdHandle {
			continue
		}
		if st := q.Attrs().Statistics; st != nil {
			queued = int(st.Queue.Qlen)
		}
		t, ok := q.(*netlink.Tbf)
		return !ok || t.Rate < releaseRate/2, queued, nil
	}
	return false, 0, nil
}
