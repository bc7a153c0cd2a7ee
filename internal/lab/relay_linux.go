package lab

// The relay is the lab's delay and loss emulation. This kernel has no
// netem, so a link with a delay or a loss runs the frames its node sends
// through a small userspace path; everything else stays in the kernel:
//
//	node eth0 ==veth== coatI-eN          coatI-eNr ==veth== coatI-eNb (port of coatI bridge)
//	   (TBF)             (TBF) |  relay  ^   | tc ingress: u32 match-all,
//	                           `-- read -'   |  mirred redirect to coatI-eN egress
//	                                <--------'  (the way back, no userspace)
//
// The relay reads each frame the node sends from coatI-eN with an
// AF_PACKET socket, drops it with probability Loss, holds it for Delay
// and writes it to coatI-eNr, whose peer puts it on the bridge. Both
// sockets use PACKET_VNET_HDR, so a TCP stream's 64 KiB GSO frames cross
// the relay whole, with their segmentation and checksum offload intact:
// a few thousand frames per second carry 1 Gbit/s. Delay is constant,
// so a FIFO keeps the frames in order. The sender waits on a timerfd
// with an absolute deadline, on its own thread with a 1 ns timer slack:
// Go's timers overshoot by up to a millisecond, which would show in
// every round trip.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// RelayConfig is one relay: frames read on In leave, delayed and thinned,
// on Out.
type RelayConfig struct {
	// In and Out are link names, optionally with the link's index
	// ("coat0-e1@12"): the relay ends when its links are gone, also when
	// a link of the same name replaced one.
	In, Out string
	Delay   time.Duration
	Loss    float64
	// QueueBytes bounds the frames held at once (0: 64 MiB); beyond it
	// frames are dropped, as a full netem queue would.
	QueueBytes int64
	Log        *slog.Logger
}

const vnetHdrLen = 10 // struct virtio_net_hdr

type heldFrame struct {
	due int64 // CLOCK_MONOTONIC, ns
	b   []byte
}

// Relay runs until ctx ends or a link goes away (lab down deleted it).
func Relay(ctx context.Context, c RelayConfig) error {
	if c.QueueBytes == 0 {
		c.QueueBytes = 64 << 20
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	inLink, err := relayLink(c.In)
	if err != nil {
		return err
	}
	outLink, err := relayLink(c.Out)
	if err != nil {
		return err
	}
	in, err := packetSocket(inLink, true)
	if err != nil {
		return err
	}
	defer unix.Close(in)
	out, err := packetSocket(outLink, false)
	if err != nil {
		return err
	}
	defer unix.Close(out)

	var queued atomic.Int64
	q := make(chan heldFrame, 1<<16)
	var sendErr error
	failed := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if sendErr = sendLoop(out, q, &queued); sendErr != nil {
			close(failed)
		}
	}()
	defer func() { close(q); wg.Wait() }()
	delay := c.Delay.Nanoseconds()

	var dropped, lost, frames uint64
	buf := make([]byte, vnetHdrLen+256<<10)
	last := time.Now()
	for ctx.Err() == nil {
		n, err := unix.Read(in, buf)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if now, lerr := net.InterfaceByName(inLink.Name); lerr != nil || now.Index != inLink.Index {
				return nil // the lab took its link away
			}
			// Down for a moment (ENETDOWN): the link comes back up.
			c.Log.Warn("relay read", "in", inLink.Name, "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		frames++
		if c.Loss > 0 && rand.Float64() < c.Loss {
			lost++
			continue
		}
		if queued.Load()+int64(n) > c.QueueBytes {
			dropped++
			continue
		}
		b := make([]byte, n)
		copy(b, buf[:n])
		queued.Add(int64(n))
		select {
		case q <- heldFrame{due: monotonic() + delay, b: b}:
		default:
			queued.Add(-int64(n))
			dropped++
		}
		if time.Since(last) > time.Minute {
			c.Log.Info("relay", "in", c.In, "frames", frames, "lost", lost, "dropped", dropped)
			last = time.Now()
		}
		select {
		case <-failed:
			return fmt.Errorf("write %s: %w", c.Out, sendErr)
		default:
		}
	}
	return nil
}

// slack: a frame due this soon goes now, so a burst costs no timer per
// frame.
const slack = 20 * int64(time.Microsecond)

// sendLoop writes each frame when it is due.
func sendLoop(fd int, q <-chan heldFrame, queued *atomic.Int64) error {
	// Drain on return so the reader never blocks on a dead writer.
	defer func() {
		go func() {
			for range q {
			}
		}()
	}()
	runtime.LockOSThread() // the timer slack below is per thread
	defer runtime.UnlockOSThread()
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("timerfd: %w", err)
	}
	defer unix.Close(tfd)
	var tick [8]byte
	for f := range q {
		if f.due > monotonic()+slack {
			at := unix.ItimerSpec{Value: unix.NsecToTimespec(f.due)}
			if err := unix.TimerfdSettime(tfd, unix.TFD_TIMER_ABSTIME, &at, nil); err != nil {
				return fmt.Errorf("timerfd: %w", err)
			}
			if _, err := unix.Read(tfd, tick[:]); err != nil && !errors.Is(err, unix.EINTR) {
				return fmt.Errorf("timerfd: %w", err)
			}
		}
		_, err := unix.Write(fd, f.b)
		queued.Add(-int64(len(f.b)))
		if err != nil && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EMSGSIZE) {
			return err
		}
	}
	return nil
}

// monotonic is CLOCK_MONOTONIC in ns, the timerfd's clock.
func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// relayLink finds the link "NAME" or "NAME@INDEX".
func relayLink(spec string) (*net.Interface, error) {
	name, idx, withIndex := strings.Cut(spec, "@")
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("relay link %s: %w", name, err)
	}
	if withIndex && idx != strconv.Itoa(ifi.Index) {
		return nil, fmt.Errorf("relay link %s has index %d, not %s: it was made anew; run `coat lab up`", name, ifi.Index, idx)
	}
	return ifi, nil
}

// packetSocket opens a raw packet socket with virtio-net headers bound to
// ifi: a receiving one (every protocol, not the frames sent out of ifi)
// or a sending one (protocol 0: receives nothing).
func packetSocket(ifi *net.Interface, recv bool) (int, error) {
	dev := ifi.Name
	proto := 0
	if recv {
		proto = int(htons(unix.ETH_P_ALL))
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, fmt.Errorf("packet socket: %w", err)
	}
	opts := []struct {
		level, opt, val int
		what            string
	}{
		{unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1, "PACKET_VNET_HDR"},
		{unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8 << 20, "SO_RCVBUFFORCE"},
		{unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8 << 20, "SO_SNDBUFFORCE"},
	}
	if recv {
		opts = append(opts, struct {
			level, opt, val int
			what            string
		}{unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1, "PACKET_IGNORE_OUTGOING"})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.val); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("packet socket on %s: %s: %w", dev, o.what, err)
		}
	}
	if recv {
		// Wake up now and then to notice the end of ctx.
		tv := unix.Timeval{Usec: 250000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind packet socket to %s: %w", dev, err)
	}
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
