package transfer

import (
	"archive/tar"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func write(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // umask-proof
		t.Fatal(err)
	}
}

func mkdir(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// roundTrip packs src under prefix and unpacks the stream into dst.
func roundTrip(t *testing.T, src, dst, prefix string) (packed, unpacked int64) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	packed, err := Pack(tw, src, prefix, prefix == "upper/")
	if err != nil {
		t.Fatalf("Pack: %v", err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	unpacked, err = Unpack(tar.NewReader(&buf), map[string]Dest{prefix: {Dir: dst, Upper: prefix == "upper/"}})
	if err != nil {
		t.Fatalf("Unpack: %v", err)
	}
	return packed, unpacked
}

func lstat(t *testing.T, path string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}

// setXattr sets a user.* or trusted.* attribute, or skips the test if the
// file system does not support it.
func setXattr(t *testing.T, path, name, value string) {
	t.Helper()
	if err := unix.Lsetxattr(path, name, []byte(value), 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) {
			t.Skipf("xattr %s not supported here: %v", name, err)
		}
		t.Fatal(err)
	}
}

func getXattr(t *testing.T, path, name string) string {
	t.Helper()
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(path, name, buf)
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", path, name, err)
	}
	return string(buf[:n])
}

func TestPackUnpackRoundTrip(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	write(t, filepath.Join(src, "secret"), "s3cret", 0o600)
	write(t, filepath.Join(src, "bin/run"), "#!/bin/sh\necho hi\n", 0o755)
	write(t, filepath.Join(src, "a/b/c/deep.txt"), "deep", 0o644)
	write(t, filepath.Join(src, "empty-file"), "", 0o644)
	mkdir(t, filepath.Join(src, "bin"), 0o755)
	mkdir(t, filepath.Join(src, "a/private"), 0o700)
	mkdir(t, filepath.Join(src, "empty"), 0o755)
	if err := os.Symlink("a/b/c/deep.txt", filepath.Join(src, "rel-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/nonexistent/target", filepath.Join(src, "a/abs-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(src, "bin/run"), filepath.Join(src, "a/b/run-hardlink")); err != nil {
		t.Fatal(err)
	}

	packed, unpacked := roundTrip(t, src, dst, "upper/")
	// Content bytes: the hard link's data travels once.
	want := int64(len("s3cret") + len("#!/bin/sh\necho hi\n") + len("deep"))
	if packed != want || unpacked != want {
		t.Errorf("bytes packed %d, unpacked %d, want %d", packed, unpacked, want)
	}

	type entry struct {
		mode    fs.FileMode
		content string // file content or symlink target
	}
	tree := func(root string) map[string]entry {
		out := map[string]entry{}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			fi, err := d.Info()
			if err != nil {
				return err
			}
			e := entry{mode: fi.Mode()}
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				e.content, err = os.Readlink(p)
			case fi.Mode().IsRegular():
				var b []byte
				b, err = os.ReadFile(p)
				e.content = string(b)
			}
			out[rel] = e
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	want2, got := tree(src), tree(dst)
	var names []string
	for n := range want2 {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if n == "." {
			continue // dst's own mode is the caller's
		}
		if got[n] != want2[n] {
			t.Errorf("%s: got %v %q, want %v %q", n, got[n].mode, got[n].content, want2[n].mode, want2[n].content)
		}
	}
	for n := range got {
		if _, ok := want2[n]; !ok {
			t.Errorf("unexpected %s in destination", n)
		}
	}

	// Explicit checks of what matters most.
	for path, mode := range map[string]fs.FileMode{"secret": 0o600, "bin/run": 0o755, "a/private": fs.ModeDir | 0o700, "bin": fs.ModeDir | 0o755} {
		fi, err := os.Lstat(filepath.Join(dst, path))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != mode {
			t.Errorf("%s mode = %v, want %v", path, fi.Mode(), mode)
		}
	}
	if lstat(t, filepath.Join(dst, "bin/run")).Ino != lstat(t, filepath.Join(dst, "a/b/run-hardlink")).Ino {
		t.Error("hard link not preserved: bin/run and a/b/run-hardlink are distinct inodes")
	}
	if target, err := os.Readlink(filepath.Join(dst, "a/abs-link")); err != nil || target != "/nonexistent/target" {
		t.Errorf("absolute symlink = %q, %v", target, err)
	}
}

// The overlay's own user.overlay.* attributes (an unprivileged overlay's
// opaque directories) travel; an application's user.* attributes do not.
func TestPackUnpackUserXattr(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	write(t, filepath.Join(src, "f"), "x", 0o644)
	mkdir(t, filepath.Join(src, "d"), 0o755)
	setXattr(t, filepath.Join(src, "f"), "user.coat.test", "value-1")
	setXattr(t, filepath.Join(src, "d"), "user.overlay.opaque", "y")
	roundTrip(t, src, dst, "upper/")
	if got := getXattr(t, filepath.Join(dst, "d"), "user.overlay.opaque"); got != "y" {
		t.Errorf("user.overlay.opaque = %q, want y", got)
	}
	if n, err := unix.Lgetxattr(filepath.Join(dst, "f"), "user.coat.test", make([]byte, 64)); err == nil {
		t.Errorf("user.coat.test travelled (%d bytes): only the overlay's own attributes may", n)
	}
}

func TestPackUnpackOwnership(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	src, dst := t.TempDir(), t.TempDir()
	write(t, filepath.Join(src, "f"), "x", 0o755)
	if err := os.Lchown(filepath.Join(src, "f"), 1234, 5678); err != nil {
		t.Fatal(err)
	}
	mkdir(t, filepath.Join(src, "d"), fs.ModeSticky|0o777)
	if err := os.Lchown(filepath.Join(src, "d"), 42, 43); err != nil {
		t.Fatal(err)
	}
	// A setgid directory only passes its group on: it is kept (chown
	// clears the bit, so set it after; Unpack must do the same).
	mkdir(t, filepath.Join(src, "g"), 0o755)
	if err := os.Lchown(filepath.Join(src, "g"), 0, 50); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(src, "g"), fs.ModeDir|fs.ModeSetgid|0o2775); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, src, dst, "upper/")
	st := lstat(t, filepath.Join(dst, "f"))
	if st.Uid != 1234 || st.Gid != 5678 || st.Mode&0o7777 != 0o755 {
		t.Errorf("f: uid %d gid %d mode %o, want 1234 5678 755", st.Uid, st.Gid, st.Mode&0o7777)
	}
	st = lstat(t, filepath.Join(dst, "d"))
	if st.Uid != 42 || st.Gid != 43 || st.Mode&0o7777 != 0o1777 {
		t.Errorf("d: uid %d gid %d mode %o, want 42 43 1777", st.Uid, st.Gid, st.Mode&0o7777)
	}
	st = lstat(t, filepath.Join(dst, "g"))
	if st.Gid != 50 || st.Mode&0o7777 != 0o2775 {
		t.Errorf("g: gid %d mode %o, want 50 2775", st.Gid, st.Mode&0o7777)
	}
}

