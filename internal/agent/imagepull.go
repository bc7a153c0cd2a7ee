package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	goruntime "runtime"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

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
