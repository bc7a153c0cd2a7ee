package images

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestLabImagesNames(t *testing.T) {
	var names []string
	for _, im := range LabImages("/nonexistent/coat-sample") {
		names = append(names, im.Name)
		if im.Build == nil {
			t.Errorf("image %s has no build function", im.Name)
		}
		if len(im.Cmd) == 0 || !strings.Contains(im.Cmd[0], map[string]string{"sample": "coat-sample", "redis": "redis-server"}[im.Name]+"") {
			t.Errorf("image %s: default command %q", im.Name, im.Cmd)
		}
		if got := LabCmd(im.Name); strings.Join(got, " ") != strings.Join(im.Cmd, " ") {
			t.Errorf("LabCmd(%s) = %q, want %q", im.Name, got, im.Cmd)
		}
	}
	if got := strings.Join(names, ","); got != "sample,sockperf,iperf3,redis" {
		t.Errorf("LabImages = %s", got)
	}
}

func TestBuildRedis(t *testing.T) {
	if _, err := exec.LookPath(RedisBinary); err != nil {
		t.Skipf("%s not installed (scripts/install-deps.sh installs it)", RedisBinary)
	}
	root := filepath.Join(t.TempDir(), "redis")
	if err := BuildRedis(root); err != nil {
		t.Fatal(err)
	}
	checkTree(t, root)
	if st, err := os.Stat(filepath.Join(root, "usr/bin/redis-server")); err != nil || !st.Mode().IsRegular() {
		t.Fatalf("redis-server not in the image as a regular file: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: skipping the chroot check")
	}
	if out := runChrooted(t, root, "/usr/bin/redis-server", "--version"); !strings.Contains(out, "Redis server") {
		t.Errorf("redis-server --version printed %q", out)
	}
}
