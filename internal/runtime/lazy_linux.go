package runtime

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	runc "github.com/containerd/go-runc"
)

// Post-copy (lazy pages).
//
// A lazy checkpoint dumps everything but the container's anonymous memory
// and then keeps serving that memory from a page server (CRIU's own, on
// 127.0.0.1 of the agent's namespace) until every page was fetched; only
// then does the runc checkpoint call return. On the other side a CRIU
// lazy-pages daemon connects to that page server (through the agents'
// mutual TLS tunnel), and a lazy restore hands it the container's
// userfaultfd: pages the container touches are fetched on demand, the rest
// in the background. The daemon exits 0 once it holds every page.

// LazyDump is a checkpoint whose memory is still being served.
type LazyDump struct {
	end  ended
	kill context.CancelFunc
}

// ended is a result that many may wait for.
type ended struct {
	done chan struct{}
	err  error
}

func newEnded() ended { return ended{done: make(chan struct{})} }

func (e *ended) finish(err error) { e.err = err; close(e.done) }

// Done is closed when CRIU has ended; Err then says how.
func (d *LazyDump) Done() <-chan struct{} { return d.end.done }

// Err is CRIU's end: nil once it served every page.
func (d *LazyDump) Err() error { <-d.end.done; return d.end.err }

// Wait returns when CRIU has served every page (nil) or failed.
func (d *LazyDump) Wait() error { return d.Err() }

// Kill stops runc (CRIU then fails on its own once its connection ends).
func (d *LazyDump) Kill() { d.kill() }

// CheckpointLazy dumps the container leaving its memory on a page server
// at o.PageServer (ADDR:PORT), and returns once the rest of the image is in
// o.ImageDir and the page server is ready.
func (r *Runtime) CheckpointLazy(ctx context.Context, name string, o CheckpointOpts) (*LazyDump, error) {
	if o.PageServer == "" {
		return nil, errors.New("a lazy checkpoint needs a page server address")
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close()
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d := &LazyDump{end: newEnded(), kill: cancel}
	o.lazy, o.status = true, pw
	go func() {
		err := r.Checkpoint(ctx, name, o)
		pw.Close()
		d.end.finish(err)
	}()
	// CRIU writes one byte to the status file once the lazy part is
	// ready; a failed dump closes it unwritten.
	ready := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		_, err := pr.Read(b)
		ready <- err
	}()
	select {
	case err := <-ready:
		if err == nil {
			return d, nil
		}
		if derr := d.Wait(); derr != nil {
			return nil, derr
		}
		return nil, fmt.Errorf("lazy checkpoint of %s ended before it was ready", name)
	case <-time.After(2 * time.Minute):
		cancel()
		return nil, fmt.Errorf("lazy checkpoint of %s: not ready within 2m (CRIU log: %s)", name, filepath.Join(o.WorkDir, "dump.log"))
	}
}

// LazyDaemon is CRIU's lazy-pages daemon serving one restore.
type LazyDaemon struct {
	cmd *exec.Cmd
	log string
	end ended
}

// StartLazyPages runs `criu lazy-pages` for a restore from imageDir whose
// CRIU work directory is workDir, fetching pages from the page server at
// addr:port. It returns once the daemon listens for the restore.
func (r *Runtime) StartLazyPages(imageDir, workDir, addr string, port int) (*LazyDaemon, error) {
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return nil, err
	}
	log := filepath.Join(workDir, "lazy-pages.log")
	// -v4: the log counts the page faults served on demand ("#PF at").
	cmd := exec.Command("criu", "lazy-pages", "--page-server", "--address", addr, "--port", strconv.Itoa(port),
		"-D", imageDir, "-W", workDir, "-o", log, "-v4")
	// Where CRIU's kernel-feature cache is /run, like runc's CRIU runs.
	if err := r.withCriuCache(false, cmd.Start); err != nil {
		return nil, fmt.Errorf("start criu lazy-pages: %w", err)
	}
	d := &LazyDaemon{cmd: cmd, log: log, end: newEnded()}
	go func() {
		err := cmd.Wait()
		if err != nil {
			err = fmt.Errorf("criu lazy-pages: %w (log: %s)", err, log)
		}
		d.end.finish(err)
	}()
	sock := filepath.Join(workDir, "lazy-pages.socket")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return d, nil
		}
		select {
		case <-d.end.done:
			err := d.end.err
			if err == nil {
				err = errors.New("criu lazy-pages exited before it listened")
			}
			return nil, err
		default:
		}
		if time.Now().After(deadline) {
			d.Kill()
			return nil, fmt.Errorf("criu lazy-pages did not listen within 10s (log: %s)", log)
		}
		time.Sleep(time.Millisecond)
	}
}

// Done is closed when the daemon has ended.
func (d *LazyDaemon) Done() <-chan struct{} { return d.end.done }

// Wait returns the daemon's end: nil once every page arrived.
func (d *LazyDaemon) Wait() error { <-d.end.done; return d.end.err }

// Kill stops the daemon (pages not yet fetched stay missing).
func (d *LazyDaemon) Kill() { _ = d.cmd.Process.Kill() }

// PagesOnDemand counts the page faults the daemon served (each fetched
// one range on demand rather than in the background push).
func (d *LazyDaemon) PagesOnDemand() int {
	f, err := os.Open(d.log)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if bytes.Contains(sc.Bytes(), []byte("#PF at")) {
			n++
		}
	}
	return n
}

// lazyOpts adds a lazy dump's options to runc's.
func lazyOpts(opts *runc.CheckpointOpts, o CheckpointOpts) {
	if !o.lazy {
		return
	}
	opts.LazyPages = true
	opts.CriuPageServer = o.PageServer
	opts.StatusFile = o.status
}

// MemoryBytes is the container's anonymous and shared memory, what a dump
// moves (0 if unknown): cgroup v1 memory.stat total_rss + total_shmem, or
// cgroup v2 memory.stat anon + shmem. Not v2's file: the page cache of the
// container's files is not in a dump (its upper layer moves as files), and
// shmem, which is, is counted in file as well.
func (r *Runtime) MemoryBytes(name string) int64 {
	root := r.cgroupRoot()
	v2 := DetectFreezer(root) == FreezerV2
	stat := filepath.Join(root, "memory", r.CgroupParent, name, "memory.stat")
	if v2 {
		stat = filepath.Join(root, r.CgroupParent, name, "memory.stat")
	}
	b, err := os.ReadFile(stat)
	if err != nil {
		return 0
	}
	return dumpedMemory(b, v2)
}

// dumpedMemory reads memory.stat (of cgroup v2 if v2, else v1).
func dumpedMemory(stat []byte, v2 bool) int64 {
	keys := []string{"total_rss", "total_shmem"}
	if v2 {
		keys = []string{"anon", "shmem"}
	}
	var n int64
	for _, line := range bytes.Split(stat, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) == 2 && slices.Contains(keys, string(f[0])) {
			v, _ := strconv.ParseInt(string(f[1]), 10, 64)
			n += v
		}
	}
	return n
}

// Thaw resumes a container left frozen (by a dump that died with the
// freezer set), on cgroup v1 or v2.
func (r *Runtime) Thaw(name string) error { return r.freeze(name, false) }
