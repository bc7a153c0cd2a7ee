package runtime

// An image on a host is either layered or flattened:
//
//	StateDir/images/KEY/layers.json   layered: {"layers": [diffID, ...]},
//	                                  bottom first (the order of the
//	                                  image's configuration)
//	StateDir/layers/sha256-HEX/rootfs  each layer, unpacked once per host,
//	                                  whiteouts in overlayfs's form
//	StateDir/images/KEY/rootfs        flattened (an older agent's import):
//	                                  one lower layer of its own
//
// A container's rootfs is an overlay whose lowerdir is the image's layer
// directories, top first. The kernel takes a mount's options in one page:
// an image with too many layers for it is refused with a clear error
// (overlayOptions), not half mounted.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/coat-project/coat/internal/names"
)

// ImageLayersFile lists a layered image's layers in its directory.
const ImageLayersFile = "layers.json"

// ImageLayers is the content of ImageLayersFile.
type ImageLayers struct {
	Layers []string `json:"layers"` // diffIDs, bottom first
}

// mountDataMax is the longest option string mount(2) takes: one page,
// its terminating NUL included.
const mountDataMax = 4096 - 1

var diffIDRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidDiffID reports whether s is "sha256:" and 64 lowercase hex digits.
func ValidDiffID(s string) bool { return diffIDRE.MatchString(s) }

// LayersDir holds this host's layers.
func (r *Runtime) LayersDir() string { return filepath.Join(r.StateDir, "layers") }

// LayerDir is the directory of the layer diffID ("sha256:HEX"):
// layers/sha256-HEX (no ':', overlayfs's lowerdir separator).
func (r *Runtime) LayerDir(diffID string) (string, error) {
	if !ValidDiffID(diffID) {
		return "", fmt.Errorf("invalid layer digest %q: want sha256: and 64 lowercase hex digits", diffID)
	}
	return filepath.Join(r.LayersDir(), strings.Replace(diffID, ":", "-", 1)), nil
}

// HasLayer reports whether this host holds the layer diffID.
func (r *Runtime) HasLayer(diffID string) bool {
	dir, err := r.LayerDir(diffID)
	if err != nil {
		return false
	}
	st, err := os.Lstat(filepath.Join(dir, "rootfs"))
	return err == nil && st.IsDir()
}

// ReadImageLayers reads a layered image's layer list; (nil, nil) for an
// image that is not layered here (flattened, or absent).
func ReadImageLayers(imageDir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(imageDir, ImageLayersFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var il ImageLayers
	if err := json.Unmarshal(b, &il); err != nil {
		return nil, fmt.Errorf("%s: %w", ImageLayersFile, err)
	}
	if len(il.Layers) == 0 {
		return nil, fmt.Errorf("%s lists no layers", ImageLayersFile)
	}
	for _, d := range il.Layers {
		if !ValidDiffID(d) {
			return nil, fmt.Errorf("%s: invalid layer digest %q", ImageLayersFile, d)
		}
	}
	return il.Layers, nil
}

// Lowers are the directories of image's overlay lower layers, top first:
// its layers' for a layered image, its own rootfs for a flattened one.
// It fails if the image or one of its layers is missing.
func (r *Runtime) Lowers(image string) ([]string, error) {
	key, err := names.ImageKey(image)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(r.StateDir, "images", key)
	layers, err := ReadImageLayers(dir)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", image, err)
	}
	if layers == nil {
		flat := filepath.Join(dir, "rootfs")
		if st, err := os.Lstat(flat); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("image %q is not on host %s: get it with `coat image pull`, `load` or `import`", image, r.Host)
		}
		return []string{flat}, nil
	}
	out := make([]string, 0, len(layers))
	for i := len(layers) - 1; i >= 0; i-- {
		ld, _ := r.LayerDir(layers[i])
		if !r.HasLayer(layers[i]) {
			return nil, fmt.Errorf("image %s: layer %s is missing on host %s: pull or import the image again", image, layers[i], r.Host)
		}
		out = append(out, filepath.Join(ld, "rootfs"))
	}
	return out, nil
}

// overlayOptions are the overlay mount's options for lowers (top first),
// or an error if they do not fit in the page mount(2) takes.
func overlayOptions(lowers []string, upper, work string) (string, error) {
	for _, l := range lowers {
		if strings.ContainsAny(l, ":,") {
			return "", fmt.Errorf("overlay lower layer %q: a path with ':' or ',' cannot be a lower layer", l)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lowers, ":"), upper, work)
	if len(opts) > mountDataMax {
		return "", fmt.Errorf("the image has %d layers: the overlay mount's options would take %d bytes, above the kernel's limit of %d (one page): use an image with fewer layers (e.g. squash it) or a shorter state directory", len(lowers), len(opts), mountDataMax)
	}
	return opts, nil
}
