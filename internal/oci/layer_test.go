package oci

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"

	"github.com/coat-project/coat/internal/transfer"
)

func ociLayer(t *testing.T, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(h.Name))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(h.Name))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// OCI whiteouts become overlayfs's (0:0 character devices, opaque
// directories), made by our code after the tar policy passed the rest;
// setuid bits are cleared, device nodes and xattrs dropped.
func TestNormalizeWhiteouts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mknod, trusted.* xattrs)")
	}
	layer := ociLayer(t,
		&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "etc/.wh.old.conf", Typeflag: tar.TypeReg, Mode: 0o644},
		&tar.Header{Name: "var/cache/", Typeflag: tar.TypeDir, Mode: 0o755},
		&tar.Header{Name: "var/cache/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644},
		&tar.Header{Name: "opt/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644}, // its directory not in the layer
		&tar.Header{Name: ".wh.gone", Typeflag: tar.TypeReg, Mode: 0o644},
		&tar.Header{Name: "etc/.wh..", Typeflag: tar.TypeReg, Mode: 0o644}, // names the parent: dropped
		&tar.Header{Name: "bin/su", Typeflag: tar.TypeReg, Mode: 0o4755},
		&tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3},
		&tar.Header{Name: "bin/ping", Typeflag: tar.TypeReg, Mode: 0o755, PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "x"}},
	)
	var out bytes.Buffer
	sc, err := Normalize(bytes.NewReader(layer), &out, "rootfs/")
	if err != nil {
		t.Fatal(err)
	}
	if sc.SetID != 1 || sc.Devices != 1 || sc.Xattrs != 1 {
		t.Errorf("changes %+v, want 1 setuid, 1 device, 1 xattr", sc.Changes)
	}
	if strings.Join(sc.Whiteouts, " ") != "etc/old.conf gone" || strings.Join(sc.Opaque, " ") != "var/cache opt" {
		t.Errorf("whiteouts %q, opaque %q", sc.Whiteouts, sc.Opaque)
	}
	root := filepath.Join(t.TempDir(), "rootfs")
	if _, err := transfer.Unpack(tar.NewReader(&out), map[string]transfer.Dest{"rootfs/": {Dir: root}}); err != nil {
		t.Fatalf("the tar policy refused the normalized layer: %v", err)
	}
	if err := ApplyWhiteouts(root, sc); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"etc/old.conf", "gone"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, p), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
			t.Errorf("%s: not a 0:0 character device (%v, mode %o rdev %d)", p, err, st.Mode, st.Rdev)
		}
	}
	for _, d := range []string{"var/cache", "opt"} {
		v := make([]byte, 8)
		n, err := unix.Lgetxattr(filepath.Join(root, d), "trusted.overlay.opaque", v)
		if err != nil || string(v[:n]) != "y" {
			t.Errorf("%s: trusted.overlay.opaque = %q, %v; want y", d, v[:n], err)
		}
	}
	for _, p := range []string{"etc/.wh.old.conf", "var/cache/.wh..wh..opq", "dev/null"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s exists (%v)", p, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "bin/su")); err != nil || fi.Mode()&os.ModeSetuid != 0 {
		t.Errorf("bin/su: %v, %v; want setuid cleared", fi.Mode(), err)
	}
	if n, _ := unix.Lgetxattr(filepath.Join(root, "bin/ping"), "security.capability", make([]byte, 8)); n > 0 {
		t.Error("bin/ping kept its capability xattr")
	}
}

// A whiteout never reaches outside the layer, even through a symlink
// the layer planted.
func TestApplyWhiteoutsStaysInside(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	root, outside := filepath.Join(dir, "rootfs"), filepath.Join(dir, "outside")
	for _, d := range []string{root, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := ApplyWhiteouts(root, LayerScan{Whiteouts: []string{"link/victim"}}); err == nil {
		t.Error("a whiteout through a symlink was made")
	}
	if err := ApplyWhiteouts(root, LayerScan{Whiteouts: []string{"../outside/victim"}}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(outside, "victim")); err != nil || string(b) != "x" {
		t.Errorf("the file outside was touched: %q, %v", b, err)
	}
}

// fakeLayer serves content under a diffID of our choosing.
type fakeLayer struct {
	content []byte
	diffID  v1.Hash
}

func (l fakeLayer) Digest() (v1.Hash, error) { return l.diffID, nil }
func (l fakeLayer) DiffID() (v1.Hash, error) { return l.diffID, nil }
func (l fakeLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.content)), nil
}
func (l fakeLayer) Uncompressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l.content)), nil
}
func (l fakeLayer) Size() (int64, error)                { return int64(len(l.content)), nil }
func (l fakeLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

func TestScanLayerChecksDiffID(t *testing.T) {
	good := ociLayer(t, &tar.Header{Name: "etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644})
	s := sha256.Sum256(good)
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
	info, err := ScanLayer(fakeLayer{good, h}, h)
	if err != nil || info.DiffID != h.String() || info.Bytes != int64(len(good)) || string(info.Passwd) != "etc/passwd" {
		t.Errorf("ScanLayer(good) = %+v, %v", info, err)
	}
	// A layer whose own DiffID agrees with its content (as
	// go-containerregistry's computed ones do) but not with the image's
	// configuration.
	other := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("e", 64)}
	if _, err := ScanLayer(fakeLayer{good, h}, other); err == nil || !strings.Contains(err.Error(), "does not match its digest") {
		t.Errorf("ScanLayer(good, another diffID) = %v, want a digest mismatch", err)
	}
	bad := bytes.Clone(good)
	bad[600] ^= 1 // in the file's content
	if _, err := ScanLayer(fakeLayer{bad, h}, h); err == nil || !strings.Contains(err.Error(), "does not match its digest") {
		t.Errorf("ScanLayer(corrupt) = %v, want a digest mismatch", err)
	}
}
