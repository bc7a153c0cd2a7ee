package agent

// The host's layer store (see internal/runtime/layers.go for the layout).
//
// Each layer arrives as its uncompressed OCI tar stream, whoever sends it
// (the CLI, the registry, a source agent), and is named by its diffID.
// receiveLayer hashes the stream as it unpacks it into a temporary
// directory (oci.Normalize: setuid cleared, devices and xattrs dropped,
// whiteouts listed; transfer.Unpack's policy on the rest; then
// oci.ApplyWhiteouts), keeps the stream zstd'd beside it for hosts that
// will lack the layer, and renames it into place only if the stream's
// digest is the layer's: a layer that does not match leaves nothing.
//
// An image is then its layer list (images/KEY/layers.json), written only
// once every layer is here. Removing an image removes the layers no other
// image here lists and no mount uses (gcLayers).

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/oci"
	"github.com/coat-project/coat/internal/runtime"
	"github.com/coat-project/coat/internal/store"
	"github.com/coat-project/coat/internal/transfer"
)

const (
	// layerTarFile is a layer's stream as received, zstd'd.
	layerTarFile = "layer.tar.zst"
	// layerPendingTTL is how long a layer received for an image not yet
	// made is safe from gcLayers (the CLI sends an image's layers, then
	// its list; a migration fetches them, then makes the image).
	layerPendingTTL = time.Hour
)

// setPending marks layers as received for an image not yet made (on), or
// as listed by one (off).
func (a *Agent) setPending(on bool, layers ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.layerPending == nil {
		a.layerPending = map[string]time.Time{}
	}
	for _, d := range layers {
		if on {
			a.layerPending[d] = now()
		} else {
			delete(a.layerPending, d)
		}
	}
}

func (a *Agent) pending(d string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.layerPending[d]
	return ok && now().Sub(t) < layerPendingTTL
}

// layerLock serialises the changes to one layer on this host.
func (a *Agent) layerLock(ctx context.Context, diffID string) (func(), error) {
	return a.imageLock(ctx, "layer/"+diffID) // no image key has a '/'
}

