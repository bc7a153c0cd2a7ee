package agent

// Post-copy prefetch: the destination's relay between CRIU's lazy-pages
// daemon and the source's page server (through the tunnel) fetches ahead.
//
// Why: the daemon keeps one background request in flight and drops its
// size back to 64 KiB at every page fault (criu/uffd.c), so while the
// restored container runs and faults, its memory arrives at about 64 KiB
// per round trip: 1.5-2 MB/s over a 100 Mbit/s link with 20 ms of RTT (a
// 64 MiB redis took 32 s). The relay knows every page the daemon will ask
// for: the lazy entries of the image's pagemap-ID.img, which are here. So
// it keeps a window of requests of its own in flight on the same
// connection, in address order, and holds what arrives until the daemon
// asks for it. The page server answers requests one by one in order, so
// the relay knows which answer is whose. Behind every request of the
// daemon (a fault, mostly), once the restore is over, it also asks for
// the next 64 KiB of that range: a program that faults on one page of a
// value or a scan faults on the next one moments later, and that page is
// then already on its way instead of a round trip away.
//
// What keeps the daemon's view exact:
//   - it gets its answers in the order of its requests, each in the page
//     server's form (header, then the pages);
//   - every request of a known range is answered from here and whole: the
//     pages not here or on their way are asked for at once (ahead of the
//     relay's own fetching), and the answer goes when all are here. Never
//     fewer pages than asked: a fault on a page of a request in flight
//     waits for that request's answer (criu/uffd.c, is_page_queued), and
//     a short answer would leave it waiting until the background transfer
//     reached that page (seen with an earlier relay that did: a redis
//     request stalled for the whole 6.8 s transfer); no page crosses the
//     link twice;
//   - requests the relay cannot place (no pagemap here, outside the lazy
//     ranges) go to the page server unchanged;
//   - the relay asks only for pages of lazy pagemap entries of processes
//     the daemon asked for (the page server cannot answer others), and
//     stops asking at the daemon's close.
//
// The daemon asks again for pages it was given when its copy into the
// process fails with EAGAIN (the process's memory map was changing: a
// munmap, mremap or madvise event still pending, as redis's allocator
// purging pages makes them): CRIU puts the uncopied part back on its list
// (criu/uffd.c, uffd_io_complete). Each such page would cross the link
// again; in one run of a 37 MiB redis that was 279 MB, and the migration
// ran out of its budget. So the relay keeps what it answered, the last
// keptMax bytes of it, and answers such a request from there.
//
// Memory: at most prefetchHeld bytes held here, keptMax bytes kept after
// they were answered, and prefetchWindow bytes in flight. A failure of
// either side ends both connections, as a plain relay would; the source's
// end still runs the guard (sourceEnded) before the daemon hears of it.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

const (
	psIovAddF  = 6
	psIovGet   = 7
	pePresent  = 1 << 2 // pagemap entry flag: pages present
	peLazy     = 1 << 1 // pagemap entry flag: pages may come lazily
	psCmdBits  = 16
	psCmdMask  = 1<<psCmdBits - 1
	pageBytes  = 4096 // the page size of the hosts COAT runs on (x86-64)
	psCloseAck = 4    // the page server's answer to a close: an int32 status

	// prefetchChunk is one request of the relay's own; prefetchWindow
	// what it keeps in flight (a 100 Mbit/s link's bandwidth-delay
	// product at 20 ms of RTT plus its shaper's queue: enough to fill it,
	// little for a fault to queue behind; 384 KiB left it at ~83 Mbit/s);
	// prefetchHeld what it holds before the daemon asks.
	prefetchChunk  = 128 << 10
	prefetchWindow = 4 * prefetchChunk
	prefetchHeld   = 64 << 20
	// readAhead is what the relay asks for behind each of the daemon's
	// requests (a fault, mostly; after the restore): the pages that
	// follow, which a running program is likely to touch next (a value
	// spanning pages, a scan), so that its next faults meet pages already
	// on their way instead of a round trip each.
	readAhead = 64 << 10

	imgCommonMagic = 0x54564319 // CRIU's IMG_COMMON
	pagemapMagic   = 0x56084025 // CRIU's PAGEMAP
)

