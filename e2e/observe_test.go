package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// scrape reads node's /metrics from inside its namespace, where the lab's
// agent serves it on loopback.
func (l *testLab) scrape(node string) string {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/coat-"+l.name+"-"+node,
		"curl", "-sS", "--max-time", "10", "http://127.0.0.1:9100/metrics").CombinedOutput()
	if err != nil {
		l.t.Fatalf("scrape %s: %v\n%s", node, err, out)
	}
	return string(out)
}

// metric sums the samples of name whose labels include every one of want
// (as key="value").
func metric(t *testing.T, text, name string, want ...string) float64 {
	t.Helper()
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	sum, found := 0.0, false
	for _, line := range strings.Split(text, "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(m[1], w)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum, found = sum+v, true
	}
	if !found {
		return -1
	}
	return sum
}

// Each agent of the lab serves its metrics on 127.0.0.1:9100 in its own
// namespace (and nowhere else); the source's count a committed and a
// rolled-back migration, the downtime of the committed one, its bytes and
// its phases.
func TestMetrics(t *testing.T) {
	t.Setenv("COAT_TEST_HOOKS", "1") // --fail-restore
	l := newLab(t, 2)
	c := l.runSample("mx", "edge-1")
	if _, err := l.coat("migrate", "mx", "--to", "edge-2", "--fail-restore"); err == nil {
		t.Fatal("a migration with a failing restore succeeded")
	}
	// Right after a rollback the source may still hold the name for a
	// moment (busy, refused at the lock: counted as failed): try again.
	var r migrateResult
	busy := 0
	for {
		out, err := l.coat("migrate", "mx", "--to", "edge-2", "--json")
		if err == nil {
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("migrate --json: %v\n%s", err, out)
			}
			break
		}
		if !strings.Contains(out, "busy") || busy == 50 {
			t.Fatalf("migrate: %v\n%s", err, out)
		}
		busy++
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("busy right after the rollback: %d times", busy)
	failed := -1.0 // no such series
	if busy > 0 {
		failed = float64(busy)
	}
	if out, err := l.ctl(c.IP, "ping"); err != nil || out != "pong" {
		t.Fatalf("after migration: %v %s", err, out)
	}

	m := l.scrape("edge-1")
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"coat_migrations_total", []string{`outcome="committed"`, `host="edge-1"`}, 1},
		{"coat_migrations_total", []string{`outcome="rolled_back"`}, 1},
		{"coat_migrations_total", []string{`outcome="failed"`}, failed},
		{"coat_migration_downtime_seconds_count", nil, 1},
		{"coat_migration_bytes_total", nil, float64(r.Bytes)},
		{"coat_migration_phase_duration_seconds_count", []string{`phase="committed"`}, 1},
		{"coat_migration_phase_duration_seconds_count", []string{`phase="checkpointed"`}, 2},
		{"coat_build_info", nil, 1},
	} {
		if got := metric(t, m, tc.name, tc.labels...); got != tc.want {
			t.Errorf("edge-1: %s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if got := metric(t, m, "coat_migration_downtime_seconds_sum"); got <= 0 || got*1000 > r.DowntimeMS+1 {
		t.Errorf("downtime sum %v s, want the migration's %.1f ms", got, r.DowntimeMS)
	}
	// The store's round trip is sampled when the agent starts.
	if got := metric(t, m, "coat_etcd_round_trip_seconds_count"); got < 1 {
		t.Errorf("etcd round trip samples = %v, want at least 1", got)
	}
	// The destination coordinated nothing.
	if got := metric(t, l.scrape("edge-2"), "coat_migrations_total"); got != -1 {
		t.Errorf("edge-2 counts %v migrations, want none", got)
	}
	// Loopback of the host's namespace only.
	out, _ := exec.Command("nsenter", "--net=/run/netns/coat-"+l.name+"-edge-1", "ss", "-Htln", "sport = :9100").Output()
	if f := strings.Fields(string(out)); len(f) < 4 || f[3] != "127.0.0.1:9100" {
		t.Errorf("edge-1 listens on 9100 as %q, want 127.0.0.1:9100 only", out)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// background starts coat args against the lab; stop interrupts it (as
// Ctrl-C does) and returns its error.
func (l *testLab) background(stdout, stderr *syncBuffer, args ...string) (stop func() error) {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "coat"), args...)
	cmd.Env = append(os.Environ(), "COAT_LAB="+l.name)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		cancel()
		l.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		defer cancel()
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			cancel()
			<-done
			return context.DeadlineExceeded
		}
	}
	l.t.Cleanup(func() { _ = stop() })
	return stop
}

