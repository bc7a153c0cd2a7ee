package agent

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/store"
)

// layerTar is an OCI layer (names relative to its root) of files, each
// name -> content ("" with a trailing '/' in the name: a directory).
func layerTar(t *testing.T, files ...string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := 0; i+1 < len(files); i += 2 {
		name, body := files[i], files[i+1]
		h := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}
		if strings.HasSuffix(name, "/") {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layerDirs lists layers/ (temporary directories included).
func layerDirs(t *testing.T, a *Agent) []string {
	t.Helper()
	ents, _ := os.ReadDir(a.rt.LayersDir())
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

type layerClient struct {
	t *testing.T
	h http.Handler
}

func (c layerClient) do(method, path string, body []byte) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	c.h.ServeHTTP(w, httptest.NewRequest(method, path, bytes.NewReader(body)))
	return w
}

func (c layerClient) put(layer []byte, digest string) *httptest.ResponseRecorder {
	return c.do("PUT", "/v1/layers/"+url.PathEscape(digest), layer)
}

func (c layerClient) image(name string, layers ...string) *httptest.ResponseRecorder {
	b, _ := json.Marshal(api.Layers{Layers: layers})
	return c.do("PUT", "/v1/images/"+url.PathEscape(name)+"/layers", b)
}

func (c layerClient) missing(layers ...string) []string {
	c.t.Helper()
	b, _ := json.Marshal(api.Layers{Layers: layers})
	w := c.do("POST", "/v1/layers/missing", b)
	var rep api.Layers
	if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &rep) != nil {
		c.t.Fatalf("missing: %d %s", w.Code, w.Body)
	}
	return rep.Layers
}

// A layer whose bytes do not hash to the digest it is sent under is
// refused and leaves nothing; one that does is kept under its digest.
func TestLayerImportVerifiesDigest(t *testing.T) {
	requireRoot(t)
	a, h := badInputAgent(t)
	c := layerClient{t, h}
	good := layerTar(t, "bin/", "", "bin/sh", "#!sh\n")
	bad := layerTar(t, "bin/", "", "bin/sh", "#!evil\n")
	if w := c.put(bad, sha(good)); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "the stream received has digest "+sha(bad)) {
		t.Errorf("a layer under another's digest: %d %s", w.Code, w.Body)
	}
	if got := layerDirs(t, a); len(got) != 0 {
		t.Errorf("a refused layer left %v", got)
	}
	if w := c.put(good, "sha256:../../x"); w.Code != http.StatusBadRequest {
		t.Errorf("a bad digest: %d %s", w.Code, w.Body)
	}
	if w := c.put(good, sha(good)); w.Code != http.StatusOK {
		t.Fatalf("good layer: %d %s", w.Code, w.Body)
	}
	dir, _ := a.rt.LayerDir(sha(good))
	if b, err := os.ReadFile(filepath.Join(dir, "rootfs", "bin", "sh")); err != nil || string(b) != "#!sh\n" {
		t.Errorf("layer content: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, layerTarFile)); err != nil {
		t.Errorf("the layer's stream is not kept: %v", err)
	}
	// An image of a layer the host lacks is refused.
	if w := c.image("app", sha(bad)); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "is not on host edge-1") {
		t.Errorf("image of a missing layer: %d %s", w.Code, w.Body)
	}
	if a.rt.HasImage("app") {
		t.Error("an image of a missing layer exists")
	}
}

