package transfer

import (
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
)

// Streaming an image while it is written.
//
// CRIU writes a container's memory to pages-N.img front to back, once,
// while the rest of the image (a few small files) is written around it.
// Follow sends each pages file's new bytes as they appear, as tar entries
// marked to be appended (PAX record COAT.append), so the memory crosses
// the link while CRIU is still dumping; when the dump is done it sends
// what is left of those files and every other file whole. The receiver
// (Unpack) appends such entries to the file it has.

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

// Follow streams the flat directory dir under prefix while done is open,
// then the rest; it returns the content bytes sent.
func Follow(tw *tar.Writer, dir, prefix string, done <-chan struct{}) (int64, error) {
	sent := map[string]int64{}
	var total int64
	for finished := false; ; {
		select {
		case <-done:
			finished = true
		default:
		}
		ents, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) && !finished {
			ents, err = nil, nil // not made yet
		}
		if err != nil {
			return total, err
		}
		names := make([]string, 0, len(ents))
		for _, e := range ents {
			if e.Type().IsRegular() && (Growing(e.Name()) || finished) {
				names = append(names, e.Name())
			}
		}
		sort.Strings(names)
		for _, name := range names {
			n, err := sendFrom(tw, filepath.Join(dir, name), prefix+name, sent, finished)
			total += n
			if err != nil {
				return total, err
			}
		}
		if finished {
			return total, nil
		}
		select {
		case <-done:
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// sendFrom sends path's bytes after what was sent of it: all of them when
// final, else whole chunks of a growing file.
func sendFrom(tw *tar.Writer, path, name string, sent map[string]int64, final bool) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	off, seen := sent[name]
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
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Size: size, ModTime: fi.ModTime(), Format: tar.FormatPAX}
	if seen {
		hdr.PAXRecords = map[string]string{appendKey: "1"}
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return 0, err
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	n, err := io.CopyN(tw, f, size)
	sent[name] = off + n
	return n, err
}
