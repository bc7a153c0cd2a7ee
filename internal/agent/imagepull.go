package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/oci"
	"github.com/coat-project/coat/internal/store"
)

// registryAnswer is how long a destination waits for an image's registry
// to answer before it copies the image from the source agent instead (a
// variable for the tests).
var registryAnswer = 3 * time.Second

// registryRef is the reference an image was pulled from ("": it was
// loaded from an archive or imported from a directory, whose path the
// record keeps as its source).
func registryRef(rec store.Image) string {
	if rec.Digest == "" || rec.Source == "" || filepath.IsAbs(rec.Source) {
		return ""
	}
	return rec.Source
}

// pullImage pulls the image of rec from its registry as the CLI did:
// the manifest must be the one recorded (a tag moved since is no good),
// every layer is checked against its digest, and the flattened stream
// must have rec.RootfsDigest; only then is it installed as key. It
// returns the bytes of the image's layers. The registry must answer
// within registryAnswer. The caller holds the image's lock.
func (a *Agent) pullImage(ctx context.Context, ref string, rec store.Image, key string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, imageCopyTimeout)
	defer cancel()
	timer := time.AfterFunc(registryAnswer, cancel)
	img, err := oci.Pull(ctx, ref, rec.Insecure, v1.Platform{OS: "linux", Architecture: goruntime.GOARCH})
	if !timer.Stop() {
		return 0, fmt.Errorf("the registry did not answer within %v", registryAnswer)
	}
	if err != nil {
		return 0, err
	}
	d, err := img.Digest()
	if err != nil {
		return 0, err
	}
	if d.String() != rec.Digest {
		return 0, fmt.Errorf("%s is now %s, not the image recorded (%s)", ref, d, rec.Digest)
	}
	layout, err := os.MkdirTemp(a.imagesDir(), ".tmp-"+key+"-layout-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(layout)
	if img, err = oci.Cache(img, layout); err != nil {
		return 0, err
	}
	if err := oci.Verify(img); err != nil {
		return 0, err
	}
	n, err := layerBytes(img)
	if err != nil {
		return 0, err
	}
	tmp, err := a.imageTemp(key)
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	got, err := flattenInto(img, tmp)
	if err != nil {
		return 0, err
	}
	if got != rec.RootfsDigest {
		return 0, fmt.Errorf("%w: flattened, its digest is %s, the image's record says %s", errBadCopy, got, rec.RootfsDigest)
	}
	return n, a.installImage(tmp, key)
}

// flattenInto flattens img into tmp as an import would receive it and
// returns the stream's digest.
func flattenInto(img v1.Image, tmp string) (string, error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := oci.Flatten(img, pw)
		pw.CloseWithError(err)
		done <- err
	}()
	got, _, err := receiveImport(pr, tmp)
	pr.CloseWithError(errors.New("flatten: the reader stopped"))
	if ferr := <-done; err == nil {
		err = ferr
	}
	return got, err
}

// layerBytes is the size of img's layers as a registry serves them.
func layerBytes(img v1.Image) (int64, error) {
	ls, err := img.Layers()
	if err != nil {
		return 0, err
	}
	var n int64
	for _, l := range ls {
		s, err := l.Size()
		if err != nil {
			return 0, err
		}
		n += s
	}
	return n, nil
}

// ensureLayered brings the layers of c's image (rec) that this host
// lacks, each verified by its diffID: from the registry the image was
// pulled from, if it answers at once and still serves the recorded
// manifest, else (for those still missing) from c's host. Then it makes
// the image here. The caller holds the image's lock.
func (a *Agent) ensureLayered(ctx context.Context, c store.Container, im names.Image, rec store.Image) (api.ImageReply, error) {
	ctx, cancel := context.WithTimeout(ctx, imageCopyTimeout)
	defer cancel()
	all := rec.LayerDigests()
	var missing []string
	for _, d := range all {
		if !a.rt.HasLayer(d) {
			missing = append(missing, d)
		}
	}
	t0 := time.Now()
	var n atomic.Int64
	var from []string
	var regErr string
	if ref := registryRef(rec); ref != "" && len(missing) > 0 {
		rest, err := a.pullLayers(ctx, ref, rec, missing, &n)
		if len(rest) < len(missing) {
			from = append(from, ref)
		}
		if err != nil {
			regErr = fmt.Sprintf("registry %s: %v", ref, err)
			a.log.Info("layers not pulled: copying them from the source", "image", c.Image, "container", c.Name, "err", err)
		}
		missing = rest
	}
	if len(missing) > 0 {
		src, err := a.st.Host(ctx, c.Host)
		if err != nil {
			return api.ImageReply{}, fmt.Errorf("source host %s: %w", c.Host, err)
		}
		peer := a.peerClient(src)
		for _, d := range missing {
			if _, err := a.ensureLayer(ctx, d, fetchLayerFromPeer(peer, c.Name, d, &n)); err != nil {
				if regErr != "" {
					err = fmt.Errorf("%w; %s", err, regErr)
				}
				return api.ImageReply{}, fmt.Errorf("copy image %s from %s: layer %s: %w (the layer was not kept)", c.Image, src.Name, d, err)
			}
		}
		from = append(from, src.Name)
	}
	if err := a.installLayered(ctx, im, all); err != nil {
		return api.ImageReply{}, err
	}
	if len(from) == 0 {
		return api.ImageReply{}, nil
	}
	d := time.Since(t0)
	a.log.Info("image layers copied", "image", c.Image, "from", strings.Join(from, ", "), "container", c.Name, "bytes", n.Load(), "duration_ms", api.Ms(d))
	return api.ImageReply{Copied: true, From: strings.Join(from, ", "), Bytes: n.Load(), MS: api.Ms(d), RegistryError: regErr}, nil
}

// pullLayers pulls the layers missing of rec's image from ref, each
// checked by its diffID (and its compressed digest, which
// go-containerregistry checks), adding their compressed sizes to n. It
// returns the layers still missing. The registry must answer within
// registryAnswer, with the manifest recorded.
func (a *Agent) pullLayers(ctx context.Context, ref string, rec store.Image, missing []string, n *atomic.Int64) ([]string, error) {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := time.AfterFunc(registryAnswer, cancel)
	img, err := oci.Pull(pctx, ref, rec.Insecure, v1.Platform{OS: "linux", Architecture: goruntime.GOARCH})
	if !timer.Stop() {
		return missing, fmt.Errorf("the registry did not answer within %v", registryAnswer)
	}
	if err != nil {
		return missing, err
	}
	dg, err := img.Digest()
	if err != nil {
		return missing, err
	}
	if dg.String() != rec.Digest {
		return missing, fmt.Errorf("%s is now %s, not the image recorded (%s)", ref, dg, rec.Digest)
	}
	for i, d := range missing {
		h, err := v1.NewHash(d)
		if err != nil {
			return missing[i:], err
		}
		l, err := img.LayerByDiffID(h)
		if err != nil {
			return missing[i:], err
		}
		if _, err := a.ensureLayer(pctx, d, func(context.Context) (io.ReadCloser, error) { return l.Uncompressed() }); err != nil {
			return missing[i:], fmt.Errorf("layer %s: %w", d, err)
		}
		if sz, err := l.Size(); err == nil {
			n.Add(sz)
		}
	}
	return nil, nil
}
