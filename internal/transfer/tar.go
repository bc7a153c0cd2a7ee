// Package transfer packs directory trees into tar streams and unpacks them:
// checkpoint images and rootfs upper layers between agents, and image
// imports from the CLI. It keeps what an overlayfs upper layer needs:
// modes, ownership, symlinks, hard links, whiteouts (0:0 character devices)
// and the overlay's own extended attributes (opaque directories). UNIX
// socket files are left out: see Pack.
//
// What a stream may create is limited, whoever sent it (Check, applied by
// Unpack to every entry before anything of it is made, and by Pack and
// CheckTree to the tree sent, so that a sender learns before it sends):
//
//   - no name leaves its destination directory, and nothing is written
//     through a symlink, whatever the stream planted before;
//   - no device nodes, except whiteouts (0:0 character devices) in a
//     destination that is an overlayfs upper layer (Dest.Upper); FIFOs are
//     fine;
//   - no setuid files and no setgid files (a setgid directory, which only
//     passes its group on, is fine). They are refused, not stripped: a
//     stripped file would quietly differ from what was sent. Containers run
//     with no_new_privs, so the bits would do nothing there anyway; clear
//     them (chmod u-s,g-s) in the source directory or the container;
//   - no extended attributes but the overlay's own, trusted.overlay.* and
//     user.overlay.*. Pack sends no others (security.capability, user.*
//     of applications and so on are left behind);
//   - no sparse files (Pack never sends them; a few bytes of stream could
//     claim terabytes of holes).
//
// Refused entries are errors matching ErrRefused that name the entry.
package transfer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrRefused is an entry that Check refuses.
var ErrRefused = errors.New("refused")

// Dest is where the entries of one prefix go.
type Dest struct {
	Dir string
	// Upper: Dir is an overlayfs upper layer, where whiteouts (0:0
	// character devices) are allowed.
	Upper bool
}

// overlayXattr reports whether name is one of overlayfs's own extended
// attributes, the only ones a stream may carry.
func overlayXattr(name string) bool {
	return strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.")
}

const xattrPAX = "SCHILY.xattr."

// Check refuses an entry that Unpack must not create (see the package
// comment); upper says whether its destination is an upper layer. The
// error matches ErrRefused and says what to do.
func Check(hdr *tar.Header, upper bool) error {
	if err := check(hdr, upper); err != nil {
		return fmt.Errorf("%s: %w", hdr.Name, err)
	}
	return nil
}

// check is Check without the entry's name.
func check(hdr *tar.Header, upper bool) error {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrRefused}, args...)...)
	}
	if hdr.Typeflag == tar.TypeGNUSparse {
		return refuse("sparse file: not accepted (its holes could claim any size): send it as a regular file")
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return refuse("sparse file: not accepted (its holes could claim any size): send it as a regular file")
		}
	}
	switch hdr.Typeflag {
	case tar.TypeChar:
		if !upper || hdr.Devmajor != 0 || hdr.Devminor != 0 {
			return refuse("device node %d:%d: devices are not accepted (a container gets its own /dev; only an upper layer's 0:0 whiteouts are): remove it and send again", hdr.Devmajor, hdr.Devminor)
		}
	case tar.TypeBlock:
		return refuse("block device %d:%d: devices are not accepted (a container gets its own /dev): remove it and send again", hdr.Devmajor, hdr.Devminor)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if hdr.Mode&0o4000 != 0 || (hdr.Mode&0o2000 != 0 && hdr.Typeflag != tar.TypeDir) {
			return refuse("mode %04o is setuid or setgid: such files are not accepted (containers run with no_new_privs, so the bit does nothing there): clear it with `chmod u-s,g-s` and send again", hdr.Mode&0o7777)
		}
	}
	for k := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, xattrPAX); ok && !overlayXattr(name) {
			return refuse("extended attribute %q: only the overlay's own (trusted.overlay.*, user.overlay.*) are accepted: remove it (setfattr -x) and send again", name)
		}
	}
	return nil
}

// CheckTree applies Check to the tree under root as Pack would send it,
// so that a sender learns what would be refused before it sends.
func CheckTree(root string, upper bool) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		hdr, err := header(root, path, "", d, nil)
		if err != nil || hdr == nil {
			return err
		}
		if err := check(hdr, upper); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		return nil
	})
}

