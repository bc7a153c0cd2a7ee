package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Faults mid-migration: whatever fails, and wherever, the migration ends
// committed or rolled back, the container runs on exactly one host (the
// one its record names) with its state, its client's stream is intact,
// and neither host keeps anything of the other outcome.

// hostDir is a lab host's agent state directory.
func (l *testLab) hostDir(host string) string {
	return filepath.Join("/var/lib/coat/labs", l.name, host)
}

// invariants checks the end state of a migration of name: its record says
// running on want, runc runs it there and nowhere else, and the other
// hosts hold no namespace, incoming image or checkpoint of it.
func (l *testLab) invariants(name, want string, hosts ...string) string {
	got := l.get(name)
	if got.Host != want || got.Status != "running" || got.MigratingTo != "" {
		return fmt.Sprintf("record %+v, want running on %s", got, want)
	}
	for _, h := range hosts {
		st := l.runcStatus(h, name)
		if h == want && st != "running" {
			return fmt.Sprintf("runc on %s says %q, want running", h, st)
		}
		if h == want {
			continue
		}
		if st != "" {
			return fmt.Sprintf("a second copy: runc on %s says %q", h, st)
		}
		for _, p := range []string{
			filepath.Join(l.hostDir(h), "netns", name),
			filepath.Join(l.hostDir(h), "incoming", name),
			filepath.Join(l.hostDir(h), "containers", name),
		} {
			if _, err := os.Stat(p); err == nil {
				return fmt.Sprintf("%s left on %s", p, h)
			}
		}
	}
	// No host keeps a checkpoint image once the migration has ended, the
	// one the container runs on included.
	for _, h := range hosts {
		if m, _ := filepath.Glob(filepath.Join(l.hostDir(h), "checkpoints", name+"-*")); len(m) > 0 {
			return fmt.Sprintf("checkpoint images left on %s: %v", h, m)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(l.hostDir(want), "incoming", name)); len(m) > 0 {
		return fmt.Sprintf("incoming image left on %s: %v", want, m)
	}
	return ""
}

// One lab, one container, a fault at every point of the migration: the
// coordinator (source agent) killed after each phase, the destination's
// restore failing, its agent killed between its restore and the commit,
// and its answer to the restore lost. After each, the container's memory
// counter has gone on from where it was, its client's stream arrived
// whole, and exactly one copy runs.
func TestFaultMatrix(t *testing.T) {
	t.Setenv("COAT_TEST_HOOKS", "1")
	l := newLab(t, 2)
	c := l.runSample("fm", "edge-1")
	hosts := []string{"edge-1", "edge-2"}
	count := 0
	incr := func() {
		t.Helper()
		out, err := l.ctl(c.IP, "incr")
		count++
		if err != nil || out != fmt.Sprint(count) {
			t.Fatalf("memory: incr = %q (%v), want %d", out, err, count)
		}
	}
	incr()
	other := map[string]string{"edge-1": "edge-2", "edge-2": "edge-1"}
	for _, tc := range []struct {
		fault  string
		args   []string
		ok     bool // the migrate command succeeds
		commit bool // the container ends on the destination
		// restart: the dead agent is restarted by `lab up`.
		restart bool
	}{
		{"source killed after prepare", []string{"--crash-after", "prepared"}, false, false, true},
		{"source killed during dump", []string{"--crash-after", "frozen"}, false, false, true},
		{"source killed after dump", []string{"--crash-after", "checkpointed"}, false, false, true},
		{"source killed after transfer", []string{"--crash-after", "transferred"}, false, false, true},
		{"source killed after restore", []string{"--crash-after", "restored"}, false, true, true},
		{"destination restore fails", []string{"--fail-restore"}, false, false, false},
		{"destination killed before commit", []string{"--dest-crash-before-commit"}, false, false, true},
		{"restore reply lost", []string{"--lose-restore-reply", "--json"}, true, true, false},
	} {
		from := l.get("fm").Host
		to := other[from]
		t.Logf("--- %s: %s -> %s", tc.fault, from, to)
		stream, sout := l.startStream(c.IP, 3*time.Second)
		time.Sleep(time.Second)
		out, err := l.coat(append([]string{"migrate", "fm", "--to", to}, tc.args...)...)
		for i := 0; err != nil && strings.Contains(out, "busy") && i < 30; i++ {
			// The previous fault's lock has not expired yet (its
			// coordinator died holding it): refused, nothing changed.
			time.Sleep(500 * time.Millisecond)
			out, err = l.coat(append([]string{"migrate", "fm", "--to", to}, tc.args...)...)
		}
		if (err == nil) != tc.ok {
			t.Fatalf("%s: migrate err = %v, want success %v\n%s", tc.fault, err, tc.ok, out)
		}
		if tc.ok && strings.Contains(strings.Join(tc.args, " "), "--lose-restore-reply") {
			var r struct {
				ReplyLost bool `json:"reply_lost"`
			}
			if jerr := json.Unmarshal([]byte(out), &r); jerr != nil || !r.ReplyLost {
				t.Errorf("%s: result %s: want reply_lost true", tc.fault, out)
			}
		}
		if tc.restart {
			l.must("lab", "up", "--hosts", "2")
		}
		want := from
		if tc.commit {
			want = to
		}
		waitFor(t, 45*time.Second, func() string { return l.invariants("fm", want, hosts...) })
		if err := stream.Wait(); err != nil {
			t.Fatalf("%s: client stream: %v\n%s", tc.fault, err, sout)
		}
		if r := parseStream(t, sout); r.Errors != 0 || r.Received != r.Sent {
			t.Fatalf("%s: stream %+v", tc.fault, r)
		}
		incr()
		if rec := l.get("fm"); !tc.ok && rec.Error == "" && !tc.commit {
			t.Errorf("%s: the record does not say what happened: %+v", tc.fault, rec)
		}
	}
	// Nothing is left locked or half-done: a plain migration works.
	l.migrate("fm", other[l.get("fm").Host])
	incr()
}

// migrateWatch starts `coat migrate` and calls at(phase) for each phase
// line it prints; it returns the command's output and error when it ends.
func (l *testLab) migrateWatch(name, to string, at func(phase string), args ...string) (string, error) {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "coat"), append([]string{"--lab", l.name, "migrate", name, "--to", to}, args...)...)
	pr, pw, err := os.Pipe()
	if err != nil {
		l.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	pw.Close()
	var all strings.Builder
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		line := sc.Text()
		all.WriteString(line + "\n")
		if f := strings.Fields(line); len(f) > 0 {
			at(f[0])
		}
	}
	return all.String(), cmd.Wait()
}

