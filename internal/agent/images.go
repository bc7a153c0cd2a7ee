package agent

// Images on a host, and how a migration brings one to a destination that
// lacks it.
//
// An image is layered (layers.go: images/KEY/layers.json, its layers in
// layers/) or, made by an older agent, flattened. This file keeps the
// image-level operations (locks, removal, the image-ready step, which
// hands a layered image to ensureLayered) and the flattened format, still
// served and copied for images recorded before layers:
//
//	rootfs/          the root filesystem, a container's overlay lower layer
//	rootfs.tar.zst   the tar stream it was made from, byte for byte, zstd'd
//	digest           "sha256:HEX" of that tar stream
//
// For a flattened image the tar stream is the unit: its digest is in the
// image's etcd record (RootfsDigest). A destination that lacks it fetches
// the source's rootfs.tar.zst over the agents' mutual TLS, in the
// image-ready phase, before anything is frozen; it unpacks it into a
// temporary directory while hashing it, and renames it into place only if
// the digest is the recorded one. A partial or mismatching copy is removed
// with its directory, and the migration is refused before the freeze.
// Every change to one image on a host (import, copy, removal) holds that
// image's lock (imageLock).

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/runtime"
	"github.com/coat-project/coat/internal/store"
	"github.com/coat-project/coat/internal/transfer"
)

const (
	imageTarFile    = "rootfs.tar.zst"
	imageDigestFile = "digest"
	// imageCopyTimeout bounds a destination's copy of an image (the
	// migration's own budget usually ends it sooner).
	imageCopyTimeout = 10 * time.Minute
)

// errBadCopy is a copy of an image that is not what its record says.
var errBadCopy = errors.New("bad copy")

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func (a *Agent) imagesDir() string { return filepath.Join(a.cfg.StateDir, "images") }

// imageLock serialises the changes to one image on this host; it waits
// for the one under way until ctx ends.
func (a *Agent) imageLock(ctx context.Context, key string) (func(), error) {
	for {
		a.mu.Lock()
		if a.imageBusy == nil {
			a.imageBusy = map[string]chan struct{}{}
		}
		ch, busy := a.imageBusy[key]
		if !busy {
			done := make(chan struct{})
			a.imageBusy[key] = done
			a.mu.Unlock()
			return func() {
				a.mu.Lock()
				delete(a.imageBusy, key)
				a.mu.Unlock()
				close(done)
			}, nil
		}
		a.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("image %s: another import, copy or removal is under way: %w", key, errBusy)
		}
	}
}

// imageTemp makes the directory an image is received into; the agent
// removes those a crash left (emptyTrash).
func (a *Agent) imageTemp(key string) (string, error) {
	tmp, err := os.MkdirTemp(a.imagesDir(), ".tmp-"+key+"-")
	if err != nil {
		return "", err
	}
	return tmp, os.Chmod(tmp, 0o755)
}

// handleImport receives an image's rootfs as a tar stream (names under
// rootfs/), keeps the stream (compressed) for hosts that will lack the
// image, and swaps the image in atomically. With ?digest=sha256:HEX the
// stream must have that digest, or nothing changes. It answers with the
// digest it received.
func (a *Agent) handleImport(w http.ResponseWriter, r *http.Request) {
	im, err := names.ParseImage(r.PathValue("name"))
	if err != nil {
		httpError(w, badRequest("%v", err))
		return
	}
	want := r.URL.Query().Get("digest")
	if want != "" && !digestRE.MatchString(want) {
		httpError(w, badRequest("digest %q: want sha256: and 64 lowercase hex digits", want))
		return
	}
	name, key := im.String(), im.Key()
	unlock, err := a.imageLock(r.Context(), key)
	if err != nil {
		httpError(w, err)
		return
	}
	defer unlock()
	tmp, err := a.imageTemp(key)
	if err != nil {
		httpError(w, err)
		return
	}
	defer os.RemoveAll(tmp)
	got, n, err := receiveImport(r.Body, tmp)
	if err != nil {
		httpError(w, badRequest("unpack image %s: %v", name, err))
		return
	}
	if want != "" && got != want {
		httpError(w, badRequest("image %s: the stream received has digest %s, the sender's has %s: nothing imported", name, got, want))
		return
	}
	if err := a.installImage(tmp, key); err != nil {
		httpError(w, err)
		return
	}
	a.log.Info("image imported", "image", name, "digest", got, "bytes", n)
	writeJSON(w, http.StatusOK, api.ImportReply{Digest: got, Bytes: n})
}

