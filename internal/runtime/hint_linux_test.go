package runtime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A dump that failed on a UNIX connection to a process outside the
// container says what to do; other failures get no such hint.
func TestDumpHint(t *testing.T) {
	for _, tc := range []struct {
		log  string
		want bool
	}{
		{"(00.012014) Error (criu/sk-unix.c:351): unix: Unix socket 1211563 not found\n(00.012034) Error (criu/cr-dump.c:1545): Dump files (pid: 10790) failed with -1\n", true},
		{"(00.010000) Error (criu/sk-unix.c:875): unix: External socket is used. Consider using --ext-unix-sk option.\n", true},
		{"(00.010000) Error (criu/sk-inet.c:200): inet: Something else\n", false},
		{"(00.004275) unix: \tCollected: ino 1210364 peer_ino 0 family    1 type    1 state 10 name /tmp/redis.sock\n", false},
	} {
		log := filepath.Join(t.TempDir(), "dump.log")
		if err := os.WriteFile(log, []byte(tc.log), 0o600); err != nil {
			t.Fatal(err)
		}
		got := dumpHint(log)
		if (got != "") != tc.want || tc.want && !strings.Contains(got, "close it and migrate again") {
			t.Errorf("log %q: hint %q, want one: %v", tc.log, got, tc.want)
		}
	}
	if got := dumpHint(filepath.Join(t.TempDir(), "missing.log")); got != "" {
		t.Errorf("missing log: hint %q", got)
	}
}
