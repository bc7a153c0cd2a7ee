package transfer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFollowWhileWritten streams a directory while a pages file grows in
// pieces (as CRIU writes it) and small files appear at the end; the
// receiver ends with identical files.
func TestFollowWhileWritten(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	data := make([]byte, 5*minChunk+12345)
	rand.New(rand.NewSource(1)).Read(data)
	done := make(chan struct{})
	go func() {
		f, err := os.Create(filepath.Join(src, "pages-1.img"))
		if err != nil {
			panic(err)
		}
		for off := 0; off < len(data); off += 700_000 {
			end := min(off+700_000, len(data))
			f.Write(data[off:end])
			time.Sleep(3 * time.Millisecond)
		}
		f.Close()
		os.WriteFile(filepath.Join(src, "core-1.img"), []byte("core"), 0o600)
		os.WriteFile(filepath.Join(src, "pagemap-1.img"), []byte("map"), 0o600)
		close(done)
	}()
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		_, err := Follow(tw, nil, src, "checkpoint/", done)
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	if _, err := Unpack(tar.NewReader(pr), map[string]Dest{"checkpoint/": {Dir: dst}}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]byte{"pages-1.img": data, "core-1.img": []byte("core"), "pagemap-1.img": []byte("map")} {
		got, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes, err %v; want %d bytes, identical", name, len(got), err, len(want))
		}
	}
}

// TestAppendRefusesUnknownFile: an append entry for a file that was not
// received first (or is a symlink) is refused.
func TestAppendRefusesUnknownFile(t *testing.T) {
	dst := t.TempDir()
	os.Symlink("/etc/passwd", filepath.Join(dst, "pages-1.img"))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "checkpoint/pages-1.img", Size: 1, Mode: 0o600, Format: tar.FormatPAX, PAXRecords: map[string]string{appendKey: "1"}})
	tw.Write([]byte("x"))
	tw.Close()
	if _, err := Unpack(tar.NewReader(&buf), map[string]Dest{"checkpoint/": {Dir: dst}}); err == nil {
		t.Fatal("append through a symlink was accepted")
	}
}

// A small file sent when CRIU closed it, then rewritten before the dump
// ends, is sent again whole: the receiver has the last version.
func TestFollowResendsRewrittenFile(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	done := make(chan struct{})
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		_, err := Follow(tw, nil, src, "checkpoint/", done)
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	p := filepath.Join(src, "inventory.img")
	os.WriteFile(p, []byte("first version"), 0o600)
	time.Sleep(30 * time.Millisecond) // sent on its close
	os.WriteFile(p, []byte("second version, longer"), 0o600)
	close(done)
	if _, err := Unpack(tar.NewReader(pr), map[string]Dest{"checkpoint/": {Dir: dst}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "inventory.img")); string(got) != "second version, longer" {
		t.Fatalf("receiver has %q", got)
	}
}

// TestFollowFlushesBeforeWaiting: small files written behind a buffer
// reach the receiver while the dump still runs (Follow flushes before each
// wait), not only at its end.
func TestFollowFlushesBeforeWaiting(t *testing.T) {
	src := t.TempDir()
	done := make(chan struct{})
	defer func() {
		select {
		case <-done:
		default:
			close(done)
		}
	}()
	pr, pw := io.Pipe()
	defer pr.Close()
	go func() {
		bw := bufio.NewWriterSize(pw, 64<<10)
		tw := tar.NewWriter(bw)
		_, err := Follow(tw, bw.Flush, src, "checkpoint/", done)
		if err == nil {
			err = tw.Close()
		}
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
	}()
	const files = 20 // about 20 KiB with their headers: less than the buffer
	for i := range files {
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("tcp-stream-%d.img", i)), []byte("connection"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan int, 1)
	go func() {
		tr := tar.NewReader(pr)
		n := 0
		for n < files {
			if _, err := tr.Next(); err != nil {
				break
			}
			n++
		}
		got <- n
	}()
	select {
	case n := <-got:
		if n != files {
			t.Fatalf("received %d of %d files", n, files)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the files written during the dump did not arrive before its end")
	}
}