// psIov is CRIU's struct page_server_iov on the wire: u32 command (with
// flags in the upper 16 bits), 4 bytes of padding, u64 pages, u64
// address, u64 image id (the process's pid in the image): 32 bytes.
type psIov struct {
	cmd            uint32
	nr, vaddr, img uint64
}

func parsePsIov(b []byte) psIov {
	return psIov{
		cmd:   binary.LittleEndian.Uint32(b[0:4]),
		nr:    binary.LittleEndian.Uint64(b[8:16]),
		vaddr: binary.LittleEndian.Uint64(b[16:24]),
		img:   binary.LittleEndian.Uint64(b[24:32]),
	}
}

func (p psIov) marshal() []byte {
	b := make([]byte, psIovSize)
	binary.LittleEndian.PutUint32(b[0:4], p.cmd)
	binary.LittleEndian.PutUint64(b[8:16], p.nr)
	binary.LittleEndian.PutUint64(b[16:24], p.vaddr)
	binary.LittleEndian.PutUint64(b[24:32], p.img)
	return b
}

// pageRange is [start, end) in the image's address space.
type pageRange struct{ start, end uint64 }

// lazyRanges lists the lazy entries of dir/pagemap-ID.img, in file order
// (CRIU writes them sorted by address). The image is CRIU's: two magic
// numbers, then length-prefixed protobuf messages, a pagemap_head and
// pagemap_entry ones. The entry is decoded field by field (protowire),
// not with go-criu's generated type: CRIU 4 moved the page count to a
// 64-bit field 5 (nr_pages) and writes 0 in field 2 (compat_nr_pages),
// and go-criu v7.2's type still knows only field 2.
func lazyRanges(dir string, id uint64) ([]pageRange, error) {
	b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("pagemap-%d.img", id)))
	if err != nil {
		return nil, err
	}
	if len(b) < 8 || binary.LittleEndian.Uint32(b[0:4]) != imgCommonMagic || binary.LittleEndian.Uint32(b[4:8]) != pagemapMagic {
		return nil, fmt.Errorf("pagemap-%d.img: not a CRIU pagemap image", id)
	}
	b = b[8:]
	var out []pageRange
	for first := true; len(b) > 0; first = false {
		if len(b) < 4 {
			return nil, fmt.Errorf("pagemap-%d.img: truncated", id)
		}
		n := int(binary.LittleEndian.Uint32(b[0:4]))
		if len(b) < 4+n {
			return nil, fmt.Errorf("pagemap-%d.img: truncated entry", id)
		}
		msg := b[4 : 4+n]
		b = b[4+n:]
		if first { // pagemap_head
			continue
		}
		e, err := decodePagemapEntry(msg)
		if err != nil {
			return nil, fmt.Errorf("pagemap-%d.img: %w", id, err)
		}
		if e.flags&peLazy == 0 || e.nrPages == 0 {
			continue
		}
		out = append(out, pageRange{e.vaddr, e.vaddr + e.nrPages*pageBytes})
	}
	return out, nil
}

// pagemapEntry is CRIU's pagemap_entry (images/pagemap.proto).
type pagemapEntry struct {
	vaddr, nrPages uint64
	flags          uint32
}

func decodePagemapEntry(b []byte) (pagemapEntry, error) {
	var e pagemapEntry
	var compat uint64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return e, protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.VarintType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return e, protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return e, protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case 1:
			e.vaddr = v
		case 2:
			compat = v
		case 4:
			e.flags = uint32(v)
		case 5:
			e.nrPages = v
		}
	}
	if e.nrPages == 0 {
		e.nrPages = compat
	}
	return e, nil
}

type pageState uint8

const (
	pageUnasked  pageState = iota // nobody asked the source for it yet
	pageInFlight                  // the relay asked for it
	pageHere                      // arrived, held for the daemon
	pageGone                      // the daemon has it, or asked the source itself
	pageKept                      // the daemon has it; its data is kept (keptMax)
)

// keptMax bounds the answered pages kept for the daemon's repeated asks.
const keptMax = 32 << 20

// keptPage is one answered page in the order it was kept.
type keptPage struct{ img, addr uint64 }