// receiveLayer unpacks the layer stream body into tmp/rootfs, keeping it
// in tmp/layer.tar.zst, and checks it against want. It returns the
// stream's length.
func receiveLayer(body io.Reader, tmp, want string) (int64, error) {
	f, err := os.OpenFile(filepath.Join(tmp, layerTarFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	zw, err := zstd.NewWriter(f, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		f.Close()
		return 0, err
	}
	h := sha256.New()
	var n atomic.Int64
	src := &countingReader{r: io.TeeReader(io.TeeReader(body, h), zw), n: &n}
	sc, err := unpackLayer(src, filepath.Join(tmp, "rootfs"))
	if err == nil {
		_, err = io.Copy(io.Discard, src) // the tar's end blocks, in the digest
	}
	err = errors.Join(err, zw.Close(), f.Sync(), f.Close())
	if err != nil {
		return n.Load(), err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != want {
		return n.Load(), fmt.Errorf("%w: the stream received has digest %s, not the layer's", errBadCopy, got)
	}
	return n.Load(), oci.ApplyWhiteouts(filepath.Join(tmp, "rootfs"), sc)
}

// unpackLayer extracts a layer's tar stream into dir through
// oci.Normalize and transfer.Unpack.
func unpackLayer(r io.Reader, dir string) (oci.LayerScan, error) {
	pr, pw := io.Pipe()
	type result struct {
		sc  oci.LayerScan
		err error
	}
	done := make(chan result, 1)
	go func() {
		sc, err := oci.Normalize(r, pw, "rootfs/")
		pw.CloseWithError(err)
		done <- result{sc, err}
	}()
	_, err := transfer.Unpack(tar.NewReader(pr), map[string]transfer.Dest{"rootfs/": {Dir: dir}})
	if err == nil {
		_, err = io.Copy(io.Discard, pr)
	}
	pr.CloseWithError(errors.New("unpack stopped"))
	res := <-done
	if err == nil {
		err = res.err
	}
	return res.sc, err
}

// ensureLayer makes sure this host holds the layer diffID, getting it
// with fetch if not. It returns the bytes fetch's stream gave (0: the
// host had it). fetch's reader is closed here.
func (a *Agent) ensureLayer(ctx context.Context, diffID string, fetch func(context.Context) (io.ReadCloser, error)) (int64, error) {
	dir, err := a.rt.LayerDir(diffID)
	if err != nil {
		return 0, badRequest("%v", err)
	}
	unlock, err := a.layerLock(ctx, diffID)
	if err != nil {
		return 0, err
	}
	defer unlock()
	if a.rt.HasLayer(diffID) {
		a.setPending(true, diffID)
		return 0, nil
	}
	if err := os.MkdirAll(a.rt.LayersDir(), 0o700); err != nil {
		return 0, err
	}
	tmp, err := os.MkdirTemp(a.rt.LayersDir(), ".tmp-"+strings.TrimPrefix(diffID, "sha256:")[:12]+"-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return 0, err
	}
	rc, err := fetch(ctx)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	n, err := receiveLayer(rc, tmp, diffID)
	if err != nil {
		return n, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return n, err
	}
	a.setPending(true, diffID)
	return n, nil
}

// handleMissingLayers answers which of the layers asked about this host
// lacks.
func (a *Agent) handleMissingLayers(w http.ResponseWriter, r *http.Request) {
	var req api.Layers
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		httpError(w, badRequest("decode the layer list: %v", err))
		return
	}
	rep := api.Layers{Layers: []string{}}
	for _, d := range req.Layers {
		if !runtime.ValidDiffID(d) {
			httpError(w, badRequest("invalid layer digest %q: want sha256: and 64 lowercase hex digits", d))
			return
		}
		if !a.rt.HasLayer(d) {
			rep.Layers = append(rep.Layers, d)
		} else {
			a.setPending(true, d) // the image about to be made lists it
		}
	}
	writeJSON(w, http.StatusOK, rep)
}

// handleLayerImport receives a layer's uncompressed tar stream; it must
// hash to the digest in the path, or nothing is kept.
func (a *Agent) handleLayerImport(w http.ResponseWriter, r *http.Request) {
	d := r.PathValue("digest")
	if !runtime.ValidDiffID(d) {
		httpError(w, badRequest("invalid layer digest %q: want sha256: and 64 lowercase hex digits", d))
		return
	}
	n, err := a.ensureLayer(r.Context(), d, func(context.Context) (io.ReadCloser, error) { return r.Body, nil })
	if err != nil {
		httpError(w, badRequest("layer %s: %v (nothing kept)", d, err))
		return
	}
	a.log.Info("layer imported", "layer", d, "bytes", n)
	writeJSON(w, http.StatusOK, api.ImportReply{Digest: d, Bytes: n})
}

// handleImageLayers makes an image of layers this host holds, replacing
// the image of that name if there is one.
func (a *Agent) handleImageLayers(w http.ResponseWriter, r *http.Request) {
	im, err := names.ParseImage(r.PathValue("name"))
	if err != nil {
		httpError(w, badRequest("%v", err))
		return
	}
	var req api.Layers
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		httpError(w, badRequest("decode the layer list: %v", err))
		return
	}
	unlock, err := a.imageLock(r.Context(), im.Key())
	if err != nil {
		httpError(w, err)
		return
	}
	defer unlock()
	if err := a.installLayered(r.Context(), im, req.Layers); err != nil {
		httpError(w, err)
		return
	}
	a.log.Info("image imported", "image", im.String(), "layers", len(req.Layers))
	w.WriteHeader(http.StatusNoContent)
}

// installLayered writes the image im as the list layers (bottom first),
// all of which must be here; the layers of the image it replaces that no
// image lists any more go (gcLayers). The caller holds the image's lock.
func (a *Agent) installLayered(ctx context.Context, im names.Image, layers []string) error {
	if len(layers) == 0 {
		return badRequest("image %s: no layers", im)
	}
	for _, d := range layers {
		if !runtime.ValidDiffID(d) {
			return badRequest("invalid layer digest %q: want sha256: and 64 lowercase hex digits", d)
		}
		if !a.rt.HasLayer(d) {
			return badRequest("image %s: layer %s is not on host %s (send it first, or pull the image again)", im, d, a.cfg.Name)
		}
	}
	if err := os.MkdirAll(a.imagesDir(), 0o700); err != nil {
		return err
	}
	tmp, err := a.imageTemp(im.Key())
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b, _ := json.Marshal(runtime.ImageLayers{Layers: layers})
	if err := os.WriteFile(filepath.Join(tmp, runtime.ImageLayersFile), b, 0o644); err != nil {
		return err
	}
	old, _ := runtime.ReadImageLayers(filepath.Join(a.imagesDir(), im.Key()))
	if err := a.installImage(tmp, im.Key()); err != nil {
		return err
	}
	a.setPending(false, layers...)
	if old != nil && strings.Join(old, " ") != strings.Join(layers, " ") {
		a.gcLayers(ctx)
	}
	return nil
}

// gcLayers removes the layers that no image here lists (counting images
// retired while a mount still used them), no mount uses and no image
// being made is about to list (pending).
func (a *Agent) gcLayers(ctx context.Context) {
	used := map[string]bool{}
	dirs, _ := os.ReadDir(a.imagesDir())
	for _, d := range dirs {
		ls, err := runtime.ReadImageLayers(filepath.Join(a.imagesDir(), d.Name()))
		if err != nil {
			a.log.Warn("read image layers: keeping every layer", "image", d.Name(), "err", err)
			return
		}
		for _, l := range ls {
			used[l] = true
		}
	}
	all, _ := os.ReadDir(a.rt.LayersDir())
	for _, e := range all {
		hexd, ok := strings.CutPrefix(e.Name(), "sha256-")
		d := "sha256:" + hexd
		if !ok || !runtime.ValidDiffID(d) || used[d] || a.pending(d) {
			continue
		}
		dir := filepath.Join(a.rt.LayersDir(), e.Name())
		if layerMounted(filepath.Join(dir, "rootfs")) {
			continue
		}
		unlock, err := a.layerLock(ctx, d)
		if err != nil {
			continue
		}
		if a.pending(d) { // asked about or received meanwhile
			unlock()
			continue
		}
		old := filepath.Join(a.rt.LayersDir(), ".tmp-gc-"+hexd[:12]+"-"+strconv.FormatInt(now().UnixNano(), 10))
		if err := os.Rename(dir, old); err == nil {
			_ = os.RemoveAll(old)
			a.log.Info("layer removed", "layer", d)
		}
		unlock()
	}
}

// layerMounted reports whether an overlay mount has dir among its lower
// layers (anywhere in its lowerdir list: mountinfo shows them all).
func layerMounted(dir string) bool {
	b, err := runtime.MountInfo()
	if err != nil {
		return true // keep it: better a layer left than one torn from a mount
	}
	return mountsLayer(string(b), dir)
}

// mountsLayer reports whether the mountinfo text names dir as a whole
// path (not as the prefix of a longer one).
func mountsLayer(mountinfo, dir string) bool {
	for _, end := range []string{":", ",", " ", "\n"} {
		if strings.Contains(mountinfo, dir+end) {
			return true
		}
	}
	return false
}

// handleLayerSend is the source's side of a layer copy: a layer of the
// image of a container migrating from here, as this host keeps it
// (zstd'd), to the destination (authz.Image checks the migration).
func (a *Agent) handleLayerSend(w http.ResponseWriter, r *http.Request) {
	name, d := r.PathValue("name"), r.PathValue("digest")
	if !runtime.ValidDiffID(d) {
		httpError(w, badRequest("invalid layer digest %q", d))
		return
	}
	c, im, err := a.localImage(r.Context(), name)
	if err != nil {
		httpError(w, err)
		return
	}
	ls, err := runtime.ReadImageLayers(filepath.Join(a.imagesDir(), im.Key()))
	if err != nil {
		httpError(w, err)
		return
	}
	if !contains(ls, d) {
		httpError(w, fmt.Errorf("layer %s is not a layer of image %s on %s: %w", d, c.Image, a.cfg.Name, store.ErrNotFound))
		return
	}
	dir, _ := a.rt.LayerDir(d)
	f, err := os.Open(filepath.Join(dir, layerTarFile))
	if err != nil {
		httpError(w, fmt.Errorf("layer %s on %s: %v: pull or import image %s again: %w", d, a.cfg.Name, err, c.Image, store.ErrNotFound))
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
		a.log.Warn("send layer", "layer", d, "container", name, "err", err)
	}
}

// fetchLayerFromPeer fetches layer d of the image of the container name
// migrating here from peer, zstd'd; the bytes received are added to n.
func fetchLayerFromPeer(peer *api.Client, name, d string, n *atomic.Int64) func(context.Context) (io.ReadCloser, error) {
	return func(ctx context.Context) (io.ReadCloser, error) {
		rc, err := peer.Stream(ctx, http.MethodGet, "/v1/outgoing/"+url.PathEscape(name)+"/layers/"+url.PathEscape(d), nil, "")
		if err != nil {
			return nil, err
		}
		zr, err := zstd.NewReader(&countingReader{r: rc, n: n}, zstd.WithDecoderConcurrency(1))
		if err != nil {
			rc.Close()
			return nil, err
		}
		return struct {
			io.Reader
			io.Closer
		}{zr, closerFunc(func() error { zr.Close(); return rc.Close() })}, nil
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }
