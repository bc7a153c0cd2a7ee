package e2e

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// A group of three containers that talk to each other (two clients
// streaming to a server, all on edge-1) moves to edge-2 as one: every
// byte of every stream arrives, all three end on edge-2, and a client
// outside streams on too. A group across hosts, or post-copy, is refused with nothing
// changed.
func TestGroupMove(t *testing.T) {
	l := newLab(t, 2)
	srv := l.runSample("gb", "edge-1")
	for _, n := range []string{"ga", "gc"} {
		l.must("run", "--host", "edge-1", "--name", n, "--image", "sample", "--",
			"/bin/coat-sample", "stream", "--addr", srv.IP+":7000", "--duration", "12s", "--rate", "2MB/s", "--json")
	}
	l.runSample("gx", "edge-2")
	outside, outsideOut := l.startStream(srv.IP, 10*time.Second)
	time.Sleep(3 * time.Second)

	before := l.must("ps", "--json")
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"migrate", "ga", "gx", "--to", "edge-2"}, "one host"},
		{[]string{"migrate", "ga", "gb", "--to", "edge-2", "--strategy", "post-copy"}, "stop-and-copy"},
		{[]string{"migrate", "ga", "ga", "--to", "edge-2"}, "twice"},
	} {
		out, err := l.coat(bad.args...)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("coat %v: err %v, want a refusal saying %q:\n%s", bad.args, err, bad.want, out)
		}
	}
	if after := l.must("ps", "--json"); after != before {
		t.Fatalf("a refused group move changed something:\n%s\n%s", before, after)
	}

	out := l.must("migrate", "ga", "gb", "gc", "--to", "edge-2", "--json")
	var res struct {
		Group []migrateResult `json:"group"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Group) != 3 {
		t.Fatalf("group result: %v\n%s", err, out)
	}
	worst := 0.0
	for _, r := range res.Group {
		t.Logf("%s: downtime %.0f ms", r.Name, r.DowntimeMS)
		worst = max(worst, r.DowntimeMS)
	}
	for _, n := range []string{"ga", "gb", "gc"} {
		if c := l.get(n); c.Host != "edge-2" || c.Status != "running" {
			t.Fatalf("%s after the group move: %+v", n, c)
		}
	}
	for _, n := range []string{"ga", "gc"} {
		var rep streamReport
		waitFor(t, 60*time.Second, func() string {
			out, _ := l.coat("logs", n)
			if !strings.Contains(out, "max_gap_ms") {
				return n + " has not reported yet"
			}
			rep = parseStream(t, bytes.NewBufferString(out))
			return ""
		})
		t.Logf("%s's stream to gb: %+v", n, rep)
		if rep.ConnectionError != "" || rep.Errors != 0 || rep.Received != rep.Sent || rep.Sent == 0 {
			t.Fatalf("%s's stream across the group move: %+v", n, rep)
		}
		// The gap is reported, not bounded: within a group a stream
		// has been seen to wait out one retransmission (1.3 s for 0.46 s
		// of downtime), which is not understood yet.
		t.Logf("%s's longest gap %.0f ms; the group's worst downtime %.0f ms", n, rep.MaxGapMS, worst)
	}
	if err := outside.Wait(); err != nil {
		t.Fatalf("outside client: %v\n%s", err, outsideOut)
	}
	if r := parseStream(t, outsideOut); r.Errors != 0 || r.Received != r.Sent {
		t.Fatalf("outside client's stream: %+v", r)
	}
}
