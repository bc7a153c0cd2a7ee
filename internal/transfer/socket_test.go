package transfer

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// listenUnix binds a UNIX socket at path; stale leaves its file behind
// with nothing bound to it, as a process that died would.
func listenUnix(t *testing.T, path string, stale bool) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if stale {
		ln.SetUnlinkOnClose(false)
		ln.Close()
		return
	}
	t.Cleanup(func() { ln.Close() })
}

// A layer holding UNIX socket files (a server's, bound and listening, and
// a stale one) packs without them, everything else intact: tar cannot
// carry a socket, and CRIU's restore binds the live ones anew.
func TestPackLeavesOutUnixSockets(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	mkdir(t, filepath.Join(src, "tmp"), fs.ModeSticky|0o777)
	write(t, filepath.Join(src, "tmp/data"), "kept", 0o640)
	listenUnix(t, filepath.Join(src, "tmp/redis.sock"), false)
	listenUnix(t, filepath.Join(src, "tmp/stale.sock"), true)
	if err := os.Chmod(filepath.Join(src, "tmp/redis.sock"), 0o770); err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	n, err := Pack(tw, src, "upper/", true)
	if err != nil {
		t.Fatalf("Pack of a layer with UNIX sockets: %v", err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if n != int64(len("kept")) {
		t.Errorf("packed %d bytes of content, want %d", n, len("kept"))
	}
	var names []string
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, path.Clean(h.Name))
	}
	if got := strings.Join(names, " "); got != "upper upper/tmp upper/tmp/data" {
		t.Errorf("stream entries = %q, want the directories and the file, no sockets", got)
	}

	if _, err := Unpack(tar.NewReader(&buf), map[string]Dest{"upper/": {Dir: dst, Upper: true}}); err != nil {
		t.Fatalf("Unpack: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "tmp/data")); err != nil || string(b) != "kept" {
		t.Errorf("tmp/data = %q, %v; want %q", b, err, "kept")
	}
	if fi, err := os.Lstat(filepath.Join(dst, "tmp")); err != nil || fi.Mode() != fs.ModeDir|fs.ModeSticky|0o777 {
		t.Errorf("tmp: %v %v, want drwxrwxrwt", fi.Mode(), err)
	}
	for _, name := range []string{"tmp/redis.sock", "tmp/stale.sock"} {
		if _, err := os.Lstat(filepath.Join(dst, name)); err == nil {
			t.Errorf("%s exists in the destination: the restore's bind would fail on it", name)
		}
	}
	// The source's socket still answers: packing only read it.
	c, err := net.Dial("unix", filepath.Join(src, "tmp/redis.sock"))
	if err != nil {
		t.Fatalf("source socket after Pack: %v", err)
	}
	c.Close()
}
