package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The newest log directories stay, the oldest go.
func TestPruneCriuLogs(t *testing.T) {
	dir := t.TempDir()
	base := time.Now().Add(-time.Hour)
	for i := range 8 {
		d := filepath.Join(dir, fmt.Sprintf("web-%d", i))
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "dump.log"), []byte("log"), 0o600); err != nil {
			t.Fatal(err)
		}
		// Names sort against age: the order comes from the times.
		mt := base.Add(time.Duration(7-i) * time.Minute)
		if err := os.Chtimes(d, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	pruneCriuLogs(dir, 5)
	for i := range 8 {
		_, err := os.Stat(filepath.Join(dir, fmt.Sprintf("web-%d", i)))
		if kept := err == nil; kept != (i < 5) {
			t.Errorf("web-%d kept: %v, want %v", i, kept, i < 5)
		}
	}
	pruneCriuLogs(filepath.Join(dir, "missing"), 5) // no directory: nothing to do
}
