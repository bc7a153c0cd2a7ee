//go:build linux

package oci

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/coat-project/coat/internal/transfer"
)

// ApplyWhiteouts makes sc's whiteouts as overlayfs reads them in a lower
// layer, in root (the layer's directory as Unpack made it): each deleted
// path becomes a 0:0 character device (replacing whatever the layer put
// there), each opaque directory gets trusted.overlay.opaque=y (made if
// the layer lacks it). Nothing is made through a symlink.
func ApplyWhiteouts(root string, sc LayerScan) error {
	for _, d := range sc.Opaque {
		p := filepath.Join(root, filepath.Clean("/"+d))
		if err := transfer.NoSymlinkParents(root, p); err != nil {
			return fmt.Errorf("opaque directory %s: %w", d, err)
		}
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case !fi.IsDir():
			return fmt.Errorf("opaque directory %s: the layer holds a non-directory there", d)
		}
		if err := unix.Lsetxattr(p, "trusted.overlay.opaque", []byte("y"), 0); err != nil {
			return fmt.Errorf("opaque directory %s: %w", d, err)
		}
	}
	for _, w := range sc.Whiteouts {
		p := filepath.Join(root, filepath.Clean("/"+w))
		if p == root {
			continue
		}
		if err := transfer.NoSymlinkParents(root, p); err != nil {
			return fmt.Errorf("whiteout %s: %w", w, err)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.RemoveAll(p); err != nil {
			return err
		}
		if err := unix.Mknod(p, unix.S_IFCHR, int(unix.Mkdev(0, 0))); err != nil {
			return fmt.Errorf("whiteout %s: %w", w, err)
		}
	}
	return nil
}
