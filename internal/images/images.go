// Package images builds the lab's container root filesystems: plain
// directories used as the read-only lower layer of a runc container's
// overlayfs. Builds are idempotent: a marker file records a hash of the
// image's content and an up-to-date image is left untouched; otherwise the
// image is built in DIR.tmp and renamed into place. Concurrent builds of
// the same directory must be serialized by the caller.
package images

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Version is the image layout version; bumping it rebuilds every image.
const Version = "coat-image-v1"

// MarkerFile is the file, at the root of an image, that records its version
// and content hash.
const MarkerFile = ".coat-image"

// file is one host file to copy into an image.
type file struct {
	dest string      // absolute path inside the image
	src  string      // host path (symlinks are followed)
	mode fs.FileMode // permission bits in the image
}

// skeleton directories and their modes.
var skeletonDirs = []struct {
	path string
	mode fs.FileMode
}{
	{"bin", 0o755},
	{"data", 0o755},
	{"dev", 0o755},
	{"etc", 0o755},
	{"proc", 0o555},
	{"root", 0o700},
	{"sys", 0o555},
	{"tmp", 0o777 | fs.ModeSticky},
	{"usr", 0o755},
	{"usr/bin", 0o755},
}

// skeletonFiles are written into every image (mode 0644).
var skeletonFiles = []struct{ path, content string }{
	{"etc/passwd", "root:x:0:0:root:/root:/bin/false\n"},
	{"etc/group", "root:x:0:\n"},
	{"etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
	{"etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"},
}

// BuildStatic builds in dir a minimal image holding the static binary
// binPath as /bin/destName (mode 0755).
func BuildStatic(dir, binPath, destName string) error {
	if destName == "" || strings.ContainsRune(destName, '/') || destName == "." || destName == ".." {
		return fmt.Errorf("build static image: invalid binary name %q", destName)
	}
	files := []file{{dest: "/bin/" + destName, src: binPath, mode: 0o755}}
	if err := build(dir, "static", files); err != nil {
		return fmt.Errorf("build static image %s: %w", dir, err)
	}
	return nil
}

// BuildFromHost builds in dir an image holding each host binary (looked up
// with exec.LookPath) as /usr/bin/NAME, together with every shared library
// and the dynamic loader it needs, at the paths ldd reports.
func BuildFromHost(dir string, binaries []string) error {
	if len(binaries) == 0 {
		return fmt.Errorf("build host image %s: no binaries", dir)
	}
	files, err := hostFiles(binaries)
	if err != nil {
		return fmt.Errorf("build host image %s: %w", dir, err)
	}
	if err := build(dir, "host", files); err != nil {
		return fmt.Errorf("build host image %s: %w", dir, err)
	}
	return nil
}

// build makes the image unless its marker already matches.
func build(dir, kind string, files []file) error {
	dir = filepath.Clean(dir)
	files, err := dedupe(files)
	if err != nil {
		return err
	}
	marker, err := markerFor(kind, files)
	if err != nil {
		return err
	}
	if cur, err := os.ReadFile(filepath.Join(dir, MarkerFile)); err == nil && bytes.Equal(cur, marker) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("create parent: %w", err)
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	if err := populate(tmp, files, marker); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	return replace(tmp, dir)
}

// populate writes the skeleton, the files and finally the marker into root.
func populate(root string, files []file, marker []byte) error {
	if err := mkdir(root, 0o755); err != nil {
		return err
	}
	for _, d := range skeletonDirs {
		if err := mkdir(filepath.Join(root, d.path), d.mode); err != nil {
			return err
		}
	}
	for _, f := range skeletonFiles {
		if err := writeFile(filepath.Join(root, f.path), []byte(f.content), 0o644); err != nil {
			return err
		}
	}
	for _, f := range files {
		if err := copyFile(root, f); err != nil {
			return err
		}
	}
	return writeFile(filepath.Join(root, MarkerFile), marker, 0o644)
}

// replace moves the freshly built tmp over dir.
func replace(tmp, dir string) error {
	old := dir + ".old"
	if err := os.RemoveAll(old); err != nil {
		return fmt.Errorf("remove stale %s: %w", old, err)
	}
	hadOld := false
	if _, err := os.Lstat(dir); err == nil {
		if err := os.Rename(dir, old); err != nil {
			return fmt.Errorf("move old image aside: %w", err)
		}
		hadOld = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("stat image: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if hadOld {
			os.Rename(old, dir)
		}
		return fmt.Errorf("move new image into place: %w", err)
	}
	if hadOld {
		if err := os.RemoveAll(old); err != nil {
			return fmt.Errorf("remove old image: %w", err)
		}
	}
	return nil
}

// dedupe sorts files by destination and drops exact duplicates; two
// different sources for one destination are an error.
func dedupe(files []file) ([]file, error) {
	byDest := make(map[string]file, len(files))
	for _, f := range files {
		f.dest = filepath.Clean("/" + f.dest)
		if prev, ok := byDest[f.dest]; ok {
			if prev.src != f.src {
				return nil, fmt.Errorf("conflicting sources %s and %s for %s", prev.src, f.src, f.dest)
			}
			continue
		}
		byDest[f.dest] = f
	}
	out := make([]file, 0, len(byDest))
	for _, f := range byDest {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].dest < out[j].dest })
	return out, nil
}

// markerFor hashes the layout version, the skeleton and every file's
// destination, mode and content.
func markerFor(kind string, files []file) ([]byte, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", Version, kind)
	for _, d := range skeletonDirs {
		fmt.Fprintf(h, "dir %s %v\n", d.path, d.mode)
	}
	for _, f := range skeletonFiles {
		fmt.Fprintf(h, "file %s %q\n", f.path, f.content)
	}
	for _, f := range files {
		sum, err := fileSum(f.src)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(h, "copy %s %v %s\n", f.dest, f.mode, sum)
	}
	return []byte(fmt.Sprintf("version=%s\nkind=%s\nhash=%s\n", Version, kind, hex.EncodeToString(h.Sum(nil)))), nil
}

func fileSum(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// mkdir creates path (which must not exist) with exactly mode, ignoring
// the umask.
func mkdir(path string, mode fs.FileMode) error {
	if err := os.Mkdir(path, 0o700); err != nil {
		return fmt.Errorf("create dir: %w", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("chmod dir: %w", err)
	}
	return nil
}

// writeFile creates path with content and exactly mode.
func writeFile(path string, content []byte, mode fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create file: %w", err)
	}
	_, err = f.Write(content)
	err = errors.Join(err, f.Chmod(mode), f.Close())
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// copyFile copies the real content of f.src (symlinks followed) to
// root+f.dest, creating parent directories with mode 0755.
func copyFile(root string, f file) error {
	dest := filepath.Join(root, f.dest)
	if err := mkdirParents(root, filepath.Dir(f.dest)); err != nil {
		return err
	}
	in, err := os.Open(f.src)
	if err != nil {
		return fmt.Errorf("open %s: %w", f.src, err)
	}
	defer in.Close()
	if st, err := in.Stat(); err != nil {
		return fmt.Errorf("stat %s: %w", f.src, err)
	} else if !st.Mode().IsRegular() {
		return fmt.Errorf("copy %s: not a regular file", f.src)
	}
	out, err := os.OpenFile(dest, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", f.dest, err)
	}
	_, err = io.Copy(out, in)
	err = errors.Join(err, out.Chmod(f.mode), out.Close())
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", f.src, f.dest, err)
	}
	return nil
}

// mkdirParents creates the image directory rel (absolute inside root) and
// its missing parents, each with mode 0755.
func mkdirParents(root, rel string) error {
	p := root
	for _, part := range strings.Split(strings.Trim(filepath.Clean(rel), "/"), "/") {
		if part == "" {
			continue
		}
		p = filepath.Join(p, part)
		st, err := os.Lstat(p)
		if err == nil {
			if !st.IsDir() {
				return fmt.Errorf("create dir %s: not a directory", p)
			}
			continue
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("stat %s: %w", p, err)
		}
		if err := mkdir(p, 0o755); err != nil {
			return err
		}
	}
	return nil
}