// imagePages is what the relay knows of one process's lazy memory.
type imagePages struct {
	ranges []pageRange
	next   int    // first range that may hold unasked pages
	cursor uint64 // where in ranges[next] to look on
	state  map[uint64]pageState
	data   map[uint64][]byte
}

// nextRun is the next run of at most max unasked bytes, in address order.
func (ip *imagePages) nextRun(max uint64) (start, n uint64, ok bool) {
	for ip.next < len(ip.ranges) {
		r := ip.ranges[ip.next]
		if ip.cursor < r.start {
			ip.cursor = r.start
		}
		for ip.cursor < r.end && ip.state[ip.cursor] != pageUnasked {
			ip.cursor += pageBytes
		}
		if ip.cursor >= r.end {
			ip.next++
			continue
		}
		s := ip.cursor
		for ip.cursor < r.end && ip.cursor-s < max && ip.state[ip.cursor] == pageUnasked {
			ip.cursor += pageBytes
		}
		return s, (ip.cursor - s) / pageBytes, true
	}
	return 0, 0, false
}

// runAt marks in flight the run of unasked pages from addr (at most max
// bytes, within addr's lazy range) and returns its page count.
func (ip *imagePages) runAt(addr, max uint64) uint64 {
	i := sort.Search(len(ip.ranges), func(i int) bool { return ip.ranges[i].end > addr })
	if i == len(ip.ranges) || addr < ip.ranges[i].start {
		return 0
	}
	var n uint64
	for a := addr; a < ip.ranges[i].end && n*pageBytes < max && ip.state[a] == pageUnasked; a += pageBytes {
		ip.state[a] = pageInFlight
		n++
	}
	return n
}

// holds says whether [vaddr, vaddr+n pages) lies in one lazy range.
func (ip *imagePages) holds(vaddr, n uint64) bool {
	i := sort.Search(len(ip.ranges), func(i int) bool { return ip.ranges[i].end > vaddr })
	return i < len(ip.ranges) && vaddr >= ip.ranges[i].start && vaddr+n*pageBytes <= ip.ranges[i].end
}

// lead counts the pages from vaddr (at most n) whose state is in ok.
func (ip *imagePages) lead(vaddr, n uint64, ok func(pageState) bool) uint64 {
	var k uint64
	for k < n && ok(ip.state[vaddr+k*pageBytes]) {
		k++
	}
	return k
}

// daemonReq is one of the daemon's requests, answered in its order.
type daemonReq struct {
	asked time.Time
	local bool  // answered from here: pages q.nr from q.vaddr
	q     psIov // as answered (local) or as forwarded
	reply []byte
	ready chan struct{} // forwarded: closed once reply is set
}

// sourceReq is one request sent to the page server, in its order.
type sourceReq struct {
	q  psIov
	dr *daemonReq // nil: the relay's own
}

// pageProxy is the relay with prefetch (see the note above).
type pageProxy struct {
	daemon      net.Conn
	source      net.Conn
	images      string
	moved       *atomic.Int64 // bytes from the source
	sourceEnded func()
	// noted, if set, hears what was found for each process (ranges, or
	// why none).
	noted func(id uint64, ranges int, err error)
	// noteStuck, if set, hears of a local answer that waited stuckAfter:
	// its pages still in flight, those asked again, requests outstanding.
	noteStuck func(q psIov, inFlight, reasked, outstanding int)

	wmu sync.Mutex // order of writes to the source = order of sent

	mu       sync.Mutex
	cond     *sync.Cond
	imgs     map[uint64]*imagePages
	order    []uint64
	sent     []sourceReq
	held     int64
	inFlight int64
	// kept are the answered pages whose data is kept, oldest first (an
	// entry whose page left pageKept since is skipped); keptBytes their
	// size.
	kept       []keptPage
	keptBytes  int64
	closing    bool // the daemon sent its close (or ended)
	sourceDone bool
	err        error
	prefetched atomic.Int64 // bytes the relay asked for ahead of the daemon
	// Counters for the end-of-relay log line.
	local, forwarded, clamped atomic.Int64
	repeated                  atomic.Int64 // pages the daemon asked for again
	longestWait               atomic.Int64 // ns, a local answer's wait

	stop     chan struct{} // closed at a failure or the source's end
	stopOnce sync.Once
	// begin, when closed, lets the relay's own fetching start: at the end
	// of the restore, whose own faults (the restorer touches the threads'
	// stacks) must not queue behind it; they are inside the downtime.
	begin chan struct{}
}

