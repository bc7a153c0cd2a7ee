package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type streamReport struct {
	Sent, Received, Errors int64
	MaxGapMS               float64 `json:"max_gap_ms"`
	GapAt                  float64 `json:"gap_at"` // seconds from the start to that gap
	ConnectionError        string  `json:"connection_error"`
}

// startStream runs the sample client on the client node for d.
func (l *testLab) startStream(ip string, d time.Duration) (*exec.Cmd, *bytes.Buffer) {
	l.t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), d+90*time.Second)
	l.t.Cleanup(cancel)
	cmd := l.client(ctx, filepath.Join(binDir, "coat-sample"), "stream", "--addr", ip+":7000",
		"--duration", d.String(), "--rate", "2MB/s", "--json")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	return cmd, &out
}

func parseStream(t *testing.T, out *bytes.Buffer) streamReport {
	t.Helper()
	var r streamReport
	line := strings.TrimSpace(out.String())
	if i := strings.LastIndex(line, "\n"); i >= 0 {
		line = line[i+1:]
	}
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		t.Fatalf("stream report: %v\n%s", err, out)
	}
	return r
}

type serverStats struct {
	Connections, Active, Bytes, Errors, Counter int64
}

func (l *testLab) stats(ip string) serverStats {
	l.t.Helper()
	out, err := l.ctl(ip, "stats")
	if err != nil {
		l.t.Fatalf("stats: %v %s", err, out)
	}
	var s serverStats
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		l.t.Fatalf("stats: %v %s", err, out)
	}
	return s
}

// A client streaming to a container keeps its one TCP connection across
// edge-1 -> edge-2 -> edge-1: every byte arrives once and in order at both
// ends, no reset.
func TestStreamSurvivesMigrations(t *testing.T) {
	l := newLab(t, 2)
	c := l.runSample("svc", "edge-1")
	cmd, out := l.startStream(c.IP, 7*time.Second)
	time.Sleep(1500 * time.Millisecond)
	l.migrate("svc", "edge-2")
	if got := l.get("svc"); got.Host != "edge-2" || got.Status != "running" || got.IP != c.IP || got.MAC != c.MAC {
		t.Fatalf("after migration: %+v, want running on edge-2 with ip %s mac %s", got, c.IP, c.MAC)
	}
	time.Sleep(1500 * time.Millisecond)
	l.migrate("svc", "edge-1")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stream client failed: %v\n%s", err, out)
	}
	r := parseStream(t, out)
	if r.ConnectionError != "" || r.Errors != 0 || r.Sent == 0 || r.Received != r.Sent {
		t.Fatalf("client side: %+v", r)
	}
	s := l.stats(c.IP)
	if s.Connections != 1 || s.Errors != 0 || s.Bytes != r.Sent {
		t.Fatalf("server side: %+v, want 1 connection, 0 errors, %d bytes", s, r.Sent)
	}
	t.Logf("client: %d bytes echoed intact, longest stall %.0f ms", r.Received, r.MaxGapMS)
}

