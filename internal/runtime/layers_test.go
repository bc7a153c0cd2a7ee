package runtime

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOverlayOptions(t *testing.T) {
	got, err := overlayOptions([]string{"/l/top", "/l/base"}, "/c/upper", "/c/work")
	if want := "lowerdir=/l/top:/l/base,upperdir=/c/upper,workdir=/c/work"; err != nil || got != want {
		t.Errorf("overlayOptions = %q, %v; want %q", got, err, want)
	}
	if _, err := overlayOptions([]string{"/a:b"}, "/u", "/w"); err == nil {
		t.Error("a lower layer with ':' was accepted")
	}
	// A layer directory under /var/lib/coat is ~100 bytes: 40
	// fit in the page, 40 under a longer state directory do not.
	var many []string
	for i := range 40 {
		many = append(many, filepath.Join("/var/lib/coat/layers", "sha256-"+strings.Repeat("a", 63)+string(rune('a'+i%26)), "rootfs"))
	}
	if _, err := overlayOptions(many, "/u", "/w"); err != nil {
		t.Errorf("40 layers: %v", err)
	}
	for i := range many {
		many[i] = strings.Repeat("/x", 30) + many[i]
	}
	_, err = overlayOptions(many, "/u", "/w")
	if err == nil || !strings.Contains(err.Error(), "has 40 layers") || !strings.Contains(err.Error(), "above the kernel's limit of 4095") {
		t.Errorf("40 layers under a long directory: %v, want the page limit named", err)
	}
}

func TestLowers(t *testing.T) {
	r := &Runtime{StateDir: t.TempDir(), Host: "h"}
	base, top := "sha256:"+strings.Repeat("0", 64), "sha256:"+strings.Repeat("1", 64)
	dir := filepath.Join(r.StateDir, "images", "lab+app@1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(ImageLayers{Layers: []string{base, top}})
	if err := os.WriteFile(filepath.Join(dir, ImageLayersFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Lowers("lab/app:1"); err == nil || !strings.Contains(err.Error(), "layer "+top+" is missing") {
		t.Errorf("Lowers with no layers: %v", err)
	}
	if r.HasImage("lab/app:1") {
		t.Error("HasImage with its layers missing")
	}
	for _, d := range []string{base, top} {
		ld, _ := r.LayerDir(d)
		if err := os.MkdirAll(filepath.Join(ld, "rootfs"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got, err := r.Lowers("lab/app:1")
	want := []string{filepath.Join(r.StateDir, "layers", "sha256-"+strings.Repeat("1", 64), "rootfs"), filepath.Join(r.StateDir, "layers", "sha256-"+strings.Repeat("0", 64), "rootfs")}
	if err != nil || strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("Lowers = %q, %v; want %q (top first)", got, err, want)
	}
	if _, err := r.LayerDir("sha256:../../x"); err == nil {
		t.Error("LayerDir accepted a path")
	}
}