// A 96 MiB redis moving over a 50 Mbit/s link (about 15 s of transfer):
// a freeze budget too small for it rolls it back; a partition of the
// destination mid-transfer rolls it back within the stall bound, with
// the clients' connection alive and every value intact; once the
// partition heals, the destination holds nothing of it, and a migration
// then succeeds.
func TestPartitionAndBudgetRollBack(t *testing.T) {
	l := newLabWith(t, "--hosts", "2", "--link", "edge-2=rate=50mbit")
	state := filepath.Join(t.TempDir(), "keys")
	c := l.runRedis("pt", "edge-1")
	fill := []string{"--fill", "96MiB"}
	if _, err := l.redisLoad(c.IP, state, append(fill, "--fill-only")...); err != nil {
		t.Fatal(err)
	}
	checkAll := func(what string) {
		t.Helper()
		r, err := l.redisLoad(c.IP, state, append(fill, "--no-fill", "--check-all")...)
		if err != nil || r.Errors != 0 || r.Requests < 1000 {
			t.Fatalf("%s: every value back: %v %+v", what, err, r)
		}
	}
	hosts := []string{"edge-1", "edge-2"}

	// 1. The freeze budget.
	t0 := time.Now()
	out, err := l.coat("migrate", "pt", "--to", "edge-2", "--strategy", "stop-and-copy", "--freeze-budget", "2s")
	if err == nil || !strings.Contains(out, "--freeze-budget") || !strings.Contains(out, "rolled back") {
		t.Fatalf("migration over its freeze budget: err %v\n%s", err, out)
	}
	t.Logf("freeze budget 2s: rolled back after %v", time.Since(t0).Round(time.Millisecond))
	waitFor(t, 30*time.Second, func() string { return l.invariants("pt", "edge-1", hosts...) })
	checkAll("after the freeze budget ran out")

	// 2. A partition mid-transfer, with a client on the container.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	load := l.client(ctx, filepath.Join(binDir, "coat-sample"), "redis-load", "--addr", c.IP+":6379",
		"--fill", "96MiB", "--no-fill", "--state", state, "--duration", "30s", "--rate", "20", "--json")
	var loadOut strings.Builder
	load.Stdout = &loadOut
	if err := load.Start(); err != nil {
		t.Fatal(err)
	}
	var cut time.Time
	out, err = l.migrateWatch("pt", "edge-2", func(phase string) {
		if phase == "checkpointed" && cut.IsZero() {
			l.must("lab", "partition", "edge-2")
			cut = time.Now()
		}
	}, "--strategy", "stop-and-copy")
	ended := time.Now()
	t.Cleanup(func() { _, _ = l.coat("lab", "heal") })
	if cut.IsZero() {
		t.Fatalf("never saw the checkpointed phase:\n%s", out)
	}
	if err == nil || !strings.Contains(out, "rolled back") {
		t.Fatalf("migration to a partitioned host: err %v\n%s", err, out)
	}
	t.Logf("partition mid-transfer: migrate ended %v after the cut:\n%s", ended.Sub(cut).Round(time.Millisecond), out)
	// Bound: the stall timeout (10 s), the source's own restore, and the
	// attempt to tell the destination (at most 10 s).
	if d := ended.Sub(cut); d > 40*time.Second {
		t.Errorf("rollback took %v after the partition", d)
	}
	if got := l.get("pt"); got.Host != "edge-1" || got.Status != "running" {
		t.Fatalf("after the partition: %+v, want running on edge-1", got)
	}
	if st := l.runcStatus("edge-1", "pt"); st != "running" {
		t.Fatalf("runc on edge-1: %q", st)
	}
	if err := load.Wait(); err != nil {
		t.Fatalf("client across the partition: %v\n%s", err, loadOut.String())
	}
	var lr loadReport
	if err := json.Unmarshal([]byte(loadOut.String()), &lr); err != nil || !lr.ok() || lr.Requests == 0 {
		t.Fatalf("client across the partition: %v %+v", err, lr)
	}
	checkAll("after the partition")

	// 3. The partition heals: the destination discards its half.
	l.must("lab", "heal", "edge-2")
	waitFor(t, 60*time.Second, func() string { return l.invariants("pt", "edge-1", hosts...) })
	waitFor(t, 30*time.Second, func() string {
		for _, h := range l.hostNames() {
			if h == "edge-2" {
				return ""
			}
		}
		return "edge-2 not back in coat hosts after the heal"
	})
	r := l.migrateStrategy("pt", "edge-2", "--strategy", "stop-and-copy")
	if r.To != "edge-2" {
		t.Fatalf("migration after the heal: %+v", r)
	}
	waitFor(t, 30*time.Second, func() string { return l.invariants("pt", "edge-2", hosts...) })
	checkAll("after the migration that followed")
}

