package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// linkShow is `coat lab show --json`.
type linkShow struct {
	Nodes []struct {
		Node       string `json:"node"`
		UnderlayIP string `json:"underlay_ip"`
		Link       string `json:"link"`
		Relay      bool   `json:"relay"`
	} `json:"nodes"`
}

func (l *testLab) linkShow() linkShow {
	l.t.Helper()
	var s linkShow
	out := l.must("lab", "show", "--json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		l.t.Fatalf("lab show --json: %v\n%s", err, out)
	}
	return s
}

func (l *testLab) nodeIP(node string) string {
	l.t.Helper()
	for _, n := range l.linkShow().Nodes {
		if n.Node == node {
			return n.UnderlayIP
		}
	}
	l.t.Fatalf("no node %s in lab show", node)
	return ""
}

// linkServers starts iperf3 and sockperf servers on node's underlay IP;
// lab down ends them with the node.
func (l *testLab) linkServers(node, ip string) {
	l.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l.t.Cleanup(cancel)
	for _, argv := range [][]string{
		{"iperf3", "-s", "-B", ip, "-p", "5201"},
		{"sockperf", "server", "--tcp", "-i", ip, "-p", "11111"},
	} {
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "coat"), append([]string{"lab", "exec", node, "--"}, argv...)...)
		cmd.Env = append(os.Environ(), "COAT_LAB="+l.name)
		if err := cmd.Start(); err != nil {
			l.t.Fatal(err)
		}
		go cmd.Wait()
	}
}