// An overlayfs upper layer records deletions as 0:0 character devices and
// replaced directories with trusted.overlay.opaque=y; both must survive.
func TestPackUnpackOverlayWhiteouts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for mknod and trusted.* xattrs")
	}
	src, dst := t.TempDir(), t.TempDir()
	mkdir(t, filepath.Join(src, "etc"), 0o755)
	if err := unix.Mknod(filepath.Join(src, "etc/deleted.conf"), unix.S_IFCHR|0o000, 0); err != nil {
		t.Fatal(err)
	}
	mkdir(t, filepath.Join(src, "var/cache"), 0o755)
	write(t, filepath.Join(src, "var/cache/new"), "fresh", 0o644)
	setXattr(t, filepath.Join(src, "var/cache"), "trusted.overlay.opaque", "y")

	roundTrip(t, src, dst, "upper/")

	fi, err := os.Lstat(filepath.Join(dst, "etc/deleted.conf"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&fs.ModeCharDevice == 0 || st.Rdev != 0 {
		t.Errorf("whiteout = mode %v rdev %d, want a 0:0 character device", fi.Mode(), st.Rdev)
	}
	if got := getXattr(t, filepath.Join(dst, "var/cache"), "trusted.overlay.opaque"); got != "y" {
		t.Errorf("opaque xattr = %q, want y", got)
	}
	if b, err := os.ReadFile(filepath.Join(dst, "var/cache/new")); err != nil || string(b) != "fresh" {
		t.Errorf("file in opaque dir = %q, %v", b, err)
	}
}

type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func makeTar(t *testing.T, entries ...tarEntry) *tar.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, Size: int64(len(e.body))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
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
	return tar.NewReader(&buf)
}

