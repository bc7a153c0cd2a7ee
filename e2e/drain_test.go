package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// drainReport is `coat drain --json`'s shape.
type drainReport struct {
	Host  string
	Moved []struct {
		Name, To   string
		DowntimeMS float64 `json:"downtime_ms"`
	}
	Failed []struct{ Name, To, Error string }
}

// A drain of a host with five streaming containers moves all five to the
// two other hosts, balanced (3 and 2), keeping every stream intact; while
// it runs `coat hosts` shows the host draining and `coat ps` where the
// containers go; afterwards the host holds nothing and is no longer shown
// draining.
func TestDrainFiveStreams(t *testing.T) {
	l := newLab(t, 3)
	type svc struct{ c container }
	var svcs []svc
	for i := 1; i <= 5; i++ {
		svcs = append(svcs, svc{c: l.runSample(fmt.Sprintf("svc-%d", i), "edge-1")})
	}
	type stream struct {
		cmd *exec.Cmd
		out func() streamReport
	}
	var streams []stream
	for _, s := range svcs {
		cmd, out := l.startStream(s.c.IP, 25*time.Second)
		streams = append(streams, stream{cmd, func() streamReport { return parseStream(t, out) }})
	}
	time.Sleep(2 * time.Second)

	// The drain, in the background, while we look at ps and hosts.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	drain := exec.CommandContext(ctx, filepath.Join(binDir, "coat"), "drain", "edge-1", "--parallel", "2", "--json")
	drain.Env = append(os.Environ(), "COAT_LAB="+l.name)
	var dout, derr strings.Builder
	drain.Stdout, drain.Stderr = &dout, &derr
	if err := drain.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- drain.Wait() }()
	// Each view is polled on its own for the whole drain: taking turns,
	// three CLI runs a round, a fast drain could end between two looks
	// at the same view.
	stopPoll := make(chan struct{})
	var pollers sync.WaitGroup
	watch := func(saw *bool, args []string, seen func(out string) bool) {
		pollers.Add(1)
		go func() {
			defer pollers.Done()
			for {
				if out, err := l.coat(args...); err == nil && seen(out) {
					*saw = true
					return
				}
				select {
				case <-stopPoll:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
	}
	sawHost, sawPs, sawPsJSON := false, false, false
	watch(&sawHost, []string{"hosts"}, func(out string) bool {
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "edge-1 ") && strings.HasSuffix(strings.TrimSpace(line), "draining") {
				return true
			}
		}
		return false
	})
	watch(&sawPs, []string{"ps"}, func(out string) bool {
		return strings.Contains(out, "(draining -> edge-") || strings.Contains(out, "migrating -> edge-")
	})
	watch(&sawPsJSON, []string{"ps", "--json"}, func(out string) bool {
		return strings.Contains(out, `"draining_to": "edge-`)
	})
	derrRun := <-done
	close(stopPoll)
	pollers.Wait()
	if derrRun != nil {
		t.Fatalf("coat drain edge-1: %v\nstdout: %s\nstderr: %s", derrRun, dout.String(), derr.String())
	}
	var rep drainReport
	if err := json.Unmarshal([]byte(dout.String()), &rep); err != nil {
		t.Fatalf("drain --json: %v\n%s", err, dout.String())
	}
	if rep.Host != "edge-1" || len(rep.Moved) != 5 || len(rep.Failed) != 0 {
		t.Fatalf("drain report: %+v, want 5 moved off edge-1 and none failed", rep)
	}
	for _, m := range rep.Moved {
		t.Logf("moved %s to %s, downtime %.0f ms", m.Name, m.To, m.DowntimeMS)
	}
	if !sawHost || !sawPs || !sawPsJSON {
		t.Errorf("during the drain: coat hosts showed edge-1 draining: %v; coat ps showed where containers go: %v; coat ps --json: %v", sawHost, sawPs, sawPsJSON)
	}

	// Where everything is now: nothing on edge-1, 3 and 2 on the others,
	// same addresses.
	count := map[string]int{}
	for i, s := range svcs {
		got := l.get(s.c.Name)
		if got.Status != "running" || got.IP != s.c.IP || got.MAC != s.c.MAC || got.Host == "edge-1" {
			t.Errorf("after the drain %d: %+v, want running off edge-1 with ip %s", i, got, s.c.IP)
		}
		count[got.Host]++
	}
	if !(count["edge-2"] == 3 && count["edge-3"] == 2 || count["edge-2"] == 2 && count["edge-3"] == 3) {
		t.Errorf("placement %v, want 3 and 2 on edge-2 and edge-3", count)
	}
	if out := l.must("hosts"); strings.Contains(out, "draining") {
		t.Errorf("edge-1 still shown draining after the drain:\n%s", out)
	}

	// Every stream intact, on both ends.
	for i, st := range streams {
		if err := st.cmd.Wait(); err != nil {
			t.Fatalf("stream %d failed: %v", i, err)
		}
		r := st.out()
		if r.ConnectionError != "" || r.Errors != 0 || r.Sent == 0 || r.Received != r.Sent {
			t.Errorf("stream to %s: %+v", svcs[i].c.Name, r)
		}
		if s := l.stats(svcs[i].c.IP); s.Connections != 1 || s.Errors != 0 || s.Bytes != r.Sent {
			t.Errorf("server %s: %+v, want 1 connection, 0 errors, %d bytes", svcs[i].c.Name, s, r.Sent)
		}
		t.Logf("%s: %d bytes echoed intact, longest stall %.0f ms", svcs[i].c.Name, r.Received, r.MaxGapMS)
	}

	// A second drain of the now empty host has nothing to do.
	if out := l.must("drain", "edge-1"); !strings.Contains(out, "nothing to drain") {
		t.Errorf("drain of an empty host: %s", out)
	}
}

