package runtime

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An image dumped inside its network namespace is restored only into one:
// without a namespace to restore into, Restore refuses before it makes
// anything.
func TestRestoreInNetNSImageNeedsNetNS(t *testing.T) {
	dir := t.TempDir()
	r := &Runtime{StateDir: filepath.Join(dir, "state")}
	img := filepath.Join(dir, "img")
	if err := os.MkdirAll(img, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(img, inNetNSMarker), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(dir, "work")
	err := r.Restore(context.Background(), Spec{Name: "web"}, RestoreOpts{ImageDir: img, WorkDir: work})
	if err == nil || !strings.Contains(err.Error(), "network namespace") {
		t.Fatalf("Restore = %v, want a refusal naming the network namespace", err)
	}
	for _, p := range []string{work, r.StateDir} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s exists after the refusal (%v)", p, err)
		}
	}
}