// listTree returns the relative paths under root.
func listTree(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestUnpackKeepsNamesInside(t *testing.T) {
	tests := []struct {
		prefix, name, want string // want: path under dest
	}{
		{"upper/", "upper/../x", "x"},
		{"upper/", "upper/../../../etc/evil", "etc/evil"},
		{"upper/", "upper//abs", "abs"},
		{"upper/", "upper/a/../../b", "b"},
		{"upper/", "upper/./c/./d", "c/d"},
		{"", "../x", "x"},
		{"", "../../x/y", "x/y"},
		{"", "/etc/passwd", "etc/passwd"},
		{"", "a/../../../z", "z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dest := filepath.Join(parent, "dest")
			mkdir(t, dest, 0o755)
			_, err := Unpack(makeTar(t, tarEntry{name: tt.name, body: "payload"}), map[string]Dest{tt.prefix: {Dir: dest}})
			if err != nil {
				t.Fatalf("Unpack: %v", err)
			}
			if b, err := os.ReadFile(filepath.Join(dest, tt.want)); err != nil || string(b) != "payload" {
				t.Errorf("want %s inside dest: %q, %v", tt.want, b, err)
			}
			// Nothing was written next to dest.
			if got := listTree(t, parent); got[0] != "." || !allUnder(got[1:], "dest") {
				t.Errorf("files outside dest: %v", got)
			}
		})
	}
}

func allUnder(paths []string, dir string) bool {
	for _, p := range paths {
		if p != dir && !strings.HasPrefix(p, dir+"/") {
			return false
		}
	}
	return true
}

