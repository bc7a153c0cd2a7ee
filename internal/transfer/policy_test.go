package transfer

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// entry is one header (and body) of a hand-made stream.
type entry struct {
	hdr  tar.Header
	body string
}

func stream(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if len(h.PAXRecords) > 0 {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Each refused entry is refused before anything of it is made: not even
// its parent directories appear.
func TestUnpackRefuses(t *testing.T) {
	tests := []struct {
		name, want string
		hdr        tar.Header
	}{
		{"char device in upper", "device node 1:3", tar.Header{Name: "upper/a/b/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}},
		{"whiteout outside an upper layer", "device node 0:0", tar.Header{Name: "rootfs/a/b/wh", Typeflag: tar.TypeChar}},
		{"block device", "block device 8:0", tar.Header{Name: "upper/a/b/sda", Typeflag: tar.TypeBlock, Devmajor: 8}},
		{"setuid file", "setuid or setgid", tar.Header{Name: "upper/a/b/su", Mode: 0o4755}},
		{"setgid file", "setuid or setgid", tar.Header{Name: "rootfs/a/b/sg", Mode: 0o2755}},
		{"setuid dir", "setuid or setgid", tar.Header{Name: "rootfs/a/b/", Typeflag: tar.TypeDir, Mode: 0o4755}},
		{"setuid hard link", "setuid or setgid", tar.Header{Name: "upper/a/b/h", Typeflag: tar.TypeLink, Linkname: "upper/x", Mode: 0o4755}},
		{"setuid fifo", "setuid or setgid", tar.Header{Name: "upper/a/b/p", Typeflag: tar.TypeFifo, Mode: 0o4644}},
		{"capability xattr", `"security.capability"`, tar.Header{Name: "rootfs/a/b/ping", PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "x"}}},
		{"application xattr", `"user.foo"`, tar.Header{Name: "upper/a/b/f", PAXRecords: map[string]string{"SCHILY.xattr.user.foo": "x"}}},
		{"trusted non-overlay xattr", `"trusted.foo"`, tar.Header{Name: "upper/a/b/f", PAXRecords: map[string]string{"SCHILY.xattr.trusted.foo": "x"}}},
		{"unknown prefix", "unexpected entry", tar.Header{Name: "other/a/b/f"}},
		{"destination as symlink", "can only be a directory", tar.Header{Name: "upper", Typeflag: tar.TypeSymlink, Linkname: "/etc"}},
		{"destination as file", "can only be a directory", tar.Header{Name: "upper", Typeflag: tar.TypeReg}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			upper, rootfs := filepath.Join(parent, "upper"), filepath.Join(parent, "rootfs")
			mkdir(t, upper, 0o755)
			mkdir(t, rootfs, 0o755)
			data := stream(t, entry{hdr: tar.Header{Name: "upper/ok", Typeflag: tar.TypeReg}, body: "fine"}, entry{hdr: tt.hdr, body: "x"})
			_, err := Unpack(tar.NewReader(bytes.NewReader(data)), map[string]Dest{"upper/": {Dir: upper, Upper: true}, "rootfs/": {Dir: rootfs}})
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Unpack = %v, want refused saying %q", err, tt.want)
			}
			if strings.Contains(tt.want, "device") || strings.Contains(tt.want, "setuid") || strings.Contains(tt.want, "attribute") {
				if !strings.Contains(err.Error(), "send again") {
					t.Errorf("error does not say what to do: %v", err)
				}
			}
			// The entry before it was made; nothing of the refused one was.
			if got := strings.Join(listTree(t, parent), " "); got != ". rootfs upper upper/ok" {
				t.Errorf("after the refusal the tree is %s", got)
			}
		})
	}
}

// rawPAX is a PAX extended header block for the next entry, written by
// hand: tar.Writer drops GNU.sparse.* records.
func rawPAX(recs ...string) []byte {
	var body string
	for _, r := range recs {
		n := len(r) + 3
		for len(fmt.Sprintf("%d %s\n", n, r)) != n {
			n++
		}
		body += fmt.Sprintf("%d %s\n", n, r)
	}
	blk := make([]byte, 512)
	copy(blk[0:], "PaxHeaders/x")
	copy(blk[100:], "0000644\x00")
	copy(blk[108:], "0000000\x00")
	copy(blk[116:], "0000000\x00")
	copy(blk[124:], fmt.Sprintf("%011o\x00", len(body)))
	copy(blk[136:], "00000000000\x00")
	blk[156] = tar.TypeXHeader
	copy(blk[257:], "ustar\x0000")
	copy(blk[148:], "        ")
	sum := 0
	for _, b := range blk {
		sum += int(b)
	}
	copy(blk[148:], fmt.Sprintf("%06o\x00 ", sum))
	data := append(blk, body...)
	return append(data, make([]byte, (512-len(body)%512)%512)...)
}

// A sparse file is refused: a few bytes of stream could claim a terabyte
// of holes, written out as zeros.
func TestUnpackRefusesSparse(t *testing.T) {
	dest := t.TempDir()
	data := append(rawPAX("GNU.sparse.major=1", "GNU.sparse.minor=0", "GNU.sparse.name=upper/big", "GNU.sparse.realsize=1099511627776"),
		stream(t, entry{hdr: tar.Header{Name: "upper/big"}, body: "1\n0\n0\n" + strings.Repeat("\x00", 506)})...)
	_, err := Unpack(tar.NewReader(bytes.NewReader(data)), map[string]Dest{"upper/": {Dir: dest, Upper: true}})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "sparse file") {
		t.Fatalf("Unpack = %v, want refused: sparse file", err)
	}
	if got := listTree(t, dest); len(got) != 1 {
		t.Errorf("after the refusal the tree is %v", got)
	}
}

