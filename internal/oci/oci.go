// Package oci reads OCI and Docker images, from a registry (Pull) or from
// a `docker save`/`podman save` archive (Load), with go-containerregistry,
// and prepares their layers for the agents' layer store (layer.go:
// ScanLayer checks a layer against its diffID in the CLI, Normalize and
// ApplyWhiteouts make it an overlayfs lower layer on a host). Flatten
// makes the single root filesystem stream of images recorded before
// layers, still copied for them.
//
// Every layer is read through go-containerregistry, which checks each
// blob against its digest as it reads it: a layer that does not match is
// an error (Verify reads them all first). The CLI checks every layer
// before it sends any host anything, so a bad image changes nothing
// anywhere.
//
// Layers are adapted to what the agents accept (internal/transfer):
// setuid and setgid bits are cleared (containers run with no_new_privs, so
// they do nothing there), device nodes are left out (a container gets its
// own /dev) and extended attributes are dropped. Changes counts each
// kind of change.
package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Config is what `coat run` takes from an image's configuration.
type Config struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
}

// ConfigOf returns img's run configuration.
func ConfigOf(img v1.Image) (Config, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return Config{}, fmt.Errorf("read the image's configuration: %w", err)
	}
	c := cf.Config
	return Config{Entrypoint: c.Entrypoint, Cmd: c.Cmd, Env: c.Env, WorkingDir: c.WorkingDir, User: c.User}, nil
}

// PullTimeout bounds a registry request that makes no progress (each
// request, not the whole pull: a large layer may take longer).
const PullTimeout = 30 * time.Second

// Pull resolves ref (any OCI registry; credentials from the Docker and
// Podman auth files, as `docker login` and `podman login` write them) to
// a linux/amd64 (or the host's) image. insecure allows plain HTTP.
func Pull(ctx context.Context, ref string, insecure bool, platform v1.Platform) (v1.Image, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("invalid image reference %q: %w", ref, err)
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		TLSHandshakeTimeout:   PullTimeout,
		ResponseHeaderTimeout: PullTimeout,
		IdleConnTimeout:       PullTimeout,
	}
	tr.DialContext = (&net.Dialer{Timeout: PullTimeout}).DialContext
	img, err := remote.Image(r,
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithTransport(tr),
		remote.WithPlatform(platform))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w (check the name, that the registry is reachable, `docker login`/`podman login` for a private one, and --insecure for a plain-HTTP registry)", ref, err)
	}
	return img, nil
}

// Load reads an image archive: a docker-archive (`docker save`, `podman
// save`) or an oci-archive (`podman save --format oci-archive`). name is
// the image's name in the archive, if it has one. cleanup removes what
// Load unpacked; call it once the image has been read.
func Load(file string) (img v1.Image, ref string, cleanup func(), err error) {
	cleanup = func() {}
	f, err := os.Open(file)
	if err != nil {
		return nil, "", cleanup, err
	}
	defer f.Close()
	isOCI := false
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, "", cleanup, fmt.Errorf("%s is not an image archive (docker-archive or oci-archive): %w", file, err)
		}
		if strings.TrimPrefix(hdr.Name, "./") == "oci-layout" {
			isOCI = true
			break
		}
	}
	if !isOCI {
		m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(file) })
		if err != nil {
			return nil, "", cleanup, fmt.Errorf("%s is not an image archive (docker-archive or oci-archive): %w", file, err)
		}
		if len(m) != 1 {
			return nil, "", cleanup, fmt.Errorf("%s holds %d images: save one image per archive", file, len(m))
		}
		if len(m[0].RepoTags) > 0 {
			ref = m[0].RepoTags[0]
		}
		img, err := tarball.ImageFromPath(file, nil)
		if err != nil {
			return nil, "", cleanup, fmt.Errorf("read %s: %w", file, err)
		}
		return img, ref, cleanup, nil
	}
	dir, err := os.MkdirTemp("", "coat-oci-")
	if err != nil {
		return nil, "", cleanup, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	if err := untar(file, dir); err != nil {
		cleanup()
		return nil, "", func() {}, fmt.Errorf("unpack %s: %w", file, err)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		cleanup()
		return nil, "", func() {}, fmt.Errorf("read %s as an oci-archive: %w", file, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		cleanup()
		return nil, "", func() {}, fmt.Errorf("read %s: %w", file, err)
	}
	if len(im.Manifests) != 1 {
		cleanup()
		return nil, "", func() {}, fmt.Errorf("%s holds %d manifests: save one image per archive", file, len(im.Manifests))
	}
	d := im.Manifests[0]
	ref = d.Annotations["io.containerd.image.name"]
	if ref == "" {
		ref = d.Annotations["org.opencontainers.image.ref.name"]
	}
	img, err = idx.Image(d.Digest)
	if err != nil {
		cleanup()
		return nil, "", func() {}, fmt.Errorf("read %s: the archive's image must be a single-platform image: %w", file, err)
	}
	return img, ref, cleanup, nil
}

// untar unpacks an oci-archive's regular files and directories into dir.
func untar(file, dir string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, filepath.Clean("/"+hdr.Name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				return err
			}
			out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: an oci-archive holds only files and directories", hdr.Name)
		}
	}
}

// Changes counts what Flatten changed to make the image acceptable.
type Changes struct {
	SetID   int // setuid/setgid bits cleared
	Devices int // device nodes left out
	Xattrs  int // entries whose extended attributes were dropped
}

