package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The bench's podman mode runs the paper artifact's own path for real
// (podman checkpoint --tcp-established --export, scp over the lab's
// underlay, podman restore --import --tcp-established) beside COAT, in the
// same lab: its client's connection survives, the report shows COAT's
// figures as ratios to Podman's, and nothing of it is left behind (no
// Podman container, no sshd, no archive).
func TestBenchPodmanMode(t *testing.T) {
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman is not installed: `make test` installs it (scripts/install-deps.sh): %v", err)
	}
	l := newLab(t, 2)
	out := t.TempDir()
	res := l.must("bench", "--workloads", "sample", "--modes", "coat,podman", "--runs", "1", "--ref-runs", "1",
		"--client-time", "3s", "--out", out)
	t.Log(res)
	b, err := os.ReadFile(filepath.Join(out, "runs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var runs []struct {
		Mode       string  `json:"mode"`
		Survived   bool    `json:"survived"`
		DowntimeMS float64 `json:"downtime_ms"`
		Bytes      int64   `json:"bytes"`
	}
	if err := json.Unmarshal(b, &runs); err != nil {
		t.Fatal(err)
	}
	var podman, coat int
	for _, r := range runs {
		switch r.Mode {
		case "podman":
			podman++
			if !r.Survived || r.DowntimeMS <= 0 || r.Bytes <= 0 {
				t.Errorf("podman run: %+v, want its connection kept, a downtime and the archive's size", r)
			}
		case "coat":
			coat++
		}
	}
	if podman != 1 || coat != 1 {
		t.Fatalf("runs.json has %d podman and %d coat runs, want 1 and 1: %s", podman, coat, b)
	}
	md, err := os.ReadFile(filepath.Join(out, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Ratio to Podman", "- coat: total ", "**Podman:** podman version"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if ps, _ := exec.Command("podman", "ps", "-a", "--format", "{{.Names}}").CombinedOutput(); strings.Contains(string(ps), "bench-") {
		t.Errorf("podman containers left behind: %s", ps)
	}
	if imgs, _ := exec.Command("podman", "images", "--format", "{{.Repository}}").CombinedOutput(); strings.Contains(string(imgs), "coat-bench-") {
		t.Errorf("podman images left behind: %s", imgs)
	}
	if pg, _ := exec.Command("pgrep", "-f", "/var/lib/coat/labs/"+l.name+"/podman/sshd_config").CombinedOutput(); len(strings.TrimSpace(string(pg))) > 0 {
		t.Errorf("the bench's sshd is still running: %s", pg)
	}
	if _, err := os.Stat(filepath.Join("/var/lib/coat/labs", l.name, "podman")); !os.IsNotExist(err) {
		t.Errorf("the bench's podman directory (keys, archives) is still there: %v", err)
	}
}
