package sample

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// StreamOptions configures Stream.
type StreamOptions struct {
	Addr         string        // server stream address, IP:PORT
	Duration     time.Duration // sending time; 0 sends until ctx is cancelled
	Rate         int64         // bytes per second; <= 0 is unlimited
	Chunk        int           // bytes per write; default 1024
	DrainTimeout time.Duration // bound on waiting for outstanding echo; default 30s
	DialTimeout  time.Duration // default 10s
	Timeline     io.Writer     // optional CSV "t_ms,bytes_echoed" every 10 ms
}

// Report is the result of one stream run.
type Report struct {
	Addr            string  `json:"addr"`
	Sent            int64   `json:"sent"`
	Received        int64   `json:"received"`
	Errors          int64   `json:"errors"`      // mismatching echoed bytes
	FirstError      int64   `json:"first_error"` // offset of the first mismatch, -1 if none
	MaxGapMs        float64 `json:"max_gap_ms"`  // longest echo stall while data was outstanding
	GapAt           float64 `json:"gap_at"`      // seconds from start to the beginning of that stall
	ConnectionError string  `json:"connection_error"`
	DurationMs      int64   `json:"duration_ms"`
}

// OK reports whether the run was clean: no connection error, no pattern
// mismatch and every sent byte echoed.
func (r *Report) OK() bool {
	return r.ConnectionError == "" && r.Errors == 0 && r.Received == r.Sent
}

// streamState is shared by the writer and reader goroutines.
type streamState struct {
	mu           sync.Mutex
	start        time.Time
	sent         int64
	received     int64
	errors       int64
	firstError   int64
	lastProgress time.Time // last echo read, or when data became outstanding
	maxGap       time.Duration
	gapStart     time.Time
	connErr      string
	echoed       atomic.Int64 // mirror of received for the timeline
}

func (st *streamState) setConnErr(msg string) {
	st.mu.Lock()
	if st.connErr == "" {
		st.connErr = msg
	}
	st.mu.Unlock()
}

// beforeWrite starts the stall clock when nothing was outstanding.
func (st *streamState) beforeWrite(now time.Time) {
	st.mu.Lock()
	if st.sent <= st.received {
		st.lastProgress = now
	}
	st.mu.Unlock()
}

func (st *streamState) addSent(n int) {
	st.mu.Lock()
	st.sent += int64(n)
	st.mu.Unlock()
}

func (st *streamState) gap(now time.Time) {
	if g := now.Sub(st.lastProgress); g > st.maxGap {
		st.maxGap = g
		st.gapStart = st.lastProgress
	}
}

// received records n echoed bytes read at now.
func (st *streamState) addReceived(b []byte, now time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if bad, i := CheckPattern(b, st.received); bad > 0 {
		if st.errors == 0 {
			st.firstError = st.received + int64(i)
		}
		st.errors += int64(bad)
	}
	st.gap(now)
	st.lastProgress = now
	st.received += int64(len(b))
	st.echoed.Store(st.received)
}

func (st *streamState) outstanding() int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.sent - st.received
}

// Stream dials opts.Addr and runs StreamConn on the connection. A dial
// failure is reported in Report.ConnectionError.
func Stream(ctx context.Context, opts StreamOptions) *Report {
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	start := time.Now()
	d := net.Dialer{Timeout: opts.DialTimeout}
	c, err := d.DialContext(ctx, "tcp", opts.Addr)
	if err != nil {
		return &Report{
			Addr:            opts.Addr,
			FirstError:      -1,
			ConnectionError: fmt.Sprintf("dial: %v", err),
			DurationMs:      time.Since(start).Milliseconds(),
		}
	}
	return StreamConn(ctx, c, opts)
}

