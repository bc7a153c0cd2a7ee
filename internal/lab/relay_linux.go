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
// a few thousand frames per second carry 1 Gbit/s (about 3 Gbit/s
// measured on a 2-vCPU VM). VXLAN frames are the exception: a packet
// socket cannot describe tunnel segmentation, so a relayed node's eth0
// segments them itself (links_linux.go) and they cross at MTU size,
// which costs a wake-up per frame (about 250 Mbit/s of overlay TCP on
// that VM). Frames move in batches (recvmmsg, sendmmsg), each batch due
// Delay after it was read; delay is constant, so a FIFO keeps the order.
// Both the socket and the sender's timerfd (an absolute deadline; Go's
// own timers overshoot by up to a millisecond, which would show in every
// round trip) wait in Go's netpoller, not in blocking system calls.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

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
	inFD, err := packetSocket(inLink, true)
	if err != nil {
		return err
	}
	// Through Go's netpoller: waiting for frames parks a goroutine, not a
	// thread, which costs far less per frame than a blocking recvmmsg.
	in, err := pollable(inFD, inLink.Name)
	if err != nil {
		return err
	}
	defer in.Close()
	stopRead := context.AfterFunc(ctx, func() { _ = in.SetReadDeadline(time.Now()) })
	defer stopRead()
	out, err := packetSocket(outLink, false)
	if err != nil {
		return err
	}
	defer unix.Close(out)

	var queued atomic.Int64
	q := make(chan heldBatch, 4096)
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

	rb := newBatch(relayBatch, vnetHdrLen+65536+256)
	var dropped, lost, frames uint64
	last := time.Now()
	for ctx.Err() == nil {
		n, err := rb.recv(in.RawConn)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, unix.EINTR) {
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
		hb := heldBatch{due: monotonic() + delay}
		for i := 0; i < n; i++ {
			frames++
			size := int(rb.msgs[i].Len)
			switch {
			case c.Loss > 0 && rand.Float64() < c.Loss:
				lost++
			case queued.Load()+int64(hb.bytes+size) > c.QueueBytes:
				dropped++
			default:
				hb.frames = append(hb.frames, append([]byte(nil), rb.bufs[i][:size]...))
				hb.bytes += size
			}
		}
		if len(hb.frames) > 0 {
			queued.Add(int64(hb.bytes))
			select {
			case q <- hb:
			default:
				queued.Add(-int64(hb.bytes))
				dropped += uint64(len(hb.frames))
			}
		}
		if time.Since(last) > time.Minute {
			c.Log.Info("relay", "in", inLink.Name, "frames", frames, "lost", lost, "dropped", dropped)
			last = time.Now()
		}
		select {
		case <-failed:
			return fmt.Errorf("write %s: %w", outLink.Name, sendErr)
		default:
		}
	}
	return nil
}

// relayBatch is the most frames one recvmmsg or sendmmsg moves.
const relayBatch = 64

// heldBatch is the frames one recvmmsg read, due together.
type heldBatch struct {
	due    int64 // CLOCK_MONOTONIC, ns
	frames [][]byte
	bytes  int
}

// slack: a batch due this soon goes now.
const slack = 20 * int64(time.Microsecond)

// sendLoop writes each batch when it is due.
func sendLoop(fd int, q <-chan heldBatch, queued *atomic.Int64) error {
	// Drain on return so the reader never blocks on a dead writer.
	defer func() {
		go func() {
			for range q {
			}
		}()
	}()
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("timerfd: %w", err)
	}
	timer, err := pollable(tfd, "timerfd")
	if err != nil {
		return fmt.Errorf("timerfd: %w", err)
	}
	defer timer.Close()
	var tick [8]byte
	sb := newBatch(relayBatch, 0)
	for hb := range q {
		if hb.due > monotonic()+slack {
			at := unix.ItimerSpec{Value: unix.NsecToTimespec(hb.due)}
			if err := unix.TimerfdSettime(tfd, unix.TFD_TIMER_ABSTIME, &at, nil); err != nil {
				return fmt.Errorf("timerfd: %w", err)
			}
			if _, err := timer.File.Read(tick[:]); err != nil {
				return fmt.Errorf("timerfd: %w", err)
			}
		}
		err := sb.send(fd, hb.frames)
		queued.Add(-int64(hb.bytes))
		if err != nil {
			return err
		}
	}
	return nil
}

// mmsgBatch is the message vector of recvmmsg and sendmmsg.
type mmsgBatch struct {
	msgs []unix.Mmsghdr
	iovs []unix.Iovec
	bufs [][]byte // receive buffers
}

// newBatch makes a vector of n messages, each with its own buffer of
// size bytes when size > 0 (for receiving).
func newBatch(n, size int) *mmsgBatch {
	b := &mmsgBatch{msgs: make([]unix.Mmsghdr, n), iovs: make([]unix.Iovec, n)}
	for i := range b.msgs {
		b.msgs[i].Hdr.Iov = &b.iovs[i]
		b.msgs[i].Hdr.SetIovlen(1)
		if size > 0 {
			b.bufs = append(b.bufs, make([]byte, size))
			b.iovs[i].Base = &b.bufs[i][0]
			b.iovs[i].SetLen(size)
		}
	}
	return b
}

// recv reads up to len(msgs) frames, waiting for the first.
func (b *mmsgBatch) recv(rc syscall.RawConn) (int, error) {
	var n uintptr
	var errno unix.Errno
	err := rc.Read(func(fd uintptr) bool {
		n, _, errno = unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.msgs[0])),
			uintptr(len(b.msgs)), unix.MSG_DONTWAIT, 0, 0)
		return errno != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// polledFD is a non-blocking descriptor in Go's netpoller.
type polledFD struct {
	*os.File
	syscall.RawConn
}

func pollable(fd int, name string) (*polledFD, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &polledFD{f, rc}, nil
}

// send writes frames, relayBatch at a time; a frame the kernel refuses
// (no buffer space, too big) is dropped, as a link would.
func (b *mmsgBatch) send(fd int, frames [][]byte) error {
	for len(frames) > 0 {
		k := min(len(frames), len(b.msgs))
		for i := 0; i < k; i++ {
			b.iovs[i].Base = &frames[i][0]
			b.iovs[i].SetLen(len(frames[i]))
		}
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(k), 0, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.ENOBUFS || errno == unix.EAGAIN || errno == unix.EMSGSIZE || errno == unix.EINVAL:
			n = 1 // the first frame failed: drop it
		case errno != 0:
			return errno
		}
		frames = frames[n:]
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
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind packet socket to %s: %w", dev, err)
	}
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