func (c Changes) String() string {
	var s []string
	if c.SetID > 0 {
		s = append(s, fmt.Sprintf("setuid/setgid bits cleared on %d files (containers run with no_new_privs)", c.SetID))
	}
	if c.Devices > 0 {
		s = append(s, fmt.Sprintf("%d device nodes left out (a container gets its own /dev)", c.Devices))
	}
	if c.Xattrs > 0 {
		s = append(s, fmt.Sprintf("extended attributes dropped on %d files", c.Xattrs))
	}
	return strings.Join(s, "; ")
}

// Flat is what Flatten reports.
type Flat struct {
	Changes
	Size int64 // bytes of file content
	// Users and Groups are the image's /etc/passwd (name -> "uid:gid")
	// and /etc/group (name -> "gid").
	Users, Groups map[string]string
}

// maxIDFile bounds the /etc/passwd or /etc/group read for user names.
const maxIDFile = 1 << 20

// Flatten writes img's filesystem (its layers applied in order, with
// whiteouts) to w as the agents' import stream: every entry under
// "rootfs/". It fails, having written a stream that must not be used, if
// a layer cannot be read (call Verify first: see the package comment).
func Flatten(img v1.Image, w io.Writer) (Flat, error) {
	var fl Flat
	ch := &fl.Changes
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Name: "rootfs/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
		return fl, err
	}
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fl, fmt.Errorf("read the image's layers: %w", err)
		}
		out, name := adapt(hdr, "rootfs/", ch)
		if out == nil {
			continue
		}
		if err := tw.WriteHeader(out); err != nil {
			return fl, err
		}
		if out.Size > 0 {
			var src io.Reader = tr
			var idFile bytes.Buffer
			if (name == "etc/passwd" || name == "etc/group") && out.Size <= maxIDFile {
				src = io.TeeReader(tr, &idFile)
			}
			n, err := io.Copy(tw, src)
			fl.Size += n
			if err != nil {
				return fl, fmt.Errorf("read the image's layers: %w", err)
			}
			switch {
			case idFile.Len() == 0:
			case name == "etc/passwd":
				fl.Users = ParsePasswd(idFile.Bytes())
			default:
				fl.Groups = ParseGroup(idFile.Bytes())
			}
		}
	}
	return fl, tw.Close()
}

// adapt is the header hdr of a layer's entry as the agents accept it,
// under prefix, and the entry's cleaned name (nil: the entry is left
// out: the layer's root, a device node, an unknown type). It clears
// setuid and setgid bits and drops extended attributes, counting each
// change in ch.
func adapt(hdr *tar.Header, prefix string, ch *Changes) (*tar.Header, string) {
	name := strings.TrimPrefix(filepath.Clean("/"+hdr.Name), "/")
	if name == "" {
		return nil, ""
	}
	switch hdr.Typeflag {
	case tar.TypeChar, tar.TypeBlock:
		ch.Devices++
		return nil, name
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink, tar.TypeFifo:
	default:
		return nil, name
	}
	out := &tar.Header{
		Name: prefix + name, Typeflag: hdr.Typeflag, Mode: hdr.Mode & 0o7777,
		Uid: hdr.Uid, Gid: hdr.Gid, Size: hdr.Size, ModTime: hdr.ModTime,
		Linkname: hdr.Linkname, Format: tar.FormatPAX,
	}
	if hdr.Typeflag == tar.TypeLink {
		out.Linkname = prefix + strings.TrimPrefix(filepath.Clean("/"+hdr.Linkname), "/")
	}
	if hdr.Typeflag == tar.TypeDir {
		out.Name += "/"
	}
	if hdr.Typeflag != tar.TypeSymlink && out.Mode&0o6000 != 0 {
		if out.Mode&0o4000 != 0 || hdr.Typeflag != tar.TypeDir {
			ch.SetID++
		}
		out.Mode &^= 0o4000
		if hdr.Typeflag != tar.TypeDir {
			out.Mode &^= 0o2000
		}
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			ch.Xattrs++
			break
		}
	}
	if hdr.Typeflag != tar.TypeReg {
		out.Size = 0
	}
	return out, name
}

// Verify reads every layer of img and checks it against the digest its
// manifest gives; a layer that does not match is an error that names it.
// (Flatten alone would not notice a layer whose tar stream ends before
// the corrupted bytes.)
func Verify(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("read the image's layers: %w", err)
	}
	for i, l := range layers {
		want, err := l.Digest()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i+1, err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %d (%s): %w", i+1, want, err)
		}
		h := sha256.New()
		_, err = io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %d (%s): %w", i+1, want, err)
		}
		got := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
		if want.Algorithm != "sha256" {
			return fmt.Errorf("layer %d: digest algorithm %s is not supported (only sha256)", i+1, want.Algorithm)
		}
		if got != want {
			return fmt.Errorf("layer %d does not match its digest: the manifest says %s, its content is %s: the image is corrupt, nothing was imported", i+1, want, got)
		}
	}
	return nil
}

// Cache copies img (downloading each blob once) into an OCI layout in
// dir and returns the local copy.
func Cache(img v1.Image, dir string) (v1.Image, error) {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return nil, err
	}
	if err := p.AppendImage(img); err != nil {
		return nil, fmt.Errorf("download the image: %w", err)
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	return p.Image(d)
}