// coat chaos on a lab of its own: migrations under random faults (agents
// killed, hosts partitioned, etcd killed), then no violation of the
// invariants. (`make chaos` runs 200 migrations.)
func TestChaos(t *testing.T) {
	l := newLab(t, 3)
	// Within chaos's own bounds (its migrations, then up to two minutes
	// for the cluster to settle, then its checks), so that a slow settle
	// ends in chaos's report, not in a kill that says nothing.
	out, err := l.coatWithin(5*time.Minute, "chaos", "--migrations", "60", "--seed", "11", "--json")
	var rep struct {
		Migrations int            `json:"migrations"`
		Faults     map[string]int `json:"faults"`
		Violations []string       `json:"violations"`
	}
	if jerr := json.Unmarshal([]byte(out[strings.LastIndex(out, "\n{")+1:]), &rep); jerr != nil {
		t.Fatalf("chaos: %v (%v)\n%s", err, jerr, out)
	}
	t.Logf("chaos: %d migrations, faults %v", rep.Migrations, rep.Faults)
	if err != nil || len(rep.Violations) > 0 {
		t.Fatalf("chaos: %v: violations %v\n%s", err, rep.Violations, out)
	}
	total := 0
	for _, n := range rep.Faults {
		total += n
	}
	if rep.Migrations < 60 || total == 0 {
		t.Fatalf("chaos ran %d migrations with %d faults: want at least 60 with faults", rep.Migrations, total)
	}
}