// errClosing: the relay's own request is not sent after the daemon's close.
var errClosing = errors.New("the daemon closed")

func newPageProxy(daemon, source net.Conn, images string, moved *atomic.Int64, sourceEnded func()) *pageProxy {
	p := &pageProxy{daemon: daemon, source: source, images: images, moved: moved, sourceEnded: sourceEnded, imgs: map[uint64]*imagePages{}, stop: make(chan struct{}), begin: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// fail ends both sides at a failure on the daemon's side.
func (p *pageProxy) fail(err error) {
	p.failSource(err)
	p.daemon.Close()
}

// failSource ends the source's side; readSource then ends the daemon's,
// after the guard (sourceEnded).
func (p *pageProxy) failSource(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	p.stopOnce.Do(func() { close(p.stop) })
	p.source.Close()
}

// run relays until both sides end, and returns the first failure.
func (p *pageProxy) run() error {
	answers := make(chan *daemonReq, 4096)
	var wg sync.WaitGroup
	writerDone := make(chan struct{})
	wg.Add(4)
	go func() { defer wg.Done(); p.readDaemon(answers) }()
	go func() { defer wg.Done(); p.prefetch() }()
	go func() {
		defer wg.Done()
		p.writeDaemon(answers)
		close(writerDone)
		for range answers { // the daemon's side is ending: let its reader finish
		}
	}()
	go func() { defer wg.Done(); p.readSource(writerDone) }()
	// Waiters re-check now and then (see stuckAfter).
	tickDone := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				p.mu.Lock()
				p.cond.Broadcast()
				p.mu.Unlock()
			case <-tickDone:
				return
			}
		}
	}()
	wg.Wait()
	close(tickDone)
	p.daemon.Close()
	p.source.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// send writes q to the page server, recorded as whose it is. The
// relay's own requests (dr nil) are not sent after the daemon's close.
func (p *pageProxy) send(q psIov, dr *daemonReq) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.mu.Lock()
	if dr == nil && p.closing {
		p.mu.Unlock()
		return errClosing
	}
	p.sent = append(p.sent, sourceReq{q: q, dr: dr})
	p.cond.Broadcast()
	p.mu.Unlock()
	_, err := p.source.Write(q.marshal())
	return err
}

// image is what is known of image id, read from its pagemap at first
// sight (nil: no pagemap here; its requests are only forwarded).
func (p *pageProxy) image(id uint64) *imagePages {
	if ip, ok := p.imgs[id]; ok {
		return ip
	}
	var ip *imagePages
	r, err := lazyRanges(p.images, id)
	if err == nil && len(r) > 0 {
		ip = &imagePages{ranges: r, state: map[uint64]pageState{}, data: map[uint64][]byte{}}
		p.order = append(p.order, id)
		p.cond.Broadcast()
	}
	if p.noted != nil {
		p.noted(id, len(r), err)
	}

	p.imgs[id] = ip
	return ip
}