// iperfRate runs a 5 s iperf3 stream from node to ip and returns what the
// receiver got, in bits per second.
func (l *testLab) iperfRate(node, ip string) float64 {
	l.t.Helper()
	var out string
	var err error
	for i := 0; i < 50; i++ { // the server may still be starting
		if out, err = l.coat("lab", "exec", node, "--", "iperf3", "-c", ip, "-p", "5201", "-t", "5", "-J"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		l.t.Fatalf("iperf3 from %s to %s: %v\n%s", node, ip, err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		l.t.Fatalf("iperf3 -J: %v\n%s", err, out)
	}
	return r.End.SumReceived.BitsPerSecond
}

var sockperfMedian = regexp.MustCompile(`percentile 50\.000 = ([0-9.]+)`)

// tcpRTT is the median round trip of a TCP ping-pong from node to ip
// (sockperf reports half of it, in microseconds).
func (l *testLab) tcpRTT(node, ip string) time.Duration {
	l.t.Helper()
	var out string
	var err error
	for i := 0; i < 50; i++ {
		if out, err = l.coat("lab", "exec", node, "--", "sockperf", "ping-pong", "--tcp", "-i", ip, "-p", "11111", "-t", "3"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	m := sockperfMedian.FindStringSubmatch(out)
	if err != nil || m == nil {
		l.t.Fatalf("sockperf from %s to %s: %v\n%s", node, ip, err, out)
	}
	half, _ := strconv.ParseFloat(m[1], 64)
	return time.Duration(2 * half * float64(time.Microsecond))
}

// payloadShare is the part of a full-sized frame that iperf3 counts: TBF
// shapes whole Ethernet frames (1514 bytes for a 1448-byte TCP payload
// with timestamps), iperf3 reports TCP payload.
const payloadShare = 1448.0 / 1514.0

func checkRate(t *testing.T, what string, got, rate float64) {
	t.Helper()
	want := rate * payloadShare
	t.Logf("%s: %.1f Mbit/s (want %.0f +- 10%%)", what, got/1e6, want/1e6)
	if math.Abs(got-want) > 0.1*want {
		t.Errorf("%s: %.1f Mbit/s, want %.0f Mbit/s within 10%%", what, got/1e6, want/1e6)
	}
}

func checkRTT(t *testing.T, what string, got, want time.Duration) {
	t.Helper()
	tol := 2*time.Millisecond + want/10
	t.Logf("%s: RTT %s (want %s +- %s)", what, got, want, tol)
	if got < want-tol || got > want+tol {
		t.Errorf("%s: RTT %s, want %s within %s", what, got, want, tol)
	}
}

// Lab links: rate with TBF, delay through the relay; measured between two
// nodes, re-applied by a second lab up, and refused when they don't parse.
func TestLinks(t *testing.T) {
	l := newLabWith(t, "--hosts", "2", "--link-rate", "100mbit", "--link-delay", "10ms")
	show := l.linkShow()
	for _, n := range show.Nodes {
		if n.Link != "rate=100mbit,delay=10ms" || !n.Relay {
			t.Fatalf("lab show: %s has %q (relay %v), want rate=100mbit,delay=10ms through the relay", n.Node, n.Link, n.Relay)
		}
	}
	if pid := l.labPids()["edge-1"]; !strings.Contains(procCmdline(pid), " --link-rate 100mbit") {
		t.Errorf("agent edge-1 was not given --link-rate 100mbit: %s", procCmdline(pid))
	}
	ip := l.nodeIP("edge-2")
	l.linkServers("edge-2", ip)

	t.Run("rate and delay", func(t *testing.T) {
		checkRTT(t, "edge-1 -> edge-2, delay 10ms each", l.bestRTT("edge-1", ip, 20*time.Millisecond), 20*time.Millisecond)
		checkRate(t, "edge-1 -> edge-2 at 100mbit", l.bestRate("edge-1", ip, 100e6), 100e6)
	})

	t.Run("overlay crosses relayed links", func(t *testing.T) {
		// VXLAN frames need their own care in the relay (they cross
		// segmented); a broken path moves a few KB/s, a working one
		// nearly the rate less VXLAN's overhead. Only "moves" is asserted.
		l.must("run", "--host", "edge-2", "--name", "ovl", "--image", "iperf3", "--", "iperf3", "-s", "-p", "5201")
		got := l.iperfRate("client", l.get("ovl").IP)
		t.Logf("client -> container on edge-2 over the overlay: %.1f Mbit/s (links 100mbit, 10ms)", got/1e6)
		if got < 10e6 {
			t.Errorf("overlay TCP across relayed links moves %.3f Mbit/s", got/1e6)
		}
	})

	t.Run("relay crash", func(t *testing.T) {
		old := l.labPids()["relay-edge-1"]
		if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
			t.Fatalf("kill relay-edge-1 (%d): %v", old, err)
		}
		l.must("lab", "up", "--hosts", "2") // no link flags: the lab keeps its links
		if pid := l.labPids()["relay-edge-1"]; pid == old || !strings.Contains(procCmdline(pid), "lab relay") {
			t.Fatalf("relay-edge-1 not restarted: was %d, now %d (%s)", old, pid, procCmdline(pid))
		}
		checkRTT(t, "after a relay crash and lab up", l.bestRTT("edge-1", ip, 20*time.Millisecond), 20*time.Millisecond)
	})

	t.Run("bad specs change nothing", func(t *testing.T) {
		state := filepath.Join("/var/lib/coat/labs", l.name, "lab.json")
		before, _ := os.ReadFile(state)
		for _, args := range [][]string{
			{"--link-rate", "fast"},
			{"--link-delay", "20"},
			{"--link-loss", "150%"},
			{"--link", "edge-2=rate=100mbit,dly=20ms"},
			{"--link", "edge-9=rate=100mbit"},
			{"--link", "edge-2"},
		} {
			out, err := l.coat(append([]string{"lab", "up", "--hosts", "2"}, args...)...)
			var ee *exec.ExitError
			if !errorsAs(err, &ee) || ee.ExitCode() == 0 {
				t.Errorf("lab up %s: want a non-zero exit, got %v\n%s", strings.Join(args, " "), err, out)
			}
			if !strings.Contains(out, "e.g.") && !strings.Contains(out, "name one of") {
				t.Errorf("lab up %s: the error does not say what to write: %s", strings.Join(args, " "), out)
			}
			if after, _ := os.ReadFile(state); string(after) != string(before) {
				t.Fatalf("lab up %s changed the lab:\nbefore %s\nafter %s", strings.Join(args, " "), before, after)
			}
		}
	})

	t.Run("re-applied", func(t *testing.T) {
		// 1 Gbit/s through the relay, and edge-2 plain (the kernel path).
		l.must("lab", "up", "--hosts", "2", "--link-rate", "1gbit", "--link-delay", "2ms", "--link", "edge-2=rate=1gbit")
		for _, n := range l.linkShow().Nodes {
			want := "rate=1gbit,delay=2ms"
			if n.Node == "edge-2" {
				want = "rate=1gbit"
			}
			if n.Link != want || n.Relay != (n.Node != "edge-2") {
				t.Errorf("lab show: %s has %q (relay %v), want %q", n.Node, n.Link, n.Relay, want)
			}
		}
		if _, ok := l.labPids()["relay-edge-2"]; ok {
			t.Errorf("edge-2's link has no delay, but a relay is recorded: %v", l.labPids())
		}
		checkRTT(t, "edge-1 -> edge-2, delay 2ms one way", l.bestRTT("edge-1", ip, 2*time.Millisecond), 2*time.Millisecond)
		// The rate at 1 Gbit/s, checked on the kernel's path (edge-2's
		// TBF, edge-1's inbound redirect): the relay is a userspace
		// program whose throughput depends on the machine's CPU, so its
		// figure is reported, not bounded to 10% (it reached 935-953
		// Mbit/s on a quiet 2-vCPU VM, 710-820 on a busy one).
		ip1 := l.nodeIP("edge-1")
		l.linkServers("edge-1", ip1)
		checkRate(t, "edge-2 -> edge-1 at 1gbit (kernel path)", l.bestRate("edge-2", ip1, 1e9), 1e9)
		if got := l.bestRate("edge-1", ip, 1e9); got < 0.5e9 {
			t.Errorf("edge-1 -> edge-2 at 1gbit through edge-1's relay: %.1f Mbit/s, want at least 500", got/1e6)
		} else {
			t.Logf("edge-1 -> edge-2 at 1gbit through edge-1's relay: %.1f Mbit/s", got/1e6)
		}
		// Plain again: no relay left.
		l.must("lab", "up", "--hosts", "2", "--link-delay", "0")
		for k := range l.labPids() {
			if strings.HasPrefix(k, "relay-") {
				t.Errorf("relay %s still recorded after links became plain", k)
			}
		}
		if rs := labRelays(l.name); len(rs) > 0 {
			t.Errorf("relays still running after links became plain: %v", rs)
		}
	})

	t.Run("down", func(t *testing.T) {
		l.must("lab", "up", "--hosts", "2", "--link-loss", "0.1%")
		if rs := labRelays(l.name); len(rs) != 3 {
			t.Fatalf("want 3 relays (edge-1, edge-2, client), got %v", rs)
		}
		l.must("lab", "down")
		if rs := labRelays(l.name); len(rs) > 0 {
			t.Errorf("relays left after lab down: %v", rs)
		}
		if left := leftovers(l.name); len(left) > 0 {
			t.Errorf("lab down left %v", left)
		}
	})
}

// labRelays lists the relay processes of lab name.
func labRelays(name string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if c := strings.ReplaceAll(string(b), "\x00", " "); strings.Contains(c, "lab relay --lab "+name+" ") {
			out = append(out, c)
		}
	}
	return out
}

func procCmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(string(b), "\x00", " ")
}

// bestRate measures up to three times and keeps the highest: a link's
// rate is what it carries at best, and a busy CI machine (another test's
// CPU) only ever lowers what one run sees. It stops at the first run
// within tolerance.
func (l *testLab) bestRate(node, ip string, want float64) float64 {
	best := 0.0
	for i := 0; i < 3; i++ {
		got := l.iperfRate(node, ip)
		best = math.Max(best, got)
		if math.Abs(got-want*payloadShare) <= 0.1*want*payloadShare {
			break
		}
		l.t.Logf("%s -> %s: %.1f Mbit/s, measuring again", node, ip, got/1e6)
	}
	return best
}

// bestRTT is bestRate for round trips: the lowest of up to three.
func (l *testLab) bestRTT(node, ip string, want time.Duration) time.Duration {
	tol := 2*time.Millisecond + want/10
	best := time.Duration(math.MaxInt64)
	for i := 0; i < 3; i++ {
		got := l.tcpRTT(node, ip)
		best = min(best, got)
		if got >= want-tol && got <= want+tol {
			break
		}
		l.t.Logf("%s -> %s: RTT %s, measuring again", node, ip, got)
	}
	return best
}
