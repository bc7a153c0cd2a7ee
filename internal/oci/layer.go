package oci

// Layers, one at a time: how an agent turns an OCI layer's tar stream
// into a directory an overlay mount can stack (Normalize, then
// ApplyWhiteouts), and how the CLI checks a layer before sending it
// (ScanLayer).
//
// A layer is named by its diffID: the sha256 of its uncompressed tar
// stream, as the image's configuration lists it. The agents hash the
// stream as it arrives, so a layer is verified whoever sends it (the CLI,
// a registry, another agent).
//
// OCI whiteouts are files: ".wh.NAME" deletes NAME from the layers below,
// ".wh..wh..opq" in a directory hides everything the layers below hold
// in it. overlayfs spells them differently: a 0:0 character device named
// NAME, and the xattr trusted.overlay.opaque=y on the directory.
// Normalize leaves the whiteout files out of the stream it passes on and
// lists them; ApplyWhiteouts makes the overlayfs ones afterwards. The tar
// policy (internal/transfer) still refuses any device node or foreign
// xattr that the stream itself carries: Normalize drops device nodes and
// xattrs, and clears setuid/setgid bits, as Flatten does.

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// LayerScan is what Normalize found in a layer.
type LayerScan struct {
	Changes
	Size int64 // bytes of file content
	// Whiteouts are the paths (relative to the layer's root, cleaned)
	// the layer deletes from the layers below; Opaque the directories
	// whose content below it hides ("" is the root).
	Whiteouts, Opaque []string
	// Passwd and Group are the layer's etc/passwd and etc/group, if it
	// holds them (and they are at most 1 MiB).
	Passwd, Group []byte
}

// Normalize reads a layer's tar stream from r and writes, to w, the
// stream transfer.Unpack accepts: every entry under prefix, adapted
// (adapt), whiteout files left out and listed. w may be nil (only
// scan). It does not read r past the tar's end marker.
func Normalize(r io.Reader, w io.Writer, prefix string) (LayerScan, error) {
	var sc LayerScan
	tr := tar.NewReader(r)
	var tw *tar.Writer
	if w != nil {
		tw = tar.NewWriter(w)
		if err := tw.WriteHeader(&tar.Header{Name: prefix, Typeflag: tar.TypeDir, Mode: 0o755, Format: tar.FormatPAX}); err != nil {
			return sc, err
		}
	}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return sc, fmt.Errorf("read the layer: %w", err)
		}
		if whiteout(hdr.Name, &sc) {
			continue
		}
		out, name := adapt(hdr, prefix, &sc.Changes)
		if out == nil {
			continue
		}
		if tw != nil {
			if err := tw.WriteHeader(out); err != nil {
				return sc, err
			}
		}
		if out.Size == 0 {
			continue
		}
		var idFile bytes.Buffer
		var src io.Reader = tr
		if (name == "etc/passwd" || name == "etc/group") && out.Size <= maxIDFile {
			src = io.TeeReader(tr, &idFile)
		}
		dst := io.Discard
		if tw != nil {
			dst = tw
		}
		n, err := io.Copy(dst, src)
		sc.Size += n
		if err != nil {
			return sc, fmt.Errorf("read the layer: %w", err)
		}
		switch {
		case idFile.Len() == 0:
		case name == "etc/passwd":
			sc.Passwd = idFile.Bytes()
		default:
			sc.Group = idFile.Bytes()
		}
	}
	if tw != nil {
		return sc, tw.Close()
	}
	return sc, nil
}

// whiteout reports whether the entry name is an OCI whiteout, and lists
// it in sc. A whiteout that would name the directory itself or its
// parent (".wh..", ".wh...") is dropped.
func whiteout(name string, sc *LayerScan) bool {
	clean := strings.TrimPrefix(path.Clean("/"+name), "/")
	dir, base := path.Split(clean)
	dir = strings.TrimSuffix(dir, "/")
	switch {
	case base == whiteoutOpaque:
		sc.Opaque = append(sc.Opaque, dir)
		return true
	case strings.HasPrefix(base, whiteoutPrefix):
		target := strings.TrimPrefix(base, whiteoutPrefix)
		if target != "" && target != "." && target != ".." {
			sc.Whiteouts = append(sc.Whiteouts, path.Join(dir, target))
		}
		return true
	}
	return false
}

// LayerInfo is what the CLI knows of a layer it checked.
type LayerInfo struct {
	DiffID string // "sha256:HEX" of the uncompressed stream, checked
	Bytes  int64  // length of that stream
	LayerScan
}

// ScanLayer reads l's uncompressed stream and checks that it hashes to
// want, the diffID the image's configuration gives (not l.DiffID():
// go-containerregistry may compute that from the very content checked);
// a layer that does not is an error naming both digests.
func ScanLayer(l v1.Layer, want v1.Hash) (LayerInfo, error) {
	if want.Algorithm != "sha256" {
		return LayerInfo{}, fmt.Errorf("layer %s: digest algorithm %s is not supported (only sha256)", want, want.Algorithm)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return LayerInfo{}, fmt.Errorf("layer %s: %w", want, err)
	}
	defer rc.Close()
	h := sha256.New()
	cr := &counter{r: io.TeeReader(rc, h)}
	sc, err := Normalize(cr, nil, "")
	if err == nil {
		_, err = io.Copy(io.Discard, cr)
	}
	if err != nil {
		return LayerInfo{}, fmt.Errorf("layer %s: %w", want, err)
	}
	got := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if got != want.String() {
		return LayerInfo{}, fmt.Errorf("layer %s does not match its digest: its content is %s: the image is corrupt, nothing was imported", want, got)
	}
	return LayerInfo{DiffID: got, Bytes: cr.n, LayerScan: sc}, nil
}

type counter struct {
	r io.Reader
	n int64
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
