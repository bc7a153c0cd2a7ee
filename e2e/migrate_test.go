package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type streamReport struct {
	Sent, Received, Errors int64
	MaxGapMS               float64 `json:"max_gap_ms"`
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