// Two images sharing a base layer: the host stores it once, is sent only
// what it lacks, and removing the images removes each layer once no image
// uses it.
func TestLayersStoredOnce(t *testing.T) {
	requireRoot(t)
	a, h := badInputAgent(t)
	a.st = &imgStore{}
	c := layerClient{t, h}
	base := layerTar(t, "etc/", "", "etc/os", "base\n")
	top1 := layerTar(t, "app/", "", "app/one", "1\n")
	top2 := layerTar(t, "app/", "", "app/two", "2\n")
	for _, l := range [][]byte{base, top1} {
		if w := c.put(l, sha(l)); w.Code != http.StatusOK {
			t.Fatalf("put: %d %s", w.Code, w.Body)
		}
	}
	if w := c.image("one", sha(base), sha(top1)); w.Code != http.StatusNoContent {
		t.Fatalf("image one: %d %s", w.Code, w.Body)
	}
	if m := c.missing(sha(base), sha(top2)); len(m) != 1 || m[0] != sha(top2) {
		t.Errorf("missing = %v, want only the second image's top layer", m)
	}
	if w := c.put(top2, sha(top2)); w.Code != http.StatusOK {
		t.Fatalf("put: %d %s", w.Code, w.Body)
	}
	if w := c.image("two", sha(base), sha(top2)); w.Code != http.StatusNoContent {
		t.Fatalf("image two: %d %s", w.Code, w.Body)
	}
	// Made again of other layers, an image's old layers no other image
	// lists go.
	if w := c.image("one", sha(base)); w.Code != http.StatusNoContent {
		t.Fatalf("image one again: %d %s", w.Code, w.Body)
	}
	if a.rt.HasLayer(sha(top1)) {
		t.Error("one's old top layer stayed")
	}
	if w := c.put(top1, sha(top1)); w.Code != http.StatusOK {
		t.Fatalf("put: %d %s", w.Code, w.Body)
	}
	if w := c.image("one", sha(base), sha(top1)); w.Code != http.StatusNoContent {
		t.Fatalf("image one: %d %s", w.Code, w.Body)
	}
	if got := layerDirs(t, a); len(got) != 3 {
		t.Errorf("layers/ holds %v, want 3 layers (the base once)", got)
	}
	for _, im := range []string{"one", "two"} {
		if !a.rt.HasImage(im) {
			t.Errorf("image %s missing", im)
		}
	}
	if w := c.do("DELETE", "/v1/images/one", nil); w.Code != http.StatusNoContent {
		t.Fatalf("rm one: %d %s", w.Code, w.Body)
	}
	if got := layerDirs(t, a); len(got) != 2 || !a.rt.HasLayer(sha(base)) || !a.rt.HasLayer(sha(top2)) {
		t.Errorf("after rm one, layers/ holds %v, want the base and two's top", got)
	}
	// A container using two keeps its layers.
	a.st = &imgStore{cs: []store.Container{{Name: "web", Host: "edge-1", Image: "two"}}}
	if w := c.do("DELETE", "/v1/images/two", nil); w.Code != http.StatusConflict {
		t.Errorf("rm of an image in use: %d %s", w.Code, w.Body)
	}
	a.st = &imgStore{}
	// A layer received for an image not made yet stays.
	top3 := layerTar(t, "app/", "", "app/three", "3\n")
	if w := c.put(top3, sha(top3)); w.Code != http.StatusOK {
		t.Fatalf("put: %d %s", w.Code, w.Body)
	}
	if w := c.do("DELETE", "/v1/images/two", nil); w.Code != http.StatusNoContent {
		t.Fatalf("rm two: %d %s", w.Code, w.Body)
	}
	if got := layerDirs(t, a); len(got) != 1 || !a.rt.HasLayer(sha(top3)) {
		t.Errorf("after rm of both, layers/ holds %v, want only the layer received for an image to come", got)
	}
	// Made and removed, it goes.
	if w := c.image("three", sha(top3)); w.Code != http.StatusNoContent {
		t.Fatalf("image three: %d %s", w.Code, w.Body)
	}
	if w := c.do("DELETE", "/v1/images/three", nil); w.Code != http.StatusNoContent {
		t.Fatalf("rm three: %d %s", w.Code, w.Body)
	}
	if got := layerDirs(t, a); len(got) != 0 {
		t.Errorf("after rm of every image, layers/ holds %v", got)
	}
}

// requireRoot skips a test that makes files owned by others, device
// nodes or trusted.* xattrs.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// A layer anywhere in an overlay's lowerdir list is in use; a path that
// only starts like it is not.
func TestMountsLayer(t *testing.T) {
	const info = "612 30 0:77 / /s/containers/web/rootfs rw,relatime - overlay overlay rw,lowerdir=/s/layers/sha256-aa/rootfs:/s/layers/sha256-bb/rootfs,upperdir=/s/containers/web/upper,workdir=/s/containers/web/work\n"
	for dir, want := range map[string]bool{
		"/s/layers/sha256-aa/rootfs": true, "/s/layers/sha256-bb/rootfs": true,
		"/s/layers/sha256-a/rootfs": false, "/s/layers/sha256-cc/rootfs": false, "/s/layers/sha256-bb/root": false,
	} {
		if got := mountsLayer(info, dir); got != want {
			t.Errorf("mountsLayer(%s) = %v, want %v", dir, got, want)
		}
	}
}