// header is the tar header Pack writes for path (links maps inodes of
// regular files with several links to the first name sent, if not nil);
// nil for a UNIX socket file, which is not sent.
func header(root, path, prefix string, d fs.DirEntry, links map[uint64]string) (*tar.Header, error) {
	rel, err := filepath.Rel(root, path)
	if err != nil {
		return nil, err
	}
	if rel == "." {
		rel = ""
	}
	fi, err := d.Info()
	if err != nil {
		return nil, err
	}
	if fi.Mode()&fs.ModeSocket != 0 {
		return nil, nil
	}
	var link string
	if fi.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(path); err != nil {
			return nil, err
		}
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	hdr.Name = prefix + rel
	if fi.IsDir() {
		hdr.Name += "/"
	}
	hdr.Uname, hdr.Gname = "", ""
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && links != nil {
		if fi.Mode().IsRegular() && st.Nlink > 1 {
			if first, seen := links[st.Ino]; seen {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				links[st.Ino] = hdr.Name
			}
		}
	}
	if x := xattrs(path); len(x) > 0 {
		hdr.PAXRecords = x
		hdr.Format = tar.FormatPAX
	}
	return hdr, nil
}

// Pack writes the tree under root into tw with names prefixed by prefix
// (e.g. "upper/"). It returns the bytes of file content written. An entry
// that Check refuses (with upper) stops it before it is written.
//
// UNIX socket files are left out (tar has no type for them, and a socket
// file holds no data): CRIU's restore binds each socket the container
// had bound, which makes the file anew with the mode and owner it had at
// the dump; it would refuse a non-socket file in the way. A socket file
// no process had bound (a stale one) is not moved.
func Pack(tw *tar.Writer, root, prefix string, upper bool) (int64, error) {
	var total int64
	links := map[uint64]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		hdr, err := header(root, path, prefix, d, links)
		if err != nil || hdr == nil {
			return err
		}
		if err := check(hdr, upper); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			n, err := io.Copy(tw, f)
			f.Close()
			total += n
			if err != nil {
				return err
			}
		}
		return nil
	})
	return total, err
}

func xattrs(path string) map[string]string {
	sz, err := unix.Llistxattr(path, nil)
	if err != nil || sz <= 0 {
		return nil
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(path, buf)
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if !overlayXattr(name) {
			continue
		}
		v := make([]byte, 4096)
		n, err := unix.Lgetxattr(path, name, v)
		if err == nil {
			out[xattrPAX+name] = string(v[:n])
		}
	}
	return out
}

// Unpack extracts tr. Entries must start with one of the prefixes of
// dirs, which map to destinations: map[prefix]Dest. Every entry is checked
// (Check) before anything of it is made; names that would escape their
// directory are refused, and nothing is written through a symlink. It
// returns the bytes of content.
func Unpack(tr *tar.Reader, dirs map[string]Dest) (int64, error) {
	var total int64
	// One copy buffer for all files: a checkpoint image of a container
	// with a thousand TCP connections is a thousand small files.
	buf := make([]byte, 32<<10)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		target, dest, err := resolve(dirs, hdr.Name)
		if err != nil {
			return total, err
		}
		if err := Check(hdr, dest.Upper); err != nil {
			return total, err
		}
		if target == dest.Dir && hdr.Typeflag != tar.TypeDir {
			return total, fmt.Errorf("%s: %w: the destination directory itself can only be a directory", hdr.Name, ErrRefused)
		}
		if err := noSymlinkParents(dest.Dir, target); err != nil {
			return total, fmt.Errorf("extract %s: %w", hdr.Name, err)
		}
		n, err := extract(tr, hdr, target, dirs, buf)
		total += n
		if err != nil {
			return total, fmt.Errorf("extract %s: %w", hdr.Name, err)
		}
	}
}

// resolve maps a name in the stream to its path and the destination it
// belongs under.
func resolve(dirs map[string]Dest, name string) (target string, dest Dest, err error) {
	for prefix, d := range dirs {
		var rel string
		switch {
		case strings.HasPrefix(name, prefix):
			rel = strings.TrimPrefix(name, prefix)
		case name == strings.TrimSuffix(prefix, "/"):
			rel = "" // the directory itself
		default:
			continue
		}
		// Cleaning against "/" keeps every name inside the directory.
		return filepath.Join(d.Dir, filepath.Clean("/"+rel)), d, nil
	}
	return "", Dest{}, fmt.Errorf("unexpected entry %q in stream: %w", name, ErrRefused)
}