// A file the container wrote and its in-memory state survive migration.
func TestStateSurvivesMigration(t *testing.T) {
	l := newLab(t, 2)
	c := l.runSample("state", "edge-1")
	if out, err := l.ctl(c.IP, "put", "greeting", "hello-from-edge-1"); err != nil || out != "ok" {
		t.Fatalf("put: %v %s", err, out)
	}
	for i := 0; i < 3; i++ {
		if _, err := l.ctl(c.IP, "incr"); err != nil {
			t.Fatal(err)
		}
	}
	before := l.stats(c.IP)
	// A file in the container's /dev/shm (a directory of its /dev tmpfs).
	root := fmt.Sprintf("/proc/%d/root", l.pid("state"))
	if err := os.WriteFile(root+"/dev/shm/keep", []byte("shm-before"), 0o600); err != nil {
		t.Fatalf("write /dev/shm in the container: %v", err)
	}
	l.migrate("state", "edge-2")
	if out, err := l.ctl(c.IP, "get", "greeting"); err != nil || out != "hello-from-edge-1" {
		t.Fatalf("file after migration: %v %q", err, out)
	}
	if out, err := l.ctl(c.IP, "incr"); err != nil || out != "4" {
		t.Fatalf("in-memory counter after migration: %v %q, want 4", err, out)
	}
	after := l.stats(c.IP)
	if after.Connections <= before.Connections-1 || after.Bytes != before.Bytes {
		t.Fatalf("server state changed: before %+v after %+v", before, after)
	}
	logs := l.must("logs", "state")
	if !strings.Contains(logs, "listening") {
		t.Fatalf("container output lost across migration:\n%s", logs)
	}
	// CRIU keeps its kernel-feature cache in the agents' own tmpfs.
	for _, h := range []string{"edge-1", "edge-2"} {
		if _, err := os.Stat(filepath.Join("/var/lib/coat/labs", l.name, h, "criu-run", "criu.kdat")); err != nil {
			t.Errorf("CRIU's cache on %s: %v", h, err)
		}
	}
	// Twice restored (a restored container's masks are checkpointed too):
	// /dev/shm kept its file and its mode; the masked directories are
	// still empty and cannot be written, even by the container's root.
	l.migrate("state", "edge-1")
	root = fmt.Sprintf("/proc/%d/root", l.pid("state"))
	if b, err := os.ReadFile(root + "/dev/shm/keep"); err != nil || string(b) != "shm-before" {
		t.Errorf("/dev/shm file after migrations: %v %q", err, b)
	}
	if st, err := os.Stat(root + "/dev/shm"); err != nil || st.Mode()&os.ModeSticky == 0 || st.Mode().Perm() != 0o777 {
		t.Errorf("/dev/shm after migrations: %v %v, want sticky 0777", err, st.Mode())
	}
	for _, d := range []string{"/proc/acpi", "/sys/firmware"} {
		if _, err := os.Stat(d); err != nil {
			continue // not on this kernel: not masked
		}
		if ents, err := os.ReadDir(root + d); err != nil || len(ents) != 0 {
			t.Errorf("masked %s after migrations: %v, %d entries, want empty", d, err, len(ents))
		}
		if err := os.WriteFile(root+d+"/x", []byte("x"), 0o600); err == nil {
			t.Errorf("masked %s is writable after migrations", d)
		}
	}
}

// An upgrade (the agent's binary replaced by a new build, agents restarted
// on it by `lab up`) leaves a running container migratable with its
// client's connection: containers bind a copy of the agent's binary named
// by its content, not the binary itself, whose replacement CRIU could not
// checkpoint.
func TestMigrationAfterUpgrade(t *testing.T) {
	requireRoot(t)
	bin := filepath.Join(t.TempDir(), "coat")
	install := func(extra string) {
		b, err := os.ReadFile(filepath.Join(binDir, "coat"))
		if err != nil {
			t.Fatal(err)
		}
		// Trailing bytes make another build (another hash) that runs.
		if err := os.WriteFile(bin+".new", append(b, extra...), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(bin+".new", bin); err != nil {
			t.Fatal(err)
		}
	}
	install("")
	// lab up finds the sample image's binary beside coat.
	if err := os.Symlink(filepath.Join(binDir, "coat-sample"), filepath.Join(filepath.Dir(bin), "coat-sample")); err != nil {
		t.Fatal(err)
	}
	l := newLabBin(t, bin, "--hosts", "2")
	c := l.runSample("upg", "edge-1")
	cmd, out := l.startStream(c.IP, 5*time.Second)
	time.Sleep(time.Second)
	install("\x00build-2")
	l.must("lab", "up") // restarts the agents on the new build
	l.migrate("upg", "edge-2")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stream client failed: %v\n%s", err, out)
	}
	if r := parseStream(t, out); r.ConnectionError != "" || r.Errors != 0 || r.Received != r.Sent {
		t.Fatalf("client side: %+v", r)
	}
	if got := l.get("upg"); got.Host != "edge-2" || got.Status != "running" {
		t.Fatalf("after migration: %+v", got)
	}
}

// With --no-tcp the connection ends with an error, the container runs on
// the destination and a new connection works.
func TestTraditionalMigrationDropsConnections(t *testing.T) {
	l := newLab(t, 2)
	c := l.runSample("trad", "edge-1")
	cmd, out := l.startStream(c.IP, 5*time.Second)
	time.Sleep(1500 * time.Millisecond)
	l.migrate("trad", "edge-2", "--no-tcp")
	err := cmd.Wait()
	r := parseStream(t, out)
	if err == nil || r.ConnectionError == "" {
		t.Fatalf("stream survived a --no-tcp migration: %v %+v", err, r)
	}
	if got := l.get("trad"); got.Host != "edge-2" || got.Status != "running" {
		t.Fatalf("after migration: %+v", got)
	}
	if out, err := l.ctl(c.IP, "ping"); err != nil || out != "pong" {
		t.Fatalf("new connection after --no-tcp migration: %v %s", err, out)
	}
	t.Logf("client saw: %s", r.ConnectionError)
}