// StreamConn streams the pattern over conn (which it closes) and verifies
// the echo. Sending stops after opts.Duration or when ctx is cancelled; the
// run then waits up to opts.DrainTimeout for the outstanding echo.
func StreamConn(ctx context.Context, conn net.Conn, opts StreamOptions) *Report {
	if opts.Chunk <= 0 {
		opts.Chunk = 1024
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	if opts.Addr == "" && conn.RemoteAddr() != nil {
		opts.Addr = conn.RemoteAddr().String()
	}
	st := &streamState{start: time.Now(), firstError: -1}
	st.lastProgress = st.start

	var closing atomic.Bool
	stop := make(chan struct{})
	progress := make(chan struct{}, 1)
	writerDone := make(chan struct{})
	readerDone := make(chan struct{})
	timelineDone := make(chan struct{})
	timelineStop := make(chan struct{})

	go func() {
		defer close(readerDone)
		readLoop(conn, st, &closing, progress)
	}()
	go func() {
		defer close(writerDone)
		writeLoop(conn, st, opts, stop)
	}()
	go func() {
		defer close(timelineDone)
		if opts.Timeline != nil {
			timelineLoop(opts.Timeline, st, timelineStop)
		}
	}()

	var timer <-chan time.Time
	if opts.Duration > 0 {
		t := time.NewTimer(opts.Duration)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ctx.Done():
	case <-timer:
	case <-writerDone:
	case <-readerDone:
	}
	close(stop)
	conn.SetWriteDeadline(time.Now()) // unblock a writer stuck on a full socket
	<-writerDone

	drain := time.NewTimer(opts.DrainTimeout)
	defer drain.Stop()
	timedOut := false
drainLoop:
	for st.outstanding() > 0 {
		select {
		case <-progress:
		case <-readerDone:
			break drainLoop
		case <-drain.C:
			timedOut = true
			break drainLoop
		}
	}
	end := time.Now()
	closing.Store(true)
	conn.Close()
	<-readerDone
	close(timelineStop)
	<-timelineDone

	st.mu.Lock()
	defer st.mu.Unlock()
	if st.sent > st.received {
		st.gap(end) // the stall still open when we gave up counts too
		if timedOut {
			if st.connErr == "" {
				st.connErr = fmt.Sprintf("timeout after %s waiting for echo of %d bytes",
					opts.DrainTimeout, st.sent-st.received)
			}
		}
	}
	return &Report{
		Addr:            opts.Addr,
		Sent:            st.sent,
		Received:        st.received,
		Errors:          st.errors,
		FirstError:      st.firstError,
		MaxGapMs:        float64(st.maxGap.Microseconds()) / 1000,
		GapAt:           gapAt(st),
		ConnectionError: st.connErr,
		DurationMs:      end.Sub(st.start).Milliseconds(),
	}
}

func gapAt(st *streamState) float64 {
	if st.maxGap == 0 {
		return 0
	}
	return math.Round(st.gapStart.Sub(st.start).Seconds()*1000) / 1000
}

// writeLoop sends the pattern, paced by a token bucket whose burst is capped
// at max(chunk, rate/4) so that a stall is not followed by a huge burst.
func writeLoop(conn net.Conn, st *streamState, opts StreamOptions, stop <-chan struct{}) {
	buf := make([]byte, opts.Chunk)
	rate := float64(opts.Rate)
	burst := math.Max(float64(opts.Chunk), rate/4)
	credit := 0.0
	last := time.Now()
	var off int64
	for {
		select {
		case <-stop:
			return
		default:
		}
		if rate > 0 {
			now := time.Now()
			credit = math.Min(burst, credit+rate*now.Sub(last).Seconds())
			last = now
			if need := float64(len(buf)) - credit; need > 0 {
				t := time.NewTimer(time.Duration(need / rate * float64(time.Second)))
				select {
				case <-stop:
					t.Stop()
					return
				case <-t.C:
				}
				continue
			}
			credit -= float64(len(buf))
		}
		FillPattern(buf, off)
		st.beforeWrite(time.Now())
		n, err := conn.Write(buf)
		off += int64(n)
		st.addSent(n)
		if err != nil {
			select {
			case <-stop:
				if errors.Is(err, os.ErrDeadlineExceeded) {
					return
				}
			default:
			}
			st.setConnErr(fmt.Sprintf("write: %v", err))
			return
		}
	}
}

// readLoop reads and verifies the echo until the connection fails or is
// closed by StreamConn.
func readLoop(conn net.Conn, st *streamState, closing *atomic.Bool, progress chan<- struct{}) {
	buf := make([]byte, 64<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			st.addReceived(buf[:n], time.Now())
			select {
			case progress <- struct{}{}:
			default:
			}
		}
		if err != nil {
			if closing.Load() {
				return
			}
			if errors.Is(err, io.EOF) {
				st.setConnErr("read: connection closed by peer (EOF)")
			} else {
				st.setConnErr(fmt.Sprintf("read: %v", err))
			}
			return
		}
	}
}

// timelineLoop writes "t_ms,bytes_echoed" rows every 10 ms until stop.
func timelineLoop(w io.Writer, st *streamState, stop <-chan struct{}) {
	fmt.Fprintln(w, "t_ms,bytes_echoed")
	row := func() {
		fmt.Fprintf(w, "%d,%d\n", time.Since(st.start).Milliseconds(), st.echoed.Load())
	}
	row()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			row()
			return
		case <-t.C:
			row()
		}
	}
}
