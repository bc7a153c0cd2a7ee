package runtime

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/coat-project/coat/internal/names"
)

// LogTail is the most of a container's output that ReadLog returns: its
// last 1 MiB.
const LogTail = 1 << 20

// ErrLogNotFile is a container's log path that is not a regular file: a
// symlink, a directory or a device the container put in its place. It is
// never followed or read.
var ErrLogNotFile = errors.New("not a regular file")

// Log is an open container log, positioned at the start of its tail.
type Log struct {
	f *os.File
	// Size is the file's size when opened; Skipped the bytes before the
	// tail, which are not returned; Start the offset the tail starts at.
	Size, Skipped, Start int64
}

// Close closes the file.
func (l *Log) Close() error { return l.f.Close() }

// Tail is a reader of at most LogTail bytes from the tail's start (the
// file may grow meanwhile).
func (l *Log) Tail() io.Reader { return io.LimitReader(l.f, LogTail) }

// OpenLog opens the container's output, /.coat/log in its upper layer,
// without following a symlink at any step below the upper layer (the
// container owns everything there), and refuses anything but a regular
// file. A missing log is fs.ErrNotExist.
func (r *Runtime) OpenLog(name string) (*Log, error) { return r.OpenLogAt(name, -1) }

// OpenLogAt is OpenLog positioned at byte from of the output (from < 0:
// at its last LogTail bytes), for a reader that follows it: still no more
// than LogTail bytes are read from there, and from more than LogTail
// bytes behind the end moves up to the last LogTail (Skipped counts the
// bytes passed over). A from beyond the end (the log is a new one) starts
// over at 0.
func (r *Runtime) OpenLogAt(name string, from int64) (*Log, error) {
	if err := names.Container(name); err != nil {
		return nil, err
	}
	const dirFlags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	dir, err := unix.Open(r.UpperDir(name), dirFlags, 0)
	if err != nil {
		return nil, logErr(name, r.UpperDir(name), err)
	}
	defer func() { unix.Close(dir) }() // the last one opened
	parts := strings.Split(strings.TrimPrefix(LogPath, "/"), "/")
	for i, part := range parts[:len(parts)-1] {
		next, err := unix.Openat(dir, part, dirFlags, 0)
		if err != nil {
			return nil, logErr(name, "/"+strings.Join(parts[:i+1], "/"), err)
		}
		unix.Close(dir)
		dir = next
	}
	// O_NONBLOCK: a FIFO in its place must not hang the agent.
	fd, err := unix.Openat(dir, parts[len(parts)-1], unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, logErr(name, LogPath, err)
	}
	f := os.NewFile(uintptr(fd), r.LogFile(name))
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, logErr(name, LogPath, unix.EINVAL)
	}
	l := &Log{f: f, Size: st.Size()}
	if from < 0 || from > l.Size {
		from = 0
	}
	l.Start = from
	if l.Size-from > LogTail {
		l.Start = l.Size - LogTail
		l.Skipped = l.Start - from
	}
	if l.Start > 0 {
		if _, err := f.Seek(l.Start, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
	}
	return l, nil
}

// logErr turns an open error into one that says what happened.
func logErr(name, path string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("log of %s: %w", name, os.ErrNotExist)
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.EINVAL),
		errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENODEV):
		return fmt.Errorf("log of %s: %s in its rootfs is %w (a symlink or other file the container put there; coat does not follow it): its output cannot be shown; `coat rm %s` removes it", name, path, ErrLogNotFile, name)
	}
	return fmt.Errorf("log of %s: %w", name, err)
}
