// Package e2e holds the end-to-end tests: real namespaces, kernel VXLAN,
// runc, CRIU, etcd and the real iperf3 and sockperf, driven through the
// coat binary exactly as a user would. They need root and `make build`
// (bin/coat, bin/coat-sample); `make test` provides both.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var binDir = func() string {
	d, _ := filepath.Abs("../bin")
	return d
}()

// testLab is one lab of this test's own, torn down in Cleanup.
type testLab struct {
	t    *testing.T
	name string
	bin  string // the coat binary to run; "" is bin/coat
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (run `make test` as root)")
	}
	if _, err := os.Stat(filepath.Join(binDir, "coat")); err != nil {
		t.Fatalf("bin/coat missing: run `make build` first")
	}
}

// newLab brings up a uniquely named lab and registers its teardown, which
// also runs when the test fails or panics.
func newLab(t *testing.T, hosts int) *testLab {
	return newLabWith(t, "--hosts", fmt.Sprint(hosts))
}

func (l *testLab) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join("/var/lib/coat/labs", l.name, "logs", "*.log"))
	for _, f := range logs {
		b, _ := os.ReadFile(f)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		l.t.Logf("=== %s (tail)\n%s", f, b)
	}
}

// coat runs the CLI against this lab and returns its combined output.
func (l *testLab) coat(args ...string) (string, error) {
	return l.coatWithin(2*time.Minute, args...)
}

// coatWithin runs coat with a deadline of its own, for commands whose own
// bounds exceed coat's usual two minutes.
func (l *testLab) coatWithin(limit time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	bin := l.bin
	if bin == "" {
		bin = filepath.Join(binDir, "coat")
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "COAT_LAB="+l.name)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// must runs coat and fails the test on error.
func (l *testLab) must(args ...string) string {
	l.t.Helper()
	out, err := l.coat(args...)
	if err != nil {
		l.t.Fatalf("coat %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// client starts a command on the lab's client node.
func (l *testLab) client(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"lab", "exec", "client", "--"}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "coat"), full...)
	cmd.Env = append(os.Environ(), "COAT_LAB="+l.name)
	return cmd
}

type container struct {
	Name, Host, IP, MAC, Status, Image string
	MigratingTo                        string `json:"migrating_to"`
	Error                              string
	Follows                            string // the client it follows
}

func (l *testLab) ps() []container {
	l.t.Helper()
	var cs []container
	out := l.must("ps", "--json")
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		l.t.Fatalf("ps --json: %v\n%s", err, out)
	}
	return cs
}

func (l *testLab) get(name string) container {
	l.t.Helper()
	for _, c := range l.ps() {
		if c.Name == name {
			return c
		}
	}
	l.t.Fatalf("container %s not in ps", name)
	return container{}
}

type migrateResult struct {
	Name, From, To string
	CheckpointMS   float64 `json:"checkpoint_ms"`
	TransferMS     float64 `json:"transfer_ms"`
	RestoreMS      float64 `json:"restore_ms"`
	TotalMS        float64 `json:"total_ms"`
	DowntimeMS     float64 `json:"downtime_ms"`
	Bytes          int64
}

func (l *testLab) migrate(name, to string, extra ...string) migrateResult {
	l.t.Helper()
	out := l.must(append([]string{"migrate", name, "--to", to, "--json"}, extra...)...)
	var r migrateResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		l.t.Fatalf("migrate --json: %v\n%s", err, out)
	}
	l.t.Logf("migrated %s %s->%s: checkpoint %.0f ms, transfer %.0f ms, restore %.0f ms, downtime %.0f ms, %d bytes",
		name, r.From, r.To, r.CheckpointMS, r.TransferMS, r.RestoreMS, r.DowntimeMS, r.Bytes)
	return r
}

// ctl sends one control command to a sample container from the client.
func (l *testLab) ctl(ip string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := l.client(ctx, append([]string{filepath.Join(binDir, "coat-sample"), "ctl", "--addr", ip + ":7001"}, args...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// runSample starts the sample service on host and waits until it answers.
func (l *testLab) runSample(name, host string) container {
	l.t.Helper()
	// The lab's sample image has a default command (its server), as an
	// OCI image's Cmd: run with no command, as `podman run sample` would.
	l.must("run", "--host", host, "--name", name, "sample")
	c := l.get(name)
	l.waitCtl(c.IP)
	return c
}

func (l *testLab) waitCtl(ip string) {
	l.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := l.ctl(ip, "ping")
		if err == nil && out == "pong" {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("sample at %s does not answer: %v %s", ip, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitListen waits until the container listens on port, looking into
// its network namespace on its host.
func (l *testLab) waitListen(name string, port int) {
	l.t.Helper()
	c := l.get(name)
	ns := filepath.Join("/var/lib/coat/labs", l.name, c.Host, "netns", name)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := exec.Command("nsenter", "--net="+ns, "ss", "-Htln", fmt.Sprintf("sport = :%d", port)).Output()
		if strings.Contains(string(out), "LISTEN") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	l.t.Fatalf("%s does not listen on port %d", name, port)
}

// pid is the host PID of a container's init process, from runc's state.
func (l *testLab) pid(name string) int {
	l.t.Helper()
	c := l.get(name)
	out, err := exec.Command("runc", "--root", filepath.Join("/var/lib/coat/labs", l.name, c.Host, "runc"), "state", name).Output()
	if err != nil {
		l.t.Fatalf("runc state %s on %s: %v", name, c.Host, err)
	}
	var st struct{ Pid int }
	if err := json.Unmarshal(out, &st); err != nil || st.Pid == 0 {
		l.t.Fatalf("runc state %s: %v %s", name, err, out)
	}
	return st.Pid
}
