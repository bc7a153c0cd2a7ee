package transfer

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// FuzzUnpack feeds Unpack arbitrary streams into a fresh directory and
// checks what it may never do, whatever the stream: write outside its
// destinations (a canary next to them stays as it was), leave a setuid or
// setgid file, a device (but an upper layer's whiteout), a sparse file or
// a foreign extended attribute behind, or make anything of the entry it
// refused. `go test` runs the seeds; `go test -fuzz FuzzUnpack` explores.
func FuzzUnpack(f *testing.F) {
	for _, seed := range unpackSeeds(f) {
		f.Add(seed)
	}
	f.Fuzz(unpackInvariants)
}

// unpackInvariants is FuzzUnpack's check of one stream.
func unpackInvariants(t *testing.T, data []byte) {
	parent := t.TempDir()
	upper, rootfs, outside := filepath.Join(parent, "upper"), filepath.Join(parent, "rootfs"), filepath.Join(parent, "outside")
	for _, d := range []string{upper, rootfs, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("original"), 0o600); err != nil {
		t.Fatal(err)
	}
	dirs := map[string]Dest{"upper/": {Dir: upper, Upper: true}, "rootfs/": {Dir: rootfs}}
	_, err := Unpack(tar.NewReader(bytes.NewReader(data)), dirs)

	// Nothing outside the destinations, the canary untouched.
	if b, rerr := os.ReadFile(victim); rerr != nil || string(b) != "original" {
		t.Fatalf("outside/victim = %q, %v", b, rerr)
	}
	for _, p := range listTree(t, parent) {
		if p != "." && p != "outside" && p != "outside/victim" && !allUnder([]string{p}, "upper") && !allUnder([]string{p}, "rootfs") {
			t.Fatalf("%s made outside the destinations", p)
		}
	}
	if got := listTree(t, outside); len(got) != 2 {
		t.Fatalf("outside holds %v", got)
	}
	for _, d := range []Dest{{Dir: upper, Upper: true}, {Dir: rootfs}} {
		checkTreeInvariants(t, d)
	}
	// The refused entry left nothing (unless an earlier entry made
	// that very path or something below it).
	if errors.Is(err, ErrRefused) {
		earlier, refused := refusedEntry(data, dirs)
		if refused == "" {
			return
		}
		for _, p := range earlier {
			if p == refused || strings.HasPrefix(p, refused+"/") {
				return
			}
		}
		if _, lerr := os.Lstat(refused); lerr == nil {
			t.Fatalf("refused entry %s exists: %v", refused, err)
		}
	}
}