// waitOutput waits until f's output holds want.
func waitOutput(t *testing.T, what string, f func() string, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(f(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q after %v:\n%s", what, want, d, f())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type eventLine struct {
	Type, Name, Host, From, To, Phase, Status string
	Time                                      time.Time
}

// coat events --json follows a container's creation, its migration phase
// by phase and its move, and its removal, and ends cleanly on Ctrl-C.
func TestEvents(t *testing.T) {
	l := newLab(t, 2)
	var out, errb syncBuffer
	stop := l.background(&out, &errb, "events", "--json")
	waitOutput(t, "coat events", errb.String, "following the cluster from revision", 15*time.Second)

	l.runSample("ev", "edge-1")
	l.migrate("ev", "edge-2")
	l.must("rm", "ev")
	waitOutput(t, "coat events", out.String, `"type":"container-removed"`, 15*time.Second)
	if err := stop(); err != nil {
		t.Fatalf("coat events on Ctrl-C: %v\n%s", err, errb.String())
	}

	var got []string
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		var e eventLine
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("not one JSON object a line: %q: %v", sc.Text(), err)
		}
		if e.Time.IsZero() {
			t.Errorf("event without a time: %s", sc.Text())
		}
		if e.Name != "ev" {
			continue
		}
		s := e.Type
		switch e.Type {
		case "migration":
			s += " " + e.From + "->" + e.To + " " + e.Phase
		case "container-moved":
			s += " " + e.From + "->" + e.To
		case "container-created", "container-removed":
			s += " " + e.Host
		}
		got = append(got, s)
	}
	// In this order, with container-status lines in between.
	want := []string{"container-created edge-1", "migration edge-1->edge-2 locked", "migration edge-1->edge-2 prepared",
		"migration edge-1->edge-2 committed", "container-moved edge-1->edge-2", "container-removed edge-2"}
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	if i != len(want) {
		t.Errorf("events of ev:\n%s\nwant in order: %q", strings.Join(got, "\n"), want)
	}
}

// coat logs -f prints what a container writes after it started following
// (the sample server logs each stream connection), also after the
// container migrated, and ends when the container is removed.
func TestLogsFollow(t *testing.T) {
	l := newLab(t, 2)
	c := l.runSample("lg", "edge-1")
	var out, errb syncBuffer
	stop := l.background(&out, &errb, "logs", "-f", "lg")
	waitOutput(t, "coat logs -f", out.String, "listening stream=", 15*time.Second)
	if strings.Contains(out.String(), "open conn=") {
		t.Fatalf("a connection before any was made:\n%s", out.String())
	}
	cmd, so := l.startStream(c.IP, time.Second)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stream: %v\n%s", err, so)
	}
	waitOutput(t, "coat logs -f", out.String, "open conn=1 ", 10*time.Second)

	// Across a migration: the next connection shows too, once, from
	// edge-2's agent.
	l.migrate("lg", "edge-2")
	cmd, so = l.startStream(c.IP, time.Second)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stream after migration: %v\n%s", err, so)
	}
	waitOutput(t, "coat logs -f after migration", out.String, "open conn=2 ", 15*time.Second)
	if n := strings.Count(out.String(), "listening stream="); n != 1 {
		t.Errorf("the output before following shows %d times, want once:\n%s", n, out.String())
	}

	l.must("rm", "lg")
	waitOutput(t, "coat logs -f", errb.String, "container lg was removed", 15*time.Second)
	if err := stop(); err != nil {
		t.Errorf("coat logs -f: %v\n%s", err, errb.String())
	}
}