func (p *pageProxy) readDaemon(answers chan<- *daemonReq) {
	defer close(answers)
	br := bufio.NewReaderSize(p.daemon, 64<<10)
	buf := make([]byte, psIovSize)
	for {
		if _, err := io.ReadFull(br, buf); err != nil {
			p.mu.Lock()
			p.closing = true
			p.cond.Broadcast()
			p.mu.Unlock()
			if errors.Is(err, io.EOF) {
				// The daemon is done: what it sent went out; the page
				// server hears the orderly end.
				p.wmu.Lock()
				closeWrite(p.source)
				p.wmu.Unlock()
				return
			}
			p.fail(fmt.Errorf("lazy-pages daemon: %w", err))
			return
		}
		q := parsePsIov(buf)
		switch q.cmd & psCmdMask {
		case psIovGet:
		case psIovClose & psCmdMask, psIovForceClose & psCmdMask:
			p.mu.Lock()
			p.closing = true
			p.cond.Broadcast()
			p.mu.Unlock()
			dr := &daemonReq{q: q, ready: make(chan struct{})}
			answers <- dr
			if err := p.send(q, dr); err != nil {
				p.failSource(fmt.Errorf("page server: %w", err))
				return
			}
			continue
		default:
			p.failSource(fmt.Errorf("lazy-pages daemon sent command %#x, which the relay does not know", q.cmd))
			return
		}
		p.mu.Lock()
		ip := p.image(q.img)
		if ip == nil || q.nr == 0 || !ip.holds(q.vaddr, q.nr) {
			// Not a process or a range the relay knows: the page server
			// answers it as it is.
			p.mu.Unlock()
			p.forwarded.Add(1)
			dr := &daemonReq{q: q, ready: make(chan struct{})}
			answers <- dr
			if err := p.send(q, dr); err != nil {
				p.failSource(fmt.Errorf("page server: %w", err))
				return
			}
			continue
		}
		// Answered from here, whole: the pages nobody asked for yet are
		// asked for now, ahead of the relay's own fetching; then the
		// read-ahead behind them.
		var need []psIov
		for i := uint64(0); i < q.nr; i++ {
			a := q.vaddr + i*pageBytes
			switch ip.state[a] {
			case pageKept:
				// Asked again (see the note): here again, so that it
				// stays until this answer takes it.
				ip.state[a] = pageHere
				p.held += pageBytes
				p.keptBytes -= pageBytes
				p.repeated.Add(1)
				continue
			case pageUnasked, pageGone:
				need = p.askPage(ip, need, q.img, a)
			}
		}
		if !p.closing && p.begun() {
			if n := ip.runAt(q.vaddr+q.nr*pageBytes, readAhead); n > 0 {
				need = append(need, psIov{cmd: psIovGet, nr: n, vaddr: q.vaddr + q.nr*pageBytes, img: q.img})
				p.inFlight += int64(n * pageBytes)
				p.prefetched.Add(int64(n * pageBytes))
			}
		}
		p.mu.Unlock()
		p.local.Add(1)
		answers <- &daemonReq{local: true, q: q, asked: time.Now()}
		for _, r := range need {
			if err := p.send(r, nil); err != nil && !errors.Is(err, errClosing) {
				p.failSource(fmt.Errorf("page server: %w", err))
				return
			}
		}
	}
}

// begun says whether the restore is over: before, the restorer's own
// faults (scattered: stacks, rseq areas) are fetched alone, with nothing
// queued ahead of the next one.
func (p *pageProxy) begun() bool {
	select {
	case <-p.begin:
		return true
	default:
		return false
	}
}

// prefetch keeps the window full with the next unasked pages, once begun.
func (p *pageProxy) prefetch() {
	select {
	case <-p.begin:
	case <-p.stop:
		return
	}
	for {
		p.mu.Lock()
		var (
			id, start, n uint64
			ok           bool
		)
		for {
			if p.closing || p.sourceDone || p.err != nil {
				p.mu.Unlock()
				return
			}
			if p.inFlight+prefetchChunk <= prefetchWindow && p.held+p.inFlight+prefetchChunk <= prefetchHeld {
				for len(p.order) > 0 {
					id = p.order[0]
					if start, n, ok = p.imgs[id].nextRun(prefetchChunk); ok {
						break
					}
					p.order = p.order[1:]
				}
				if ok {
					break
				}
			}
			p.cond.Wait()
		}
		ip := p.imgs[id]
		for i := uint64(0); i < n; i++ {
			ip.state[start+i*pageBytes] = pageInFlight
		}
		p.inFlight += int64(n * pageBytes)
		p.prefetched.Add(int64(n * pageBytes))
		p.mu.Unlock()
		if err := p.send(psIov{cmd: psIovGet, nr: n, vaddr: start, img: id}, nil); err != nil {
			if !errors.Is(err, errClosing) {
				p.failSource(fmt.Errorf("page server: %w", err))
			}
			return
		}
	}
}