// Links are confined like names: a hard link cannot reach outside, and a
// symlink planted by the stream cannot be used to write through it.
func TestUnpackLinksStayInside(t *testing.T) {
	tests := []struct {
		name    string
		entries func(outside string) []tarEntry
	}{
		{"hard link to ../", func(outside string) []tarEntry {
			return []tarEntry{{name: "upper/h", typ: tar.TypeLink, link: "upper/../../" + filepath.Base(outside) + "/victim"}}
		}},
		{"file through symlinked dir", func(outside string) []tarEntry {
			return []tarEntry{
				{name: "upper/esc", typ: tar.TypeSymlink, link: outside},
				{name: "upper/esc/victim", body: "pwned"},
			}
		}},
		{"file through relative symlinked dir", func(outside string) []tarEntry {
			return []tarEntry{
				{name: "upper/esc", typ: tar.TypeSymlink, link: "../" + filepath.Base(outside)},
				{name: "upper/esc/new", body: "pwned"},
			}
		}},
		{"dir over symlink", func(outside string) []tarEntry {
			return []tarEntry{
				{name: "upper/esc", typ: tar.TypeSymlink, link: outside},
				{name: "upper/esc/", typ: tar.TypeDir, mode: 0o777},
			}
		}},
		{"hard link to a symlink", func(outside string) []tarEntry {
			return []tarEntry{
				{name: "upper/s", typ: tar.TypeSymlink, link: filepath.Join(outside, "victim")},
				{name: "upper/h", typ: tar.TypeLink, link: "upper/s", mode: 0o666},
			}
		}},
		{"hard link through symlinked dir", func(outside string) []tarEntry {
			return []tarEntry{
				{name: "upper/esc", typ: tar.TypeSymlink, link: outside},
				{name: "upper/h", typ: tar.TypeLink, link: "upper/esc/victim"},
				{name: "upper/h", body: "pwned"},
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dest, outside := filepath.Join(parent, "dest"), filepath.Join(parent, "outside")
			mkdir(t, dest, 0o755)
			write(t, filepath.Join(outside, "victim"), "original", 0o600)
			mkdir(t, outside, 0o700)

			_, err := Unpack(makeTar(t, tt.entries(outside)...), map[string]Dest{"upper/": {Dir: dest, Upper: true}})
			t.Logf("Unpack: %v", err) // refusing is fine; escaping is not

			if b, err := os.ReadFile(filepath.Join(outside, "victim")); err != nil || string(b) != "original" {
				t.Errorf("outside/victim = %q, %v: modified through the stream", b, err)
			}
			fi, err := os.Stat(filepath.Join(outside, "victim"))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Nlink != 1 {
				t.Errorf("outside/victim mode %v nlink %d: touched through the stream", fi.Mode(), fi.Sys().(*syscall.Stat_t).Nlink)
			}
			if got := listTree(t, outside); len(got) != 2 {
				t.Errorf("outside now holds %v", got)
			}
			fi, err = os.Stat(outside)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o700 {
				t.Errorf("outside dir mode changed to %v", fi.Mode().Perm())
			}
		})
	}
}

func TestUnpackPrefixes(t *testing.T) {
	img, upper := t.TempDir(), t.TempDir()
	dirs := map[string]Dest{"image/": {Dir: img}, "upper/": {Dir: upper, Upper: true}}
	n, err := Unpack(makeTar(t,
		tarEntry{name: "image/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "image/core.img", body: "core"},
		tarEntry{name: "upper/etc/hostname", body: "web\n"},
	), dirs)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len("core")+len("web\n")) {
		t.Errorf("bytes = %d", n)
	}
	if b, _ := os.ReadFile(filepath.Join(img, "core.img")); string(b) != "core" {
		t.Errorf("image/core.img = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(upper, "etc/hostname")); string(b) != "web\n" {
		t.Errorf("upper/etc/hostname = %q", b)
	}

	for _, name := range []string{"other/x", "imagex/y", "../upper/z", "up"} {
		_, err := Unpack(makeTar(t, tarEntry{name: name, body: "x"}), dirs)
		if err == nil || !strings.Contains(err.Error(), "unexpected entry") {
			t.Errorf("entry %q: err = %v, want unexpected entry", name, err)
		}
	}
}

func TestPackPrefixAndEmptyRoot(t *testing.T) {
	src := t.TempDir()
	write(t, filepath.Join(src, "d/f"), "x", 0o644)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if _, err := Pack(tw, src, "upper/", true); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	var names []string
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s carries user/group names %q/%q", h.Name, h.Uname, h.Gname)
		}
	}
	var cleaned []string
	for _, n := range names {
		if !strings.HasPrefix(n, "upper/") {
			t.Errorf("name %q lacks the prefix", n)
		}
		cleaned = append(cleaned, path.Clean(n))
	}
	if got := strings.Join(cleaned, " "); got != "upper upper/d upper/d/f" {
		t.Errorf("names = %v", names)
	}
	if !strings.HasSuffix(names[1], "/") {
		t.Errorf("directory name %q does not end in /", names[1])
	}

	if _, err := Pack(tar.NewWriter(&bytes.Buffer{}), filepath.Join(src, "missing"), "x/", false); err == nil {
		t.Error("Pack of a missing root succeeded")
	}
}
