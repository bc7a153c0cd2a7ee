package e2e

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// East-west: a client container on edge-1 streams to a server container
// on edge-2; the server moves to edge-3, then the client moves to edge-2.
// Every byte arrives, and since every host's forwarding follows the
// container at its freeze (not at the commit), the stream's longest gap
// stays near the downtime instead of falling into TCP's back-off (seen
// before: 1.0 s of stall for 0.24 s of downtime; then, 1 run in 5 under
// load, 0.9 s for 0.3 s: the frames lost to the source's bridge once the
// destination's gratuitous ARP had moved the MAC, see overlay.pinMAC).
func TestEastWest(t *testing.T) {
	l := newLab(t, 3)
	srv := l.runSample("ews", "edge-2")
	l.must("run", "--host", "edge-1", "--name", "ewc", "--image", "sample", "--",
		"/bin/coat-sample", "stream", "--addr", srv.IP+":7000", "--duration", "14s", "--rate", "2MB/s", "--json")
	time.Sleep(3 * time.Second)
	r1 := l.migrate("ews", "edge-3")
	time.Sleep(2 * time.Second)
	r2 := l.migrate("ewc", "edge-2")
	var report streamReport
	waitFor(t, 60*time.Second, func() string {
		out, _ := l.coat("logs", "ewc")
		if !strings.Contains(out, "max_gap_ms") {
			return "the client container has not reported yet:\n" + out
		}
		var b bytes.Buffer
		b.WriteString(out)
		report = parseStream(t, &b)
		return ""
	})
	t.Logf("east-west stream: %+v; server downtime %.0f ms, client downtime %.0f ms", report, r1.DowntimeMS, r2.DowntimeMS)
	if report.ConnectionError != "" || report.Errors != 0 || report.Received != report.Sent || report.Sent == 0 {
		t.Fatalf("east-west stream across two migrations: %+v", report)
	}
	// A bound, not a benchmark: TCP's back-off (the first retransmission
	// 200 ms+ after a loss, then doubling) is what this rules out. The
	// issue's target is the downtime + 50 ms; measured here under the load
	// of a parallel e2e test, six runs: gap - downtime = -11..+1 ms.
	if limit := max(r1.DowntimeMS, r2.DowntimeMS) + 150; report.MaxGapMS > limit {
		t.Errorf("longest gap %.0f ms (at %.1f s), over the worst downtime + 150 ms (%.0f ms): frames were lost around a freeze", report.MaxGapMS, report.GapAt, limit)
	}
}