// Unmodified iperf3 and sockperf clients complete with a migration in the
// middle of their run.
func TestRealClientsSurviveMigration(t *testing.T) {
	l := newLab(t, 2)
	l.must("run", "--host", "edge-1", "--name", "iperf", "--image", "iperf3", "--", "iperf3", "-s")
	l.must("run", "--host", "edge-1", "--name", "sockperf", "--image", "sockperf", "--", "sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", "11111")
	ip := l.get("iperf").IP
	sip := l.get("sockperf").IP
	l.waitListen("iperf", 5201)
	l.waitListen("sockperf", 11111)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"iperf", []string{"iperf3", "-c", ip, "-t", "6", "-b", "50M"}},
		{"sockperf", []string{"sockperf", "ping-pong", "--tcp", "-i", sip, "-p", "11111", "-t", "6"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var out bytes.Buffer
			cmd := l.client(ctx, tc.args...)
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Second)
			l.migrate(tc.name, "edge-2")
			if err := cmd.Wait(); err != nil {
				t.Fatalf("%s failed across migration: %v\n%s", tc.args[0], err, out.String())
			}
			tail := out.String()
			if len(tail) > 600 {
				tail = tail[len(tail)-600:]
			}
			t.Logf("%s output tail:\n%s", tc.args[0], tail)
		})
	}
}

// A failed restore on the destination leaves the container running on
// the source with its connection intact, and the error names CRIU's log.
func TestFailedRestoreRollsBack(t *testing.T) {
	t.Setenv("COAT_TEST_HOOKS", "1") // --fail-restore is a test hook
	l := newLab(t, 2)
	c := l.runSample("rb", "edge-1")
	cmd, out := l.startStream(c.IP, 5*time.Second)
	time.Sleep(1500 * time.Millisecond)
	before := l.ps()
	res, err := l.coat("migrate", "rb", "--to", "edge-2", "--fail-restore")
	if err == nil {
		t.Fatalf("migration with a failing restore succeeded:\n%s", res)
	}
	for _, want := range []string{"restore", "CRIU log: /", "restore.log", "rolled back"} {
		if !strings.Contains(res, want) {
			t.Errorf("error does not mention %q:\n%s", want, res)
		}
	}
	after := l.get("rb")
	if after.Host != "edge-1" || after.Status != "running" {
		t.Fatalf("after failed migration: %+v, want running on edge-1 (before: %+v)", after, before)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stream broken by a failed migration: %v\n%s", err, out)
	}
	if r := parseStream(t, out); r.Errors != 0 || r.Received != r.Sent || r.ConnectionError != "" {
		t.Fatalf("stream after rollback: %+v", r)
	}
	// And it can still migrate for real afterwards.
	l.migrate("rb", "edge-2")
	if out, err := l.ctl(c.IP, "ping"); err != nil || out != "pong" {
		t.Fatalf("after second migration: %v %s", err, out)
	}
}

// When the rollback fails too (the source's own restore fails), the
// container is reported as what it is: failed, not running, with where its
// checkpoint image is kept; `coat rm` then removes it and the image.
func TestFailedRollbackIsReported(t *testing.T) {
	t.Setenv("COAT_TEST_HOOKS", "1")
	l := newLab(t, 2)
	l.runSample("lost", "edge-1")
	res, err := l.coat("migrate", "lost", "--to", "edge-2", "--fail-restore", "--fail-resume")
	if err == nil {
		t.Fatalf("migration with failing restores succeeded:\n%s", res)
	}
	if !strings.Contains(res, "rollback incomplete") {
		t.Errorf("error does not say the rollback failed:\n%s", res)
	}
	got := l.get("lost")
	if got.Status != "failed" || got.Host != "edge-1" {
		t.Fatalf("after a failed rollback: %+v, want failed on edge-1", got)
	}
	if !strings.Contains(got.Error, "checkpoint image is kept on edge-1") {
		t.Errorf("error does not say where the image is: %q", got.Error)
	}
	imgs := func() []string {
		m, _ := filepath.Glob(filepath.Join("/var/lib/coat/labs", l.name, "edge-1", "checkpoints", "lost-*"))
		return m
	}
	if len(imgs()) == 0 {
		t.Fatal("the checkpoint image was not kept")
	}
	l.must("rm", "lost")
	deadline := time.Now().Add(10 * time.Second)
	for len(imgs()) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if left := imgs(); len(left) > 0 {
		t.Errorf("image left 10 s after rm: %v", left)
	}
}
