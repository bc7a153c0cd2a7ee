package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// labPids reads the pids lab up recorded.
func (l *testLab) labPids() map[string]int {
	l.t.Helper()
	var st struct {
		Pids  map[string]int
		Index int
	}
	b, err := os.ReadFile(filepath.Join("/var/lib/coat/labs", l.name, "lab.json"))
	if err != nil {
		l.t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		l.t.Fatal(err)
	}
	return st.Pids
}

func (l *testLab) labIndex() int {
	l.t.Helper()
	var st struct{ Index int }
	b, _ := os.ReadFile(filepath.Join("/var/lib/coat/labs", l.name, "lab.json"))
	_ = json.Unmarshal(b, &st)
	return st.Index
}

// waitFor retries f until it returns "" or the deadline passes.
func waitFor(t *testing.T, d time.Duration, f func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		msg := f()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, msg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (l *testLab) hostNames() []string {
	var hosts []struct{ Name string }
	out, err := l.coat("hosts", "--json")
	if err != nil {
		return nil
	}
	_ = json.Unmarshal([]byte(out), &hosts)
	var names []string
	for _, h := range hosts {
		names = append(names, h.Name)
	}
	return names
}

// The coordinating agent dies after CRIU stopped the container: once its
// lock expires, its restarted agent restores the container from its own
// checkpoint, state intact, and the client's connection survives.
func TestCoordinatorCrashRollsBack(t *testing.T) {
	t.Setenv("COAT_TEST_HOOKS", "1")
	l := newLab(t, 2)
	c := l.runSample("crash", "edge-1")
	if out, err := l.ctl(c.IP, "put", "k", "v1"); err != nil || out != "ok" {
		t.Fatalf("put: %v %s", err, out)
	}
	if _, err := l.ctl(c.IP, "incr"); err != nil {
		t.Fatal(err)
	}
	cmd, out := l.startStream(c.IP, 4*time.Second)
	time.Sleep(1500 * time.Millisecond)
	res, err := l.coat("migrate", "crash", "--to", "edge-2", "--crash-after", "checkpointed")
	if err == nil {
		t.Fatalf("migration whose coordinator died reported success:\n%s", res)
	}
	if got := l.get("crash"); got.Status != "migrating" {
		t.Fatalf("right after the crash: %+v, want migrating", got)
	}
	l.must("lab", "up", "--hosts", "2") // restarts the dead agent
	waitFor(t, 40*time.Second, func() string {
		got := l.get("crash")
		if got.Host != "edge-1" || got.Status != "running" || got.MigratingTo != "" {
			return fmt.Sprintf("container %+v, want running on edge-1", got)
		}
		return ""
	})
	if !strings.Contains(l.get("crash").Error, "rolled back") {
		t.Errorf("record does not say what happened: %+v", l.get("crash"))
	}
	if out, err := l.ctl(c.IP, "get", "k"); err != nil || out != "v1" {
		t.Fatalf("file after recovery: %v %q", err, out)
	}
	if out, err := l.ctl(c.IP, "incr"); err != nil || out != "2" {
		t.Fatalf("memory after recovery: %v %q, want 2", err, out)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client connection did not survive the recovery: %v\n%s", err, out)
	}
	if r := parseStream(t, out); r.Errors != 0 || r.Received != r.Sent {
		t.Fatalf("stream: %+v", r)
	}
	// And it migrates normally afterwards.
	l.migrate("crash", "edge-2")
}

// The coordinating agent dies after the destination restored the
// container: the destination commits the move, and the source's restarted
// agent removes what it had left.
func TestCoordinatorCrashAfterRestoreCommits(t *testing.T) {
	t.Setenv("COAT_TEST_HOOKS", "1")
	l := newLab(t, 2)
	c := l.runSample("late", "edge-1")
	if _, err := l.coat("migrate", "late", "--to", "edge-2", "--crash-after", "restored"); err == nil {
		t.Fatal("migration whose coordinator died reported success")
	}
	waitFor(t, 30*time.Second, func() string {
		got := l.get("late")
		if got.Host != "edge-2" || got.Status != "running" {
			return fmt.Sprintf("container %+v, want running on edge-2", got)
		}
		return ""
	})
	if out, err := l.ctl(c.IP, "ping"); err != nil || out != "pong" {
		t.Fatalf("after commit by the destination: %v %s", err, out)
	}
	l.must("lab", "up", "--hosts", "2")
	left := filepath.Join("/var/lib/coat/labs", l.name, "edge-1", "containers", "late")
	waitFor(t, 20*time.Second, func() string {
		if _, err := os.Stat(left); err == nil {
			return "source still holds " + left
		}
		return ""
	})
}

// A dead agent drops out of `coat hosts` within seconds; restarted, it
// resyncs its forwarding from etcd (a stale FDB entry goes) and serves.
func TestAgentDeathAndRestart(t *testing.T) {
	l := newLab(t, 2)
	c := l.runSample("svc", "edge-1")
	_ = syscall.Kill(l.labPids()["edge-2"], syscall.SIGKILL)
	waitFor(t, 15*time.Second, func() string {
		for _, h := range l.hostNames() {
			if h == "edge-2" {
				return "edge-2 still listed by coat hosts"
			}
		}
		return ""
	})
	ns := fmt.Sprintf("/run/netns/coat-%s-edge-2", l.name)
	stale := "02:c0:de:ad:be:ef"
	if out, err := exec.Command("nsenter", "--net="+ns, "bridge", "fdb", "replace", stale, "dev", "vxlan0",
		"dst", fmt.Sprintf("10.201.%d.99", l.labIndex()), "static").CombinedOutput(); err != nil {
		t.Fatalf("inject stale fdb entry: %v %s", err, out)
	}
	l.must("lab", "up", "--hosts", "2")
	waitFor(t, 15*time.Second, func() string {
		out, _ := exec.Command("nsenter", "--net="+ns, "bridge", "fdb", "show", "dev", "vxlan0").CombinedOutput()
		if strings.Contains(string(out), stale) {
			return "stale entry survived the restart:\n" + string(out)
		}
		if !strings.Contains(string(out), c.MAC) {
			return "restarted agent has no entry for " + c.MAC + ":\n" + string(out)
		}
		return ""
	})
	waitFor(t, 10*time.Second, func() string {
		for _, h := range l.hostNames() {
			if h == "edge-2" {
				return ""
			}
		}
		return "edge-2 not back in coat hosts"
	})
	l.migrate("svc", "edge-2")
	if out, err := l.ctl(c.IP, "ping"); err != nil || out != "pong" {
		t.Fatalf("after migrating to the restarted host: %v %s", err, out)
	}
}
