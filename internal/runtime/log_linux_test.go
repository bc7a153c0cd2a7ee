package runtime

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func readLog(t *testing.T, r *Runtime, name string) (string, int64, error) {
	t.Helper()
	l, err := r.OpenLog(name)
	if err != nil {
		return "", 0, err
	}
	defer l.Close()
	b, err := io.ReadAll(l.Tail())
	return string(b), l.Skipped, err
}

func TestOpenLog(t *testing.T) {
	r := testRuntime(t)
	logDir := filepath.Join(r.UpperDir("web"), ".coat")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readLog(t, r, "web"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing log: %v, want ErrNotExist", err)
	}
	if err := os.WriteFile(r.LogFile("web"), []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, skipped, err := readLog(t, r, "web"); err != nil || got != "hello\n" || skipped != 0 {
		t.Fatalf("log = %q, skipped %d, %v", got, skipped, err)
	}
	// A big log: only its last MiB.
	big := append(bytes.Repeat([]byte("a"), 100), bytes.Repeat([]byte("b"), LogTail)...)
	if err := os.WriteFile(r.LogFile("web"), big, 0o600); err != nil {
		t.Fatal(err)
	}
	got, skipped, err := readLog(t, r, "web")
	if err != nil || len(got) != LogTail || strings.Contains(got, "a") || skipped != 100 {
		t.Fatalf("big log: %d bytes, skipped %d, %v", len(got), skipped, err)
	}
	if _, err := r.OpenLog("../web"); err == nil || !strings.Contains(err.Error(), "invalid name") {
		t.Errorf("OpenLog(../web) = %v", err)
	}
}

// Whatever the container put in place of its log (the upper layer is
// its own), the agent never follows a link out of it nor blocks on it.
func TestOpenLogRefusesLinks(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, upper string) error
	}{
		{"log is a symlink", func(t *testing.T, upper string) error {
			os.MkdirAll(filepath.Join(upper, ".coat"), 0o700)
			return os.Symlink(secret, filepath.Join(upper, ".coat/log"))
		}},
		{"log dir is a symlink", func(t *testing.T, upper string) error {
			dir := filepath.Dir(secret)
			os.Rename(secret, filepath.Join(dir, "log"))
			defer os.Rename(filepath.Join(dir, "log"), secret)
			return os.Symlink(dir, filepath.Join(upper, ".coat"))
		}},
		{"log is a fifo", func(t *testing.T, upper string) error {
			os.MkdirAll(filepath.Join(upper, ".coat"), 0o700)
			return unix.Mkfifo(filepath.Join(upper, ".coat/log"), 0o600)
		}},
		{"log is a directory", func(t *testing.T, upper string) error {
			return os.MkdirAll(filepath.Join(upper, ".coat/log"), 0o700)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRuntime(t)
			upper := r.UpperDir("web")
			if err := os.MkdirAll(upper, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := tc.plant(t, upper); err != nil {
				t.Fatal(err)
			}
			got, _, err := readLog(t, r, "web")
			if !errors.Is(err, ErrLogNotFile) || !strings.Contains(err.Error(), "does not follow") || !strings.Contains(err.Error(), "coat rm web") {
				t.Fatalf("OpenLog = %q, %v; want refused, saying what to do", got, err)
			}
		})
	}
}

func TestOpenLogAt(t *testing.T) {
	r := testRuntime(t)
	if err := os.MkdirAll(filepath.Join(r.UpperDir("web"), ".coat"), 0o700); err != nil {
		t.Fatal(err)
	}
	read := func(from int64) (string, int64, int64) {
		t.Helper()
		l, err := r.OpenLogAt("web", from)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		b, err := io.ReadAll(l.Tail())
		if err != nil {
			t.Fatal(err)
		}
		return string(b), l.Start, l.Skipped
	}
	if err := os.WriteFile(r.LogFile("web"), []byte("one\ntwo\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A follower that read "one\n" gets what came after it.
	if got, start, skipped := read(4); got != "two\n" || start != 4 || skipped != 0 {
		t.Errorf("from 4: %q at %d, skipped %d", got, start, skipped)
	}
	if got, start, _ := read(8); got != "" || start != 8 {
		t.Errorf("from the end: %q at %d", got, start)
	}
	// Past the end: a new log, read from its start.
	if got, start, _ := read(100); got != "one\ntwo\n" || start != 0 {
		t.Errorf("from past the end: %q at %d", got, start)
	}
	// More than a MiB behind: the last MiB, and the rest counted.
	big := append([]byte("one\ntwo\n"), bytes.Repeat([]byte("b"), LogTail+10)...)
	if err := os.WriteFile(r.LogFile("web"), big, 0o600); err != nil {
		t.Fatal(err)
	}
	got, start, skipped := read(4)
	if len(got) != LogTail || start != int64(len(big)-LogTail) || skipped != start-4 {
		t.Errorf("far behind: %d bytes at %d, skipped %d", len(got), start, skipped)
	}
}