// checkTreeInvariants fails on what Check forbids found under d.
func checkTreeInvariants(t *testing.T, d Dest) {
	t.Helper()
	err := filepath.WalkDir(d.Dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		m := fi.Mode()
		if m&fs.ModeSetuid != 0 || (m&fs.ModeSetgid != 0 && !m.IsDir()) {
			t.Errorf("%s: mode %v", p, m)
		}
		if m&fs.ModeDevice != 0 {
			st := fi.Sys().(*syscall.Stat_t)
			if !d.Upper || m&fs.ModeCharDevice == 0 || st.Rdev != 0 {
				t.Errorf("%s: device %v rdev %d", p, m, st.Rdev)
			}
		}
		for _, name := range listXattrs(p) {
			if !overlayXattr(name) {
				t.Errorf("%s: extended attribute %s", p, name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func listXattrs(path string) []string {
	buf := make([]byte, 4096)
	n, err := syscall.Listxattr(path, buf)
	if err != nil || n <= 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
}

// refusedEntry reads the stream as Unpack did and returns the targets of
// the entries before the first one Check refuses, and that one's target.
func refusedEntry(data []byte, dirs map[string]Dest) (earlier []string, refused string) {
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err != nil {
			return earlier, ""
		}
		target, d, err := resolve(dirs, hdr.Name)
		if err != nil {
			return earlier, ""
		}
		if Check(hdr, d.Upper) != nil {
			return earlier, target
		}
		earlier = append(earlier, target)
		if hdr.Typeflag == tar.TypeLink {
			if src, _, err := resolve(dirs, hdr.Linkname); err == nil {
				earlier = append(earlier, src)
			}
		}
		_, _ = io.Copy(io.Discard, tr)
	}
}

// unpackSeeds are streams Unpack must take or refuse: a packed tree with
// links, traversal names, symlink tricks, devices, setuid and setgid
// modes, foreign attributes, a sparse file, appends.
func unpackSeeds(tb testing.TB) [][]byte {
	e := func(name string, typ byte, mode int64, link, body string) entry {
		return entry{hdr: tar.Header{Name: name, Typeflag: typ, Mode: mode, Linkname: link}, body: body}
	}
	seeds := [][]byte{
		stream(tb,
			e("upper/", tar.TypeDir, 0o755, "", ""),
			e("upper/etc/", tar.TypeDir, 0o2775, "", ""),
			e("upper/etc/hostname", tar.TypeReg, 0o644, "", "web\n"),
			e("upper/etc/link", tar.TypeSymlink, 0o777, "hostname", ""),
			e("upper/etc/hard", tar.TypeLink, 0o644, "upper/etc/hostname", ""),
			e("upper/fifo", tar.TypeFifo, 0o644, "", ""),
			e("rootfs/bin/sh", tar.TypeReg, 0o755, "", "#!"),
		),
		stream(tb, e("upper/../../outside/victim", tar.TypeReg, 0o644, "", "pwned")),
		stream(tb, e("rootfs//etc/passwd", tar.TypeReg, 0o644, "", "x")),
		stream(tb, e("upper/esc", tar.TypeSymlink, 0o777, "../outside", ""), e("upper/esc/victim", tar.TypeReg, 0o644, "", "pwned")),
		stream(tb, e("upper", tar.TypeSymlink, 0o777, "../outside", ""), e("upper/victim", tar.TypeReg, 0o644, "", "pwned")),
		stream(tb, e("upper/h", tar.TypeLink, 0o666, "upper/../outside/victim", "")),
		stream(tb, e("upper/s", tar.TypeSymlink, 0o777, "../outside/victim", ""), e("upper/h", tar.TypeLink, 0o4755, "upper/s", "")),
		stream(tb, e("upper/a/b/null", tar.TypeChar, 0o666, "", "")),
		stream(tb, e("upper/a/wh", tar.TypeChar, 0, "", ""), e("rootfs/a/wh", tar.TypeChar, 0, "", "")),
		stream(tb, e("rootfs/sda", tar.TypeBlock, 0o660, "", "")),
		stream(tb, e("rootfs/ok", tar.TypeReg, 0o644, "", "x"), e("rootfs/a/b/su", tar.TypeReg, 0o4755, "", "x")),
		stream(tb, e("upper/ok", tar.TypeReg, 0o644, "", "x"), e("upper/ok", tar.TypeReg, 0o2755, "", "x")),
		stream(tb, entry{hdr: tar.Header{Name: "rootfs/ping", Mode: 0o755, PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "x"}}, body: "x"}),
		stream(tb, entry{hdr: tar.Header{Name: "upper/d/", Typeflag: tar.TypeDir, Mode: 0o755, PAXRecords: map[string]string{"SCHILY.xattr.user.overlay.opaque": "y"}}}),
		stream(tb, entry{hdr: tar.Header{Name: "upper/f", Mode: 0o644, PAXRecords: map[string]string{"SCHILY.xattr.user.foo": "x"}}, body: "x"}),
		stream(tb,
			e("upper/pages-1.img", tar.TypeReg, 0o600, "", "abc"),
			entry{hdr: tar.Header{Name: "upper/pages-1.img", Mode: 0o600, PAXRecords: map[string]string{appendKey: "1"}}, body: "def"},
		),
		stream(tb, entry{hdr: tar.Header{Name: "upper/x", Mode: 0o600, PAXRecords: map[string]string{appendKey: "1"}}, body: "def"}),
		append(rawPAX("GNU.sparse.major=1", "GNU.sparse.minor=0", "GNU.sparse.name=upper/big", "GNU.sparse.realsize=1099511627776"),
			stream(tb, entry{hdr: tar.Header{Name: "upper/big"}, body: "1\n0\n0\n" + strings.Repeat("\x00", 506)})...),
		stream(tb, e("other/x", tar.TypeReg, 0o644, "", "x")),
		{},
		[]byte("not a tar stream"),
	}
	return seeds
}
