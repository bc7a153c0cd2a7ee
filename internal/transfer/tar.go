// Package transfer packs directory trees into tar streams and unpacks them:
// checkpoint images and rootfs upper layers between agents, and image
// imports from the CLI. It keeps what an overlayfs upper layer needs:
// modes, ownership, symlinks, hard links, whiteouts (0:0 character devices)
// and trusted.* / user.* extended attributes (opaque directories). UNIX
// socket files are left out: see Pack.
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

// Pack writes the tree under root into tw with names prefixed by prefix
// (e.g. "upper/"). It returns the bytes of file content written.
//
// UNIX socket files are left out (tar has no type for them, and a socket
// file holds no data): CRIU's restore binds each socket the container
// had bound, which makes the file anew with the mode and owner it had at
// the dump; it would refuse a non-socket file in the way. A socket file
// no process had bound (a stale one) is not moved.
func Pack(tw *tar.Writer, root, prefix string) (int64, error) {
	var total int64
	links := map[uint64]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		if rel == "." {
			rel = ""
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSocket != 0 {
			return nil
		}
		var link string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		hdr.Name = prefix + rel
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
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
		if !strings.HasPrefix(name, "trusted.") && !strings.HasPrefix(name, "user.") {
			continue
		}
		v := make([]byte, 4096)
		n, err := unix.Lgetxattr(path, name, v)
		if err == nil {
			out["SCHILY.xattr."+name] = string(v[:n])
		}
	}
	return out
}

// Unpack extracts tr under dest. Entries must start with one of the
// prefixes, which map to directories: map[prefix]dir. Names that would
// escape their directory are refused. It returns the bytes of content.
func Unpack(tr *tar.Reader, dirs map[string]string) (int64, error) {
	var total int64
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		target, root, err := resolve(dirs, hdr.Name)
		if err != nil {
			return total, err
		}
		if err := noSymlinkParents(root, target); err != nil {
			return total, fmt.Errorf("extract %s: %w", hdr.Name, err)
		}
		n, err := extract(tr, hdr, target, dirs)
		total += n
		if err != nil {
			return total, fmt.Errorf("extract %s: %w", hdr.Name, err)
		}
	}
}

// resolve maps a name in the stream to its path and the directory it
// belongs under.
func resolve(dirs map[string]string, name string) (target, root string, err error) {
	for prefix, dir := range dirs {
		if !strings.HasPrefix(name, prefix) && name != strings.TrimSuffix(prefix, "/") {
			continue
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(name, prefix), "/")
		// Cleaning against "/" keeps every name inside dir.
		return filepath.Join(dir, filepath.Clean("/"+rel)), dir, nil
	}
	return "", "", fmt.Errorf("unexpected entry %q in stream", name)
}

// noSymlinkParents refuses a target below root whose existing parent
// directories include a symlink (one the stream itself may have planted):
// following it would write outside root.
func noSymlinkParents(root, target string) error {
	rel, err := filepath.Rel(root, target)
	if err != nil {
		return err
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

func extract(tr *tar.Reader, hdr *tar.Header, target string, dirs map[string]string) (int64, error) {
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
		n, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return n, err
		}
	case tar.TypeSymlink:
		_ = os.Remove(target)
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return 0, err
		}
	case tar.TypeLink:
		src, root, err := resolve(dirs, hdr.Linkname)
		if err != nil {
			return 0, err
		}
		if err := noSymlinkParents(root, src); err != nil {
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
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if err := unix.Lsetxattr(target, name, []byte(v), 0); err != nil {
				return n, fmt.Errorf("set xattr %s: %w", name, err)
			}
		}
	}
	if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil && os.Geteuid() == 0 {
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
