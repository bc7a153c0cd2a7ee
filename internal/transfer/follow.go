package transfer

import (
	"bytes"
	"unsafe"

	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Streaming an image while it is written.
//
// CRIU writes a container's memory to pages-N.img front to back, once,
// while the rest of the image (small files: one per TCP connection, for
// instance) is written around it, each file written and closed in one go.
// Follow sends each pages file's new bytes as they appear, as tar entries
// marked to be appended (PAX record COAT.append), and every other file
// whole as soon as CRIU closes it (inotify IN_CLOSE_WRITE; IN_CREATE
// names the pages files, so polls never list the directory), so that both
// cross the link while CRIU is still dumping. When the dump is done it
// sends what is left of the pages files, and again, whole, any other file
// whose size or modification time changed since it was sent (or that was
// never seen closed). The receiver (Unpack) appends the marked entries and
// replaces files for the others.

// appendKey marks a regular-file entry whose content extends the file.
const appendKey = "COAT.append"

// Growing reports whether Follow streams a file while it grows: CRIU's
// memory images.
func Growing(name string) bool {
	return strings.HasPrefix(name, "pages-") && strings.HasSuffix(name, ".img")
}

// minChunk is the least Follow sends of a growing file before the dump
// is done (smaller pieces wait for the next poll).
const minChunk = 1 << 20

// sentFile is what was sent of a file.
type sentFile struct {
	size  int64
	mtime time.Time
}

// Follow streams the flat directory dir under prefix while done is open,
// then the rest; it returns the content bytes sent. flush, if not nil,
// pushes on what tw's writer buffers; Follow calls it before each wait, so
// that the small files of one poll leave together (a thousand TCP
// connections are a thousand files) and none waits beyond a poll.
func Follow(tw *tar.Writer, flush func() error, dir, prefix string, done <-chan struct{}) (int64, error) {
	f := &follower{tw: tw, dir: dir, prefix: prefix, sent: map[string]sentFile{}, buf: make([]byte, 32<<10)}
	events, watching, stop := watchDir(dir)
	defer stop()
	if watching {
		// Those made before the watch began, if any.
		f.pages = map[string]bool{}
		m, _ := filepath.Glob(filepath.Join(dir, "pages-*.img"))
		for _, p := range m {
			f.pages[filepath.Base(p)] = true
		}
		// Files closed before the watch began sent no event: they go now
		// (and again at the end if they changed since).
		if err := f.sendClosed(); err != nil {
			return f.total, err
		}
	}
	for {
		if flush != nil {
			if err := flush(); err != nil {
				return f.total, err
			}
		}
		finished := false
		select {
		case <-done:
			finished = true
		case <-time.After(2 * time.Millisecond):
		}
		if finished {
			return f.total, f.finish()
		}
		for _, ev := range events() {
			switch {
			case Growing(ev.name) && ev.created:
				f.pages[ev.name] = true
			case !Growing(ev.name) && !ev.created:
				if err := f.whole(ev.name); err != nil {
					return f.total, err
				}
			}
		}
		if err := f.grow(false); err != nil {
			return f.total, err
		}
	}
}

type follower struct {
	tw          *tar.Writer
	buf         []byte // one copy buffer for all files
	dir, prefix string
	sent        map[string]sentFile
	total       int64
	// pages are the pages files seen created (inotify), so that a poll
	// does not list the directory (a thousand files with as many TCP
	// connections); nil without inotify: list it.
	pages map[string]bool
}

// grow sends the pages files' new bytes (all of them when final).
func (f *follower) grow(final bool) error {
	var m []string
	if f.pages != nil && !final {
		for name := range f.pages {
			m = append(m, filepath.Join(f.dir, name))
		}
	} else {
		var err error
		if m, err = filepath.Glob(filepath.Join(f.dir, "pages-*.img")); err != nil {
			return err
		}
	}
	sort.Strings(m)
	for _, p := range m {
		n, err := sendFrom(f.tw, p, f.prefix+filepath.Base(p), f.sent, final, f.buf)
		f.total += n
		if err != nil {
			return err
		}
	}
	return nil
}

// whole sends a file in full unless it was sent as it is now.
func (f *follower) whole(name string) error {
	fi, err := os.Lstat(filepath.Join(f.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // gone again (a temporary file)
	}
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	if s, ok := f.sent[f.prefix+name]; ok && s.size == fi.Size() && s.mtime.Equal(fi.ModTime()) {
		return nil
	}
	delete(f.sent, f.prefix+name) // whole again: replace, do not append
	n, err := sendFrom(f.tw, filepath.Join(f.dir, name), f.prefix+name, f.sent, true, f.buf)
	f.total += n
	return err
}

// finish sends what the dump left: the pages files' remainders and every
// other file not sent as it is now.
func (f *follower) finish() error {
	if err := f.grow(true); err != nil {
		return err
	}
	return f.sendClosed()
}

// sendClosed sends every file but the pages files that was not sent as it
// is now.
func (f *follower) sendClosed() error {
	ents, err := os.ReadDir(f.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Type().IsRegular() && !Growing(e.Name()) {
			if err := f.whole(e.Name()); err != nil {
				return err
			}
		}
	}
	return nil
}

// dirEvent is a file of the watched directory created, or closed after
// writing.
type dirEvent struct {
	name    string
	created bool
}

// watchDir reports what happened in dir since its last call. Without
// inotify (watching false) it reports nothing: finish then sends all.
func watchDir(dir string) (events func() []dirEvent, watching bool, stop func()) {
	none := func() []dirEvent { return nil }
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return none, false, func() {}
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CLOSE_WRITE|unix.IN_CREATE); err != nil {
		unix.Close(fd)
		return none, false, func() {}
	}
	buf := make([]byte, 64<<10)
	return func() []dirEvent {
			var evs []dirEvent
			for {
				n, err := unix.Read(fd, buf)
				if n <= 0 || err != nil {
					return evs
				}
				for off := 0; off+unix.SizeofInotifyEvent <= n; {
					ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
					nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
					if i := bytes.IndexByte(nameBytes, 0); i >= 0 {
						nameBytes = nameBytes[:i]
					}
					if len(nameBytes) > 0 {
						evs = append(evs, dirEvent{name: string(nameBytes), created: ev.Mask&unix.IN_CREATE != 0})
					}
					off += unix.SizeofInotifyEvent + int(ev.Len)
				}
			}
		}, true, func() {
			// Not waited for: closing an inotify instance waits for an
			// SRCU grace period of the kernel's fsnotify (10-20 ms seen
			// here, with the container still frozen).
			go unix.Close(fd)
		}
}

// sendFrom sends path's bytes after what was sent of it: all of them when
// final, else whole chunks of a growing file.
func sendFrom(tw *tar.Writer, path, name string, sent map[string]sentFile, final bool, buf []byte) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	prev, seen := sent[name]
	off := prev.size
	size := fi.Size() - off
	if size < 0 {
		return 0, fmt.Errorf("%s shrank while it was streamed", path)
	}
	if !final && size < minChunk {
		return 0, nil
	}
	if final && seen && size == 0 {
		return 0, nil
	}
	// Whole seconds: the receiver does not keep modification times, and
	// a finer one costs every file an extended header of its own.
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Size: size, ModTime: fi.ModTime().Truncate(time.Second), Format: tar.FormatPAX}
	if seen {
		hdr.PAXRecords = map[string]string{appendKey: "1"}
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(tw, io.NewSectionReader(f, off, size), buf)
	if err == nil && n < size {
		err = io.ErrUnexpectedEOF
	}
	sent[name] = sentFile{size: off + n, mtime: fi.ModTime()}
	return n, err
}