// Bad input changes nothing: draining the only host, an unknown host,
// --parallel 0.
func TestDrainBadInput(t *testing.T) {
	l := newLab(t, 1)
	l.runSample("only", "edge-1")
	psBefore, hostsBefore := l.must("ps", "--json"), l.must("hosts", "--json")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"drain", "edge-1"}, "only host"},
		{[]string{"drain", "edge-9"}, "unknown host"},
		{[]string{"drain", "edge-1", "--parallel", "0"}, "--parallel 0"},
		{[]string{"drain", "edge-1", "--json"}, "only host"},
	} {
		out, err := l.coat(tt.args...)
		var ee *exec.ExitError
		if err == nil || !errorsAs(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("coat %s: %v, want exit status 1\n%s", strings.Join(tt.args, " "), err, out)
		}
		if !strings.Contains(out, tt.want) {
			t.Errorf("coat %s: output does not say %q:\n%s", strings.Join(tt.args, " "), tt.want, out)
		}
		if ps := l.must("ps", "--json"); ps != psBefore {
			t.Errorf("coat %s changed the containers:\nbefore %s\nafter %s", strings.Join(tt.args, " "), psBefore, ps)
		}
		if hs := l.must("hosts", "--json"); hs != hostsBefore {
			t.Errorf("coat %s changed the hosts:\nbefore %s\nafter %s", strings.Join(tt.args, " "), hostsBefore, hs)
		}
	}
	if c := l.get("only"); c.Host != "edge-1" || c.Status != "running" {
		t.Fatalf("after the refused drains: %+v", c)
	}
}

// A migration that fails during a drain rolls that container back (it
// keeps running on the drained host, its stream intact) and the drain goes
// on with the others; the report says which failed and why, exit status 1.
func TestDrainFailureRollsBackAndGoesOn(t *testing.T) {
	t.Setenv("COAT_TEST_HOOKS", "1") // --fail-restore is a test hook
	l := newLab(t, 2)
	var ips []string
	for _, n := range []string{"a", "b", "c"} {
		ips = append(ips, l.runSample(n, "edge-1").IP)
	}
	cmd, out := l.startStream(ips[1], 8*time.Second)
	time.Sleep(1500 * time.Millisecond)
	res, err := l.coat("drain", "edge-1", "--fail-restore", "b")
	var ee *exec.ExitError
	if err == nil || !errorsAs(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("drain with a failing restore: %v, want exit status 1\n%s", err, res)
	}
	t.Logf("coat drain:\n%s", res)
	for _, want := range []string{"a ", "c ", "moved", "FAILED", "rolled back: running on edge-1", "2 moved, 1 failed", "did not move (b)"} {
		if !strings.Contains(res, want) {
			t.Errorf("drain output does not say %q:\n%s", want, res)
		}
	}
	for _, n := range []string{"a", "c"} {
		if c := l.get(n); c.Host != "edge-2" || c.Status != "running" {
			t.Errorf("%s after the drain: %+v, want running on edge-2", n, c)
		}
	}
	if c := l.get("b"); c.Host != "edge-1" || c.Status != "running" || c.MigratingTo != "" {
		t.Errorf("b after its failed migration: %+v, want running on edge-1", c)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stream to b broken: %v\n%s", err, out)
	}
	if r := parseStream(t, out); r.Errors != 0 || r.Received != r.Sent || r.ConnectionError != "" {
		t.Fatalf("stream to b after the rollback: %+v", r)
	}
	if hs := l.must("hosts"); strings.Contains(hs, "draining") {
		t.Errorf("edge-1 still shown draining:\n%s", hs)
	}
	// Draining again moves b.
	if res := l.must("drain", "edge-1", "--json"); !strings.Contains(res, `"failed":[]`) || !strings.Contains(res, `"name":"b"`) {
		t.Errorf("second drain: %s", res)
	}
}

