package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The data plane outlives the control plane: when edge-2's agent dies its
// host record's lease expires, but its container runs on, and a container
// on edge-1 must still reach it (edge-1 keeps its forwarding to edge-2
// until the host has been gone for --host-gone-after, 10 minutes).
func TestForwardingOutlivesAgent(t *testing.T) {
	l := newLab(t, 2)
	l.runSample("dpa", "edge-1")
	b := l.runSample("dpb", "edge-2")
	fromA := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ns := filepath.Join("/var/lib/coat/labs", l.name, "edge-1", "netns", "dpa")
		out, err := exec.CommandContext(ctx, "nsenter", "--net="+ns, filepath.Join(binDir, "coat-sample"),
			"ctl", "--addr", b.IP+":7001", "ping").CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := fromA(); err != nil || out != "pong" {
		t.Fatalf("edge-1's container cannot reach edge-2's to begin with: %v %q", err, out)
	}
	if err := syscall.Kill(l.labPids()["edge-2"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The lease (5 s) expires and edge-1 resyncs (every 3 s).
	waitFor(t, 30*time.Second, func() string {
		for _, h := range l.hostNames() {
			if h == "edge-2" {
				return "edge-2 still listed"
			}
		}
		return ""
	})
	time.Sleep(4 * time.Second) // at least one resync without edge-2
	// edge-1's forwarding to edge-2 is as it was: the flood entry and the
	// static (permanent) entry for edge-2's container (a learned entry would age
	// out in minutes).
	edge2 := fmt.Sprintf("10.201.%d.12", l.labIndex())
	ns := fmt.Sprintf("/run/netns/coat-%s-edge-1", l.name)
	out, err := exec.Command("nsenter", "--net="+ns, "bridge", "fdb", "show", "dev", "vxlan0").CombinedOutput()
	if err != nil {
		t.Fatalf("bridge fdb show: %v %s", err, out)
	}
	for _, want := range []string{"00:00:00:00:00:00 dst " + edge2, b.MAC + " dst " + edge2} {
		found := false
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, want) && (strings.HasPrefix(want, "00:") || strings.Contains(line, "permanent")) {
				found = true
			}
		}
		if !found {
			t.Errorf("edge-1 lost %q once edge-2's agent was gone:\n%s", want, out)
		}
	}
	for i := 0; i < 3; i++ {
		if out, err := fromA(); err != nil || out != "pong" {
			t.Fatalf("with edge-2's agent gone, its container is unreachable from edge-1's: %v %q", err, out)
		}
		time.Sleep(time.Second)
	}
	// Only an operator's declaration (or --host-gone-after) drops it. A
	// live host is refused, and nothing changes.
	if out, err := l.coat("hosts", "forget", "edge-1"); err == nil || !strings.Contains(out, "alive") {
		t.Fatalf("forget a live host: err %v\n%s", err, out)
	}
	if got := l.get("dpa"); got.Status != "running" {
		t.Fatalf("refused forget changed %+v", got)
	}
	l.must("hosts", "forget", "edge-2")
	if got := l.get("dpb"); got.Status != "failed" || !strings.Contains(got.Error, "declared gone") {
		t.Errorf("container of the forgotten host: %+v, want failed, saying why", got)
	}
	waitFor(t, 20*time.Second, func() string {
		out, _ := exec.Command("nsenter", "--net="+ns, "bridge", "fdb", "show", "dev", "vxlan0").CombinedOutput()
		for _, line := range strings.Split(string(out), "\n") {
			// Its flood entry and the static entries (learned ones age
			// out on their own).
			if strings.Contains(line, "dst "+edge2) && (strings.HasPrefix(line, "00:00:00:00:00:00") || strings.Contains(line, "permanent")) {
				return "edge-1 still forwards to the forgotten edge-2: " + line
			}
		}
		return ""
	})
}
