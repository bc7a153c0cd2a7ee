package e2e

import (
	"crypto/rand"
	"encoding/hex"
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

// newLabWith brings up a uniquely named lab with any `lab up` arguments
// (e.g. --hosts 3 --etcd-members 3) and registers its teardown, which also
// runs when the test fails or panics.
func newLabWith(t *testing.T, args ...string) *testLab {
	return newLabBin(t, "", args...)
}

// newLabBin is newLabWith on the coat binary at bin ("" is bin/coat).
func newLabBin(t *testing.T, bin string, args ...string) *testLab {
	requireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	l := &testLab{t: t, name: "t" + hex.EncodeToString(b), bin: bin}
	t.Cleanup(func() {
		if t.Failed() {
			l.dumpLogs()
		}
		if out, err := l.coat("lab", "down"); err != nil {
			t.Errorf("lab down: %v\n%s", err, out)
		}
	})
	if out, err := l.coat(append([]string{"lab", "up"}, args...)...); err != nil {
		t.Fatalf("lab up %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return l
}

// etcdLabState is the part of lab.json these tests read.
type etcdLabState struct {
	Pids        map[string]int
	EtcdURL     string `json:"etcd_url"`
	EtcdMembers int    `json:"etcd_members"`
}

func (l *testLab) etcdState() etcdLabState {
	l.t.Helper()
	var st etcdLabState
	b, err := os.ReadFile(filepath.Join("/var/lib/coat/labs", l.name, "lab.json"))
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil {
		l.t.Fatalf("lab state: %v", err)
	}
	return st
}

func etcdAlive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

// eventually retries f until it succeeds or limit passes, then fails the
// test with f's last error.
func etcdEventually(t *testing.T, limit time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, limit, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// psNow is `coat ps --json` that returns an error instead of failing.
func (l *testLab) etcdPs() (map[string]container, error) {
	out, err := l.coat("ps", "--json")
	if err != nil {
		return nil, fmt.Errorf("coat ps: %v: %s", err, strings.TrimSpace(out))
	}
	var cs []container
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		return nil, fmt.Errorf("ps --json: %v: %s", err, out)
	}
	m := map[string]container{}
	for _, c := range cs {
		m[c.Name] = c
	}
	return m, nil
}

// hostsNow lists the registered hosts' names.
func (l *testLab) etcdHosts() ([]string, error) {
	out, err := l.coat("hosts", "--json")
	if err != nil {
		return nil, fmt.Errorf("coat hosts: %v: %s", err, strings.TrimSpace(out))
	}
	var hs []struct{ Name string }
	if err := json.Unmarshal([]byte(out), &hs); err != nil {
		return nil, fmt.Errorf("hosts --json: %v: %s", err, out)
	}
	var names []string
	for _, h := range hs {
		names = append(names, h.Name)
	}
	return names, nil
}

func etcdHasAll(list []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, x := range list {
			found = found || x == w
		}
		if !found {
			return false
		}
	}
	return true
}

// A lab with a 3-member etcd cluster (one member in each of edge-1..3)
// loses member 1 to SIGKILL: the cluster state is all there, a container
// migrates and keeps answering, a new container gets a fresh IP, the
// hosts stay registered; a second `lab up` brings the member back.
func TestEtcdMemberLossLosesNothing(t *testing.T) {
	l := newLabWith(t, "--hosts", "3", "--etcd-members", "3")
	st := l.etcdState()
	if st.EtcdMembers != 3 {
		t.Fatalf("lab.json etcd_members = %d, want 3", st.EtcdMembers)
	}
	if eps := strings.Split(st.EtcdURL, ","); len(eps) != 3 {
		t.Fatalf("lab.json etcd_url = %q, want 3 client URLs", st.EtcdURL)
	}
	if _, ok := st.Pids["etcd"]; ok {
		t.Fatalf("a root-namespace etcd runs next to the 3 members: pids %v", st.Pids)
	}
	for i := 1; i <= 3; i++ {
		if pid := st.Pids[fmt.Sprintf("etcd-%d", i)]; !etcdAlive(pid) {
			t.Fatalf("etcd-%d (pid %d) does not run: pids %v", i, pid, st.Pids)
		}
	}

	a := l.runSample("ea", "edge-1")
	b := l.runSample("eb", "edge-2")
	if out, err := l.ctl(b.IP, "put", "k", "v-before-loss"); err != nil || out != "ok" {
		t.Fatalf("put: %v %s", err, out)
	}
	before, err := l.etcdPs()
	if err != nil {
		t.Fatal(err)
	}

	// Kill member 1 (in edge-1's namespace) with no chance to hand over.
	pid := st.Pids["etcd-1"]
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill etcd-1 (pid %d): %v", pid, err)
	}
	etcdEventually(t, 10*time.Second, "etcd-1 to die", func() error {
		if etcdAlive(pid) {
			return fmt.Errorf("pid %d alive", pid)
		}
		return nil
	})
	t.Logf("killed etcd-1 (pid %d)", pid)

	// The records are all there, unchanged (once a leader is elected).
	etcdEventually(t, 15*time.Second, "ps after losing etcd-1", func() error {
		now, err := l.etcdPs()
		if err != nil {
			return err
		}
		for _, c := range []container{a, b} {
			got, ok := now[c.Name]
			if !ok {
				return fmt.Errorf("%s missing from ps: %+v", c.Name, now)
			}
			want := before[c.Name]
			if got.Host != want.Host || got.IP != want.IP || got.MAC != want.MAC || got.Status != want.Status {
				return fmt.Errorf("%s is %+v, was %+v", c.Name, got, want)
			}
		}
		return nil
	})
	// The agents whose hosts take part keep their registration.
	etcdEventually(t, 15*time.Second, "hosts after losing etcd-1", func() error {
		hs, err := l.etcdHosts()
		if err != nil {
			return err
		}
		if !etcdHasAll(hs, "edge-2", "edge-3") {
			return fmt.Errorf("hosts %v, want edge-2 and edge-3", hs)
		}
		return nil
	})

	// A migration edge-2 -> edge-3 works; the service answers from edge-3
	// with its state.
	r := l.migrate("eb", "edge-3")
	if r.From != "edge-2" || r.To != "edge-3" {
		t.Fatalf("migrate: %+v", r)
	}
	if got := l.get("eb"); got.Host != "edge-3" || got.Status != "running" || got.IP != b.IP || got.MAC != b.MAC {
		t.Fatalf("after migration: %+v, want running on edge-3 with ip %s mac %s", got, b.IP, b.MAC)
	}
	l.waitCtl(b.IP)
	if out, err := l.ctl(b.IP, "ping"); err != nil || out != "pong" {
		t.Fatalf("ping after migration: %v %s", err, out)
	}
	if out, err := l.ctl(b.IP, "get", "k"); err != nil || out != "v-before-loss" {
		t.Fatalf("get after migration: %v %q", err, out)
	}
	if out, err := l.ctl(a.IP, "ping"); err != nil || out != "pong" {
		t.Fatalf("ping %s on edge-1: %v %s", a.Name, err, out)
	}

	// A new container gets an IP no other has: the allocations survived.
	c := l.runSample("ec", "edge-3")
	if c.IP == "" || c.IP == a.IP || c.IP == b.IP {
		t.Fatalf("new container ip %q, others %s and %s", c.IP, a.IP, b.IP)
	}
	now, err := l.etcdPs()
	if err != nil {
		t.Fatal(err)
	}
	if len(now) != 3 || now["ea"].Host != "edge-1" || now["eb"].Host != "edge-3" || now["ec"].Host != "edge-3" {
		t.Fatalf("ps after all: %+v", now)
	}
	hs, err := l.etcdHosts()
	if err != nil || !etcdHasAll(hs, "edge-2", "edge-3") {
		t.Fatalf("hosts after all: %v %v", hs, err)
	}
	t.Logf("hosts with etcd-1 down: %v", hs)

	// A second lab up, without --etcd-members, keeps 3 members and
	// restarts the lost one, which rejoins.
	l.must("lab", "up", "--hosts", "3")
	st2 := l.etcdState()
	if st2.EtcdMembers != 3 || st2.EtcdURL != st.EtcdURL {
		t.Fatalf("after second lab up: etcd_members %d, etcd_url %q; want 3, %q", st2.EtcdMembers, st2.EtcdURL, st.EtcdURL)
	}
	if p := st2.Pids["etcd-1"]; p == pid || !etcdAlive(p) {
		t.Fatalf("etcd-1 not restarted: pid %d (was %d)", p, pid)
	}
	for _, m := range []string{"etcd-2", "etcd-3"} {
		if st2.Pids[m] != st.Pids[m] {
			t.Fatalf("%s restarted by the second lab up: pid %d, was %d", m, st2.Pids[m], st.Pids[m])
		}
	}
	after, err := l.etcdPs()
	if err != nil || len(after) != 3 {
		t.Fatalf("ps after etcd-1 came back: %v %+v", err, after)
	}
	// It serves again on its own endpoint.
	ep := strings.Split(st.EtcdURL, ",")[0]
	etcdEventually(t, 15*time.Second, "ps through etcd-1 only ("+ep+")", func() error {
		out, err := l.coat("--etcd-endpoints", ep, "ps", "--json")
		if err != nil || !strings.Contains(out, `"ec"`) {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
		}
		return nil
	})
}

// --etcd-members takes 1 or 3, no more than --hosts, and a refused
// `lab up` makes nothing.
func TestEtcdMembersRefused(t *testing.T) {
	requireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	l := &testLab{t: t, name: "t" + hex.EncodeToString(b)}
	t.Cleanup(func() { _, _ = l.coat("lab", "down") })
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--hosts", "3", "--etcd-members", "2"}, "want 1"},
		{[]string{"--hosts", "5", "--etcd-members", "5"}, "want 1"},
		{[]string{"--hosts", "3", "--etcd-members", "0"}, "want 1"},
		{[]string{"--hosts", "2", "--etcd-members", "3"}, "needs at least 3 edge hosts"},
	}
	for _, tc := range cases {
		out, err := l.coat(append([]string{"lab", "up"}, tc.args...)...)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
			t.Fatalf("lab up %v: want a non-zero exit, got %v\n%s", tc.args, err, out)
		}
		if !strings.Contains(out, tc.want) {
			t.Errorf("lab up %v: error %q does not say %q", tc.args, strings.TrimSpace(out), tc.want)
		}
		if left := leftovers(l.name); len(left) > 0 {
			t.Fatalf("refused lab up %v left: %v", tc.args, left)
		}
	}
}