// readSource takes the page server's answers in order.
func (p *pageProxy) readSource(writerDone <-chan struct{}) {
	br := bufio.NewReaderSize(p.source, 256<<10)
	hdr := make([]byte, psIovSize)
	for {
		_, err := br.Peek(1)
		if err != nil {
			p.mu.Lock()
			p.sourceDone = true
			p.cond.Broadcast()
			pending, failed := len(p.sent), p.err
			p.mu.Unlock()
			p.stopOnce.Do(func() { close(p.stop) })
			// Before the daemon hears the source went (see postcopy_dest.go).
			if p.sourceEnded != nil {
				p.sourceEnded()
			}
			<-writerDone
			if errors.Is(err, io.EOF) && pending == 0 && failed == nil {
				closeWrite(p.daemon)
				return
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			p.fail(fmt.Errorf("page server: %w", err))
			return
		}
		p.mu.Lock()
		if len(p.sent) == 0 {
			p.mu.Unlock()
			p.failSource(errors.New("page server: an answer to no request"))
			continue
		}
		head := p.sent[0]
		p.sent = p.sent[1:]
		p.mu.Unlock()
		if c := head.q.cmd & psCmdMask; c != psIovGet {
			ack := make([]byte, psCloseAck)
			if _, err := io.ReadFull(br, ack); err != nil {
				p.failSource(fmt.Errorf("page server: %w", err))
				continue
			}
			p.moved.Add(psCloseAck)
			head.dr.reply = ack
			close(head.dr.ready)
			continue
		}
		if _, err := io.ReadFull(br, hdr); err != nil {
			p.failSource(fmt.Errorf("page server: %w", err))
			continue
		}
		a := parsePsIov(hdr)
		if a.nr > head.q.nr || (a.nr > 0 && a.vaddr != head.q.vaddr) {
			p.failSource(fmt.Errorf("page server: answer %d pages at %#x to a request of %d at %#x", a.nr, a.vaddr, head.q.nr, head.q.vaddr))
			continue
		}
		body := make([]byte, psIovSize+int(a.nr)*pageBytes)
		copy(body, hdr)
		if _, err := io.ReadFull(br, body[psIovSize:]); err != nil {
			p.failSource(fmt.Errorf("page server: %w", err))
			continue
		}
		p.moved.Add(int64(len(body)))
		if head.dr != nil {
			head.dr.reply = body
			close(head.dr.ready)
			continue
		}
		if a.nr == 0 {
			p.failSource(fmt.Errorf("page server: no pages at %#x", head.q.vaddr))
			continue
		}
		p.mu.Lock()
		ip := p.imgs[head.q.img]
		for i := uint64(0); i < a.nr; i++ {
			addr := head.q.vaddr + i*pageBytes
			ip.state[addr] = pageHere
			ip.data[addr] = body[psIovSize+i*pageBytes : psIovSize+(i+1)*pageBytes]
		}
		p.inFlight -= int64(a.nr * pageBytes)
		p.held += int64(a.nr * pageBytes)
		p.cond.Broadcast()
		p.mu.Unlock()
		if a.nr < head.q.nr {
			// The page server stops at the end of one of its buffers: ask
			// for the rest (still in flight). Not from this goroutine: a
			// write to the source must never wait on its reader.
			rest := head.q
			rest.vaddr += a.nr * pageBytes
			rest.nr -= a.nr
			p.clamped.Add(1)
			go func() {
				if err := p.send(rest, nil); err != nil && !errors.Is(err, errClosing) {
					p.failSource(fmt.Errorf("page server: %w", err))
				}
			}()
		}
	}
}

// stuckAfter is how long a local answer waits before the relay checks
// that each of its pages is on its way (a tick wakes waiters every
// second). A variable for tests.
var stuckAfter = 5 * time.Second

// reask asks again for the pages of q that are neither here nor asked
// for, and reports them (noteStuck). It never happens by design; it keeps a
// mistake from stopping the container for good. Called with mu held.
func (p *pageProxy) reask(ip *imagePages, q psIov) {
	var redo []psIov
	inFlight := 0
	for i := uint64(0); i < q.nr; i++ {
		a := q.vaddr + i*pageBytes
		switch ip.state[a] {
		case pageInFlight:
			if p.requested(q.img, a) {
				inFlight++
				continue
			}
		case pageHere, pageKept:
			continue
		}
		redo = p.askPage(ip, redo, q.img, a)
	}
	if p.noteStuck != nil {
		p.noteStuck(q, inFlight, len(redo), len(p.sent))
	}
	for _, r := range redo {
		go func() {
			if err := p.send(r, nil); err != nil && !errors.Is(err, errClosing) {
				p.failSource(fmt.Errorf("page server: %w", err))
			}
		}()
	}
}

// dropKept forgets the oldest kept pages beyond keptMax. Called with mu
// held.
func (p *pageProxy) dropKept() {
	for p.keptBytes > keptMax && len(p.kept) > 0 {
		k := p.kept[0]
		p.kept = p.kept[1:]
		ip := p.imgs[k.img]
		if ip == nil || ip.state[k.addr] != pageKept {
			continue // asked again since: here, and counted there
		}
		delete(ip.data, k.addr)
		ip.state[k.addr] = pageGone
		p.keptBytes -= pageBytes
	}
}

// askPage marks page a of img in flight and adds it to the requests
// runs, extending the last one when a follows it. Called with mu held.
func (p *pageProxy) askPage(ip *imagePages, runs []psIov, img, a uint64) []psIov {
	ip.state[a] = pageInFlight
	p.inFlight += pageBytes
	if k := len(runs) - 1; k >= 0 && runs[k].vaddr+runs[k].nr*pageBytes == a {
		runs[k].nr++
		return runs
	}
	return append(runs, psIov{cmd: psIovGet, nr: 1, vaddr: a, img: img})
}

// requested says whether a request of the relay's own for page a of img
// is still unanswered. Called with mu held.
func (p *pageProxy) requested(img, a uint64) bool {
	for _, r := range p.sent {
		if r.dr == nil && r.q.img == img && a >= r.q.vaddr && a < r.q.vaddr+r.q.nr*pageBytes {
			return true
		}
	}
	return false
}

// writeDaemon gives the daemon its answers in the order it asked. Once
// the source has ended (or anything failed) it stops at the first answer
// that is not complete here.
func (p *pageProxy) writeDaemon(answers <-chan *daemonReq) {
	for {
		var dr *daemonReq
		select {
		case d, ok := <-answers:
			if !ok {
				return
			}
			dr = d
		case <-p.stop:
			select {
			case d, ok := <-answers:
				if !ok {
					return
				}
				dr = d
			default:
				return
			}
		}
		var reply []byte
		if dr.local {
			p.mu.Lock()
			ip := p.imgs[dr.q.img]
			here := func(s pageState) bool { return s == pageHere || s == pageKept }
			checked := false
			for p.err == nil && !p.sourceDone && ip.lead(dr.q.vaddr, dr.q.nr, here) < dr.q.nr {
				if !checked && time.Since(dr.asked) > stuckAfter {
					// Every page of a local answer is here or asked for; a
					// wait this long means one is not: ask again, and say so.
					checked = true
					p.reask(ip, dr.q)
				}
				p.cond.Wait()
			}
			if ip.lead(dr.q.vaddr, dr.q.nr, here) < dr.q.nr {
				p.mu.Unlock()
				return
			}
			reply = make([]byte, psIovSize, psIovSize+int(dr.q.nr)*pageBytes)
			copy(reply, psIov{cmd: pePresent<<psCmdBits | psIovAddF, nr: dr.q.nr, vaddr: dr.q.vaddr, img: dr.q.img}.marshal())
			for i := uint64(0); i < dr.q.nr; i++ {
				addr := dr.q.vaddr + i*pageBytes
				reply = append(reply, ip.data[addr]...)
				if ip.state[addr] == pageHere {
					// (pageKept: an earlier answer in this queue had it.)
					ip.state[addr] = pageKept
					p.kept = append(p.kept, keptPage{img: dr.q.img, addr: addr})
					p.held -= pageBytes
					p.keptBytes += pageBytes
				}
			}
			p.dropKept()
			p.cond.Broadcast()
			p.mu.Unlock()
			if w := int64(time.Since(dr.asked)); w > p.longestWait.Load() {
				p.longestWait.Store(w)
			}
		} else {
			select {
			case <-dr.ready:
			case <-p.stop:
				select {
				case <-dr.ready:
				default:
					return
				}
			}
			reply = dr.reply
		}
		if _, err := p.daemon.Write(reply); err != nil {
			p.fail(fmt.Errorf("lazy-pages daemon: %w", err))
			return
		}
	}
}