// NoSymlinkParents refuses a target below root whose parents include a
// symlink (see noSymlinkParents), for code that makes entries of its own
// in a tree Unpack made (an image layer's whiteouts).
func NoSymlinkParents(root, target string) error { return noSymlinkParents(root, target) }

// noSymlinkParents refuses a target below root whose existing parent
// directories include a symlink (one the stream itself may have planted):
// following it would write outside root.
func noSymlinkParents(root, target string) error {
	rel, err := filepath.Rel(root, target)
	if err != nil {
		return err
	}
	if fi, err := os.Lstat(root); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symlink: refusing to extract through it", root)
	}
	p := root
	parts := strings.Split(rel, string(filepath.Separator))
	for _, part := range parts[:len(parts)-1] {
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s is a symlink: refusing to extract through it", p)
		}
	}
	return nil
}

func extract(tr *tar.Reader, hdr *tar.Header, target string, dirs map[string]Dest, buf []byte) (int64, error) {
	mode := uint32(hdr.Mode & 0o7777)
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return 0, err
	}
	var n int64
	switch hdr.Typeflag {
	case tar.TypeDir:
		if fi, err := os.Lstat(target); err == nil && !fi.IsDir() {
			_ = os.Remove(target) // e.g. a symlink: never chmod through it
		}
		if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return 0, err
		}
	case tar.TypeReg:
		flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
		if hdr.PAXRecords[appendKey] == "1" {
			// More of a file already received (Follow): never through a
			// link, never anything but a regular file.
			flags = os.O_WRONLY | os.O_APPEND | unix.O_NOFOLLOW
			if fi, err := os.Lstat(target); err != nil || !fi.Mode().IsRegular() {
				return 0, fmt.Errorf("append to %s: not a file received before", hdr.Name)
			}
		} else {
			_ = os.Remove(target)
		}
		f, err := os.OpenFile(target, flags, 0o600)
		if err != nil {
			return 0, err
		}
		// The rest through the descriptor: no path walks, and nothing
		// that could have replaced the file since it was opened.
		n, err = io.CopyBuffer(onlyWriter{f}, tr, buf)
		if err == nil {
			err = finishFile(f, hdr, mode)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return n, err
	case tar.TypeSymlink:
		_ = os.Remove(target)
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return 0, err
		}
	case tar.TypeLink:
		src, from, err := resolve(dirs, hdr.Linkname)
		if err != nil {
			return 0, err
		}
		if err := noSymlinkParents(from.Dir, src); err != nil {
			return 0, err
		}
		_ = os.Remove(target)
		if err := os.Link(src, target); err != nil {
			return 0, err
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		_ = os.Remove(target)
		if err := unix.Mknod(target, kind|mode, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))); err != nil {
			return 0, err
		}
	default:
		return 0, nil
	}
	if err := setXattrs(hdr, func(name string, v []byte) error { return unix.Lsetxattr(target, name, v, 0) }); err != nil {
		return n, err
	}
	if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil && euid == 0 {
		return n, err
	}
	// Never chmod through a symlink, including a hard link to one.
	fi, err := os.Lstat(target)
	if err != nil {
		return n, err
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		if err := unix.Chmod(target, mode); err != nil {
			return n, err
		}
	}
	return n, nil
}

var euid = os.Geteuid()

// finishFile gives a regular file extracted to f its header's extended
// attributes, owner and mode, in extract's order (attributes, owner,
// mode), through the descriptor.
func finishFile(f *os.File, hdr *tar.Header, mode uint32) error {
	fd := int(f.Fd())
	if err := setXattrs(hdr, func(name string, v []byte) error { return unix.Fsetxattr(fd, name, v, 0) }); err != nil {
		return err
	}
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil && euid == 0 {
		return err
	}
	return unix.Fchmod(fd, mode)
}

// setXattrs sets the extended attributes of hdr's PAX records with set.
func setXattrs(hdr *tar.Header, set func(name string, v []byte) error) error {
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, xattrPAX); ok {
			if err := set(name, []byte(v)); err != nil {
				return fmt.Errorf("set xattr %s: %w", name, err)
			}
		}
	}
	return nil
}

// onlyWriter hides an *os.File's ReadFrom, which would copy through a
// buffer of its own for each file.
type onlyWriter struct{ io.Writer }