// A lab on a /16 overlay (coat lab up --overlay-cidr, recorded in etcd as
// `coat init --overlay-cidr` does): containers get addresses across the
// /16, MACs that embed them, the client reaches them over the /16, and a
// drain moves them with their streams intact.
func TestDrainOn16Overlay(t *testing.T) {
	l := newLabWith(t, "--hosts", "2", "--overlay-cidr", "10.96.0.0/16")
	a := l.runSample("low", "edge-1")
	l.must("run", "--host", "edge-1", "--name", "high", "--ip", "10.96.200.7", "--image", "sample", "--", "/bin/coat-sample", "server")
	b := l.get("high")
	l.waitCtl(b.IP)
	if a.IP != "10.96.0.10" || b.MAC != "02:c0:0a:60:c8:07" {
		t.Fatalf("addresses: low %s, high %s %s; want 10.96.0.10 and 02:c0:0a:60:c8:07", a.IP, b.IP, b.MAC)
	}
	if out, err := l.coat("run", "--host", "edge-1", "--name", "outside", "--ip", "10.97.0.20", "--image", "sample", "--", "/bin/coat-sample", "server"); err == nil || !strings.Contains(out, "outside the overlay subnet 10.96.0.0/16") {
		t.Errorf("run with an address outside the /16: %v\n%s", err, out)
	}
	ca, outA := l.startStream(a.IP, 8*time.Second)
	cb, outB := l.startStream(b.IP, 8*time.Second)
	time.Sleep(1500 * time.Millisecond)
	res := l.must("drain", "edge-1", "--parallel", "2")
	t.Logf("coat drain:\n%s", res)
	for _, c := range []container{a, b} {
		if got := l.get(c.Name); got.Host != "edge-2" || got.Status != "running" || got.IP != c.IP || got.MAC != c.MAC {
			t.Errorf("%s after the drain: %+v", c.Name, got)
		}
	}
	for i, st := range []struct {
		cmd *exec.Cmd
		out func() streamReport
	}{{ca, func() streamReport { return parseStream(t, outA) }}, {cb, func() streamReport { return parseStream(t, outB) }}} {
		if err := st.cmd.Wait(); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if r := st.out(); r.ConnectionError != "" || r.Errors != 0 || r.Sent == 0 || r.Received != r.Sent {
			t.Errorf("stream %d: %+v", i, r)
		}
	}
}

// Ctrl-C during a drain: the drain stops starting migrations, the one
// under way ends on its own (moved or rolled back), the drain's record is
// gone at once (not after its lease), the exit status is non-zero.
func TestDrainInterrupted(t *testing.T) {
	l := newLab(t, 2)
	for _, n := range []string{"i1", "i2", "i3"} {
		l.runSample(n, "edge-1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	drain := exec.CommandContext(ctx, filepath.Join(binDir, "coat"), "drain", "edge-1")
	drain.Env = append(os.Environ(), "COAT_LAB="+l.name)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	drain.Stdout, drain.Stderr = pw, pw
	if err := drain.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var out strings.Builder
	buf := make([]byte, 4096)
	for !strings.Contains(out.String(), "started") {
		n, err := pr.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			t.Fatalf("drain ended before starting a migration: %v\n%s", err, out.String())
		}
	}
	if err := drain.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for {
		n, err := pr.Read(buf)
		out.Write(buf[:n])
		if err != nil {
			break
		}
	}
	err = drain.Wait()
	t.Logf("coat drain, interrupted:\n%s", out.String())
	var ee *exec.ExitError
	if err == nil || !errorsAs(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("interrupted drain: %v, want exit status 1", err)
	}
	if !strings.Contains(out.String(), "not started: the drain was interrupted") || !strings.Contains(out.String(), "drain of edge-1 interrupted") {
		t.Errorf("the containers not started are not reported:\n%s", out.String())
	}
	if hs := l.must("hosts"); strings.Contains(hs, "draining") {
		t.Errorf("edge-1 still shown draining right after the interrupted drain:\n%s", hs)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		settled := true
		for _, c := range l.ps() {
			if c.Status != "running" {
				settled = false
			}
		}
		if settled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("containers not settled 60s after the interrupted drain: %+v", l.ps())
		}
		time.Sleep(500 * time.Millisecond)
	}
	if cs := l.ps(); len(cs) != 3 {
		t.Fatalf("after the interrupted drain: %+v", cs)
	}
	// And a drain run again finishes the job.
	l.must("drain", "edge-1")
	for _, c := range l.ps() {
		if c.Host != "edge-2" || c.Status != "running" {
			t.Errorf("after the second drain: %+v", c)
		}
	}
}