// receiveImport unpacks the tar stream body into tmp/rootfs, keeping it
// compressed in tmp/rootfs.tar.zst and its digest in tmp/digest.
func receiveImport(body io.Reader, tmp string) (digest string, n int64, err error) {
	f, err := os.OpenFile(filepath.Join(tmp, imageTarFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", 0, err
	}
	zw, err := zstd.NewWriter(f, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		f.Close()
		return "", 0, err
	}
	digest, n, err = unpackImage(io.TeeReader(body, zw), tmp)
	err = errors.Join(err, zw.Close(), f.Sync(), f.Close())
	if err != nil {
		return "", n, err
	}
	return digest, n, os.WriteFile(filepath.Join(tmp, imageDigestFile), []byte(digest+"\n"), 0o644)
}

// receiveCopy unpacks a compressed copy of an image (rootfs.tar.zst as
// another host keeps it) into tmp, keeping it as it came, and checks it
// against want. It returns the bytes received.
func receiveCopy(body io.Reader, tmp, want string) (int64, error) {
	f, err := os.OpenFile(filepath.Join(tmp, imageTarFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	var n atomic.Int64
	zr, err := zstd.NewReader(io.TeeReader(&countingReader{r: body, n: &n}, f), zstd.WithDecoderConcurrency(1))
	if err != nil {
		f.Close()
		return 0, err
	}
	got, _, err := unpackImage(zr, tmp)
	zr.Close()
	err = errors.Join(err, f.Sync(), f.Close())
	if err != nil {
		return n.Load(), err
	}
	if got != want {
		return n.Load(), fmt.Errorf("%w: its digest is %s, the image's record says %s", errBadCopy, got, want)
	}
	return n.Load(), os.WriteFile(filepath.Join(tmp, imageDigestFile), []byte(got+"\n"), 0o644)
}

// unpackImage extracts a rootfs tar stream into tmp/rootfs and returns
// the digest and length of the whole stream (tar's end blocks included).
func unpackImage(tarStream io.Reader, tmp string) (string, int64, error) {
	h := sha256.New()
	var n atomic.Int64
	cr := &countingReader{r: io.TeeReader(tarStream, h), n: &n}
	if _, err := transfer.Unpack(tar.NewReader(cr), map[string]transfer.Dest{"rootfs/": {Dir: filepath.Join(tmp, "rootfs")}}); err != nil {
		return "", n.Load(), err
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return "", n.Load(), err
	}
	if _, err := os.Lstat(filepath.Join(tmp, "rootfs")); err != nil {
		return "", n.Load(), fmt.Errorf("the stream holds no rootfs/ directory")
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n.Load(), nil
}

// installImage renames the image received in tmp into place, replacing
// the one there. A running container's overlay still reads the old lower
// layer (the mount holds it, renamed): it is kept until nothing mounts it.
// The caller holds the image's lock.
func (a *Agent) installImage(tmp, key string) error {
	final := filepath.Join(a.imagesDir(), key)
	inUse := lowerInUse(filepath.Join(final, "rootfs"))
	old := filepath.Join(a.imagesDir(), fmt.Sprintf(".retired-%s-%d", key, now().UnixNano()))
	if err := os.Rename(final, old); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	if !inUse {
		_ = os.RemoveAll(old)
	}
	return nil
}

// handleImageRemove deletes an image from this host, unless a container
// here uses it or one migrating here will (a container elsewhere does not
// stop it: a migration here copies the image back). `coat image rm`
// without --host checks every host's containers first. Removing an image
// the host does not have succeeds.
func (a *Agent) handleImageRemove(w http.ResponseWriter, r *http.Request) {
	im, err := names.ParseImage(r.PathValue("name"))
	if err != nil {
		httpError(w, badRequest("%v", err))
		return
	}
	name, key := im.String(), im.Key()
	// Under the image's lock, so that a migration that found the image
	// here (its record already says it comes here) keeps it.
	unlock, err := a.imageLock(r.Context(), key)
	if err != nil {
		httpError(w, err)
		return
	}
	defer unlock()
	cs, err := a.st.Containers(r.Context())
	if err != nil {
		httpError(w, err)
		return
	}
	for _, c := range cs {
		if c.Image != name {
			continue
		}
		if c.Host == a.cfg.Name {
			httpError(w, fmt.Errorf("image %s is used by container %s on %s: remove the container first (`coat rm %s`): %w", name, c.Name, c.Host, c.Name, errBusy))
			return
		}
		if c.MigratingTo == a.cfg.Name {
			httpError(w, fmt.Errorf("image %s is used by container %s, migrating to %s: try again when it is done: %w", name, c.Name, a.cfg.Name, errBusy))
			return
		}
	}
	old := filepath.Join(a.imagesDir(), fmt.Sprintf(".retired-%s-%d", key, now().UnixNano()))
	if err := os.Rename(filepath.Join(a.imagesDir(), key), old); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		httpError(w, err)
		return
	}
	if !lowerInUse(filepath.Join(old, "rootfs")) {
		_ = os.RemoveAll(old)
	}
	a.gcLayers(r.Context())
	a.log.Info("image removed", "image", name)
	w.WriteHeader(http.StatusNoContent)
}

// lowerInUse reports whether an overlay mount uses dir as its lower layer.
func lowerInUse(dir string) bool {
	b, err := runtime.MountInfo()
	return err == nil && strings.Contains(string(b), "lowerdir="+dir)
}

// localImage opens the routes that send the image of a container
// migrating from here: the container's record, which must say it runs on
// this host, and its image reference.
func (a *Agent) localImage(ctx context.Context, name string) (store.Container, names.Image, error) {
	c, err := a.st.Container(ctx, name)
	if err != nil {
		return c, names.Image{}, err
	}
	if c.Host != a.cfg.Name {
		return c, names.Image{}, badRequest("container %s runs on %s, not on %s", name, c.Host, a.cfg.Name)
	}
	im, err := names.ParseImage(c.Image)
	if err != nil {
		return c, names.Image{}, badRequest("%v", err)
	}
	return c, im, nil
}

// handleImageSend is the source's side of an image copy: it sends the
// image of a container migrating from here to the caller (authz.Image
// checks the migration record) as it keeps it, compressed.
func (a *Agent) handleImageSend(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	_, im, err := a.localImage(r.Context(), name)
	if err != nil {
		httpError(w, err)
		return
	}
	f, err := os.Open(filepath.Join(a.imagesDir(), im.Key(), imageTarFile))
	if errors.Is(err, fs.ErrNotExist) {
		httpError(w, fmt.Errorf("image %s on %s has no copy to send (it was imported by an older agent): import it again (`coat image pull`, `load` or `import`): %w",
			im.String(), a.cfg.Name, store.ErrNotFound))
		return
	}
	if err != nil {
		httpError(w, err)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		httpError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/zstd")
	w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, f); err != nil {
		a.log.Warn("send image", "image", im.String(), "container", name, "err", err)
	}
}

// handleIncomingImage is the destination's image-ready step: it makes
// sure this host holds the image of a container the store says migrates
// here, copying it from the source if it lacks it.
func (a *Agent) handleIncomingImage(w http.ResponseWriter, r *http.Request) {
	defer a.enter(r.PathValue("name"))()
	c, err := a.preparable(r.Context(), r.PathValue("name"))
	if err != nil {
		httpError(w, err)
		return
	}
	rep, err := a.ensureImage(r.Context(), c)
	if err != nil {
		httpError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// ensureImage gets c's image unless this host has it: from the registry
// it was pulled from, if that answers at once, else from c's host.
func (a *Agent) ensureImage(ctx context.Context, c store.Container) (api.ImageReply, error) {
	im, err := names.ParseImage(c.Image)
	if err != nil {
		return api.ImageReply{}, badRequest("%v", err)
	}
	unlock, err := a.imageLock(ctx, im.Key())
	if err != nil {
		return api.ImageReply{}, err
	}
	defer unlock()
	if a.rt.HasImage(c.Image) {
		return api.ImageReply{}, nil
	}
	rec, err := a.st.Image(ctx, c.Image)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return api.ImageReply{}, err
	}
	if len(rec.Layers) > 0 {
		return a.ensureLayered(ctx, c, im, rec)
	}
	if rec.RootfsDigest == "" {
		return api.ImageReply{}, badRequest("image %s is not on host %s, and its record has no digest to check a copy against (it was imported before COAT recorded one): import it again (`coat image pull`, `load` or `import`)", c.Image, a.cfg.Name)
	}
	t0 := time.Now()
	var regErr string
	if ref := registryRef(rec); ref != "" {
		n, err := a.pullImage(ctx, ref, rec, im.Key())
		if err == nil {
			d := time.Since(t0)
			a.log.Info("image copied", "image", c.Image, "from", ref, "container", c.Name, "bytes", n, "duration_ms", api.Ms(d))
			return api.ImageReply{Copied: true, From: ref, Bytes: n, MS: api.Ms(d)}, nil
		}
		regErr = fmt.Sprintf("registry %s: %v", ref, err)
		a.log.Info("image not pulled: copying it from the source", "image", c.Image, "container", c.Name, "err", err)
	}
	src, err := a.st.Host(ctx, c.Host)
	if err != nil {
		return api.ImageReply{}, fmt.Errorf("source host %s: %w", c.Host, err)
	}
	n, err := a.copyImage(ctx, a.peerClient(src), c.Name, im.Key(), rec.RootfsDigest)
	if err != nil {
		if regErr != "" {
			err = fmt.Errorf("%w; %s", err, regErr)
		}
		return api.ImageReply{}, fmt.Errorf("copy image %s from %s: %w (nothing was kept)", c.Image, src.Name, err)
	}
	d := time.Since(t0)
	a.log.Info("image copied", "image", c.Image, "from", src.Name, "container", c.Name, "bytes", n, "duration_ms", api.Ms(d))
	return api.ImageReply{Copied: true, From: src.Name, Bytes: n, MS: api.Ms(d), RegistryError: regErr}, nil
}

// copyImage fetches from peer the image of the container name migrating
// here, checks it against digest and installs it as key. The caller
// holds the image's lock.
func (a *Agent) copyImage(ctx context.Context, peer *api.Client, name, key, digest string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, imageCopyTimeout)
	defer cancel()
	rc, err := peer.Stream(ctx, http.MethodGet, "/v1/outgoing/"+url.PathEscape(name)+"/image", nil, "")
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	tmp, err := a.imageTemp(key)
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	n, err := receiveCopy(rc, tmp, digest)
	if err != nil {
		return n, err
	}
	return n, a.installImage(tmp, key)
}
