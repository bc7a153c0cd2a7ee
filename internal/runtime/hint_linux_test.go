package runtime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A dump that failed on a UNIX connection to a process outside the
// container, or a restore on a socket path taken by a file, says what to
// do; other failures get no such hint.
func TestCriuHint(t *testing.T) {
	const outside, inTheWay = "close it and migrate again", "UNIX socket /tmp/pair.sock cannot be bound again: its image has a file at that path"
	for _, tc := range []struct {
		log  string
		want string // in the hint; "" for none
	}{
		{"(00.012014) Error (criu/sk-unix.c:351): unix: Unix socket 1211563 not found\n(00.012034) Error (criu/cr-dump.c:1545): Dump files (pid: 10790) failed with -1\n", outside},
		{"(00.010000) Error (criu/sk-unix.c:875): unix: External socket is used. Consider using --ext-unix-sk option.\n", outside},
		{"(00.066883)      1: unix: bind id 0x4 ino 1248716 addr /tmp/pair.sock\n(00.066893)      1: Error (criu/sk-unix.c:1651): unix: Can't bind id 0x4 ino 1248716 addr /tmp/pair.sock: Address already in use\n", inTheWay},
		{"(00.010000) Error (criu/sk-unix.c:1651): unix: Can't bind id 0x4 ino 1 addr /tmp/x.sock: Permission denied\n", ""},
		{"(00.010000) Error (criu/sk-inet.c:200): inet: Something else\n", ""},
		{"(00.016920) Error (criu/cr-dump.c:389): Can't get rlimit 0: Operation not permitted\n", "run the container as root (`coat run --user 0`)"},
		{"(00.004275) unix: \tCollected: ino 1210364 peer_ino 0 family    1 type    1 state 10 name /tmp/redis.sock\n", ""},
	} {
		log := filepath.Join(t.TempDir(), "dump.log")
		if err := os.WriteFile(log, []byte(tc.log), 0o600); err != nil {
			t.Fatal(err)
		}
		got := criuHint(log)
		if tc.want == "" && got != "" || !strings.Contains(got, tc.want) {
			t.Errorf("log %q: hint %q, want one with %q", tc.log, got, tc.want)
		}
	}
	if got := criuHint(filepath.Join(t.TempDir(), "missing.log")); got != "" {
		t.Errorf("missing log: hint %q", got)
	}
}