// What is allowed still is: an upper layer's overlay attributes on a
// directory, a setgid directory, a FIFO, a sticky directory (the bits are
// checked; making the whiteout and setting trusted.* need root and are
// tested in tar_test.go).
func TestCheckAllows(t *testing.T) {
	for _, tt := range []struct {
		hdr   tar.Header
		upper bool
	}{
		{tar.Header{Name: "upper/wh", Typeflag: tar.TypeChar}, true},
		{tar.Header{Name: "upper/d/", Typeflag: tar.TypeDir, Mode: 0o2775}, true},
		{tar.Header{Name: "upper/t/", Typeflag: tar.TypeDir, Mode: 0o1777}, false},
		{tar.Header{Name: "upper/p", Typeflag: tar.TypeFifo, Mode: 0o644}, false},
		{tar.Header{Name: "upper/s", Typeflag: tar.TypeSymlink, Mode: 0o7777, Linkname: "x"}, false},
		{tar.Header{Name: "upper/o/", Typeflag: tar.TypeDir, PAXRecords: map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.overlay.opaque": "y"}}, true},
		{tar.Header{Name: "checkpoint/pages-1.img", Typeflag: tar.TypeReg, PAXRecords: map[string]string{appendKey: "1"}}, false},
	} {
		if err := Check(&tt.hdr, tt.upper); err != nil {
			t.Errorf("Check(%s) = %v", tt.hdr.Name, err)
		}
	}
}

// The sender learns first: CheckTree and Pack refuse a setuid file before
// anything of it is written.
func TestPackRefusesSetuid(t *testing.T) {
	src := t.TempDir()
	write(t, filepath.Join(src, "bin/su"), "x", 0o755)
	if err := os.Chmod(filepath.Join(src, "bin/su"), os.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"CheckTree": CheckTree(src, false),
		"Pack": func() error {
			var buf bytes.Buffer
			_, err := Pack(tar.NewWriter(&buf), src, "rootfs/", false)
			if strings.Contains(buf.String(), "rootfs/bin/su") {
				t.Error("Pack wrote the refused entry")
			}
			return err
		}(),
	} {
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), filepath.Join(src, "bin/su")) || !strings.Contains(err.Error(), "chmod u-s,g-s") {
			t.Errorf("%s = %v, want a refusal naming the file and saying what to do", name, err)
		}
	}
}