// The rest of the fault matrix: etcd (the whole control plane of a
// one-member lab) killed in the middle of a migration, and a destination
// whose image space is full.
func TestFaultsEtcdAndDiskFull(t *testing.T) {
	l := newLab(t, 2)
	hosts := []string{"edge-1", "edge-2"}

	// 1. etcd dies as the freeze begins and comes back 3 s later: the
	// commit point cannot be reached meanwhile; then the migration ends
	// one way or the other, with the container on exactly one host, its
	// memory intact.
	c := l.runSample("ek", "edge-1")
	if out, err := l.ctl(c.IP, "incr"); err != nil || out != "1" {
		t.Fatalf("incr: %v %q", err, out)
	}
	restarted := make(chan struct{})
	out, err := l.migrateWatch("ek", "edge-2", func(phase string) {
		if phase != "prepared" {
			return
		}
		if err := syscall.Kill(l.labPids()["etcd"], syscall.SIGKILL); err != nil {
			t.Errorf("kill etcd: %v", err)
		}
		go func() {
			defer close(restarted)
			time.Sleep(3 * time.Second)
			_, _ = l.coat("lab", "up", "--hosts", "2")
		}()
	})
	<-restarted
	t.Logf("etcd killed before the freeze: migrate err %v\n%s", err, out)
	var end string
	waitFor(t, 60*time.Second, func() string {
		got := l.get("ek")
		if got.Status != "running" {
			return fmt.Sprintf("record %+v", got)
		}
		end = got.Host
		return l.invariants("ek", got.Host, hosts...)
	})
	if (err == nil) != (end == "edge-2") {
		t.Errorf("migrate said err=%v but the container ended on %s", err, end)
	}
	if out, err := l.ctl(c.IP, "incr"); err != nil || out != "2" {
		t.Fatalf("memory after etcd's death: incr = %q (%v), want 2", out, err)
	}

	// 2. The destination's image space is full: the transfer fails, the
	// container runs on at the source with every value, and the
	// destination keeps nothing.
	state := filepath.Join(t.TempDir(), "keys")
	r := l.runRedis("df", "edge-1")
	fill := []string{"--fill", "64MiB"}
	if _, err := l.redisLoad(r.IP, state, append(fill, "--fill-only")...); err != nil {
		t.Fatal(err)
	}
	incoming := filepath.Join(l.hostDir("edge-2"), "incoming")
	if err := unix.Mount("tmpfs", incoming, "tmpfs", 0, "size=16m,mode=0700"); err != nil {
		t.Fatalf("a small tmpfs on edge-2's incoming images: %v", err)
	}
	unmounted := false
	unmount := func() {
		if !unmounted {
			unmounted = true
			_ = unix.Unmount(incoming, unix.MNT_DETACH)
		}
	}
	t.Cleanup(unmount)
	out, err = l.coat("migrate", "df", "--to", "edge-2", "--strategy", "stop-and-copy")
	if err == nil || !strings.Contains(out, "no space left") || !strings.Contains(out, "rolled back") {
		t.Fatalf("migration to a full destination: err %v\n%s", err, out)
	}
	waitFor(t, 30*time.Second, func() string { return l.invariants("df", "edge-1", hosts...) })
	if r, err := l.redisLoad(r.IP, state, append(fill, "--no-fill", "--check-all")...); err != nil || r.Errors != 0 {
		t.Fatalf("values after the failed migration: %v %+v", err, r)
	}
	if m, _ := filepath.Glob(filepath.Join(incoming, "*")); len(m) > 0 {
		t.Errorf("the full destination kept %v", m)
	}
	unmount()
	l.migrateStrategy("df", "edge-2", "--strategy", "stop-and-copy")
	waitFor(t, 30*time.Second, func() string { return l.invariants("df", "edge-2", hosts...) })
}
