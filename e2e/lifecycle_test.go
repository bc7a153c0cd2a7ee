package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// leftovers lists what a lab named name may have left on the machine.
func leftovers(name string) []string {
	var out []string
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "coat-"+name+"-") {
			out = append(out, "netns "+e.Name())
		}
	}
	dir := filepath.Join("/var/lib/coat/labs", name)
	if _, err := os.Stat(dir); err == nil {
		out = append(out, "dir "+dir)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), dir+"/") || strings.Contains(string(mi), "coat-"+name+"-") {
		out = append(out, "mounts under "+dir)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), dir) {
			out = append(out, "process "+p+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	for _, cg := range []string{"/sys/fs/cgroup/freezer/coat/" + name, "/sys/fs/cgroup/memory/coat/" + name} {
		if _, err := os.Stat(cg); err == nil {
			out = append(out, "cgroup "+cg)
		}
	}
	return out
}

// lab up is idempotent, lab exec passes stdin, stdout and the exit code,
// and lab down leaves nothing behind, also after agents were killed.
func TestLabLifecycle(t *testing.T) {
	l := newLab(t, 2)
	if out, err := l.coat("lab", "up", "--hosts", "2"); err != nil {
		t.Fatalf("second lab up: %v\n%s", err, out)
	}
	var hosts []struct{ Name string }
	if err := json.Unmarshal([]byte(l.must("hosts", "--json")), &hosts); err != nil || len(hosts) != 2 {
		t.Fatalf("hosts after two lab up: %v %+v", err, hosts)
	}
	// exec: stdin in, stdout out, exit code through.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := l.client(ctx, "sh", "-c", "read x; echo got:$x; ip -4 -o addr show dev coat0; exit 7")
	cmd.Stdin = strings.NewReader("hello\n")
	out, err := cmd.Output()
	var ee *exec.ExitError
	if !errorsAs(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("lab exec exit: %v, want 7", err)
	}
	if !strings.Contains(string(out), "got:hello") || !strings.Contains(string(out), "10.202.") {
		t.Fatalf("lab exec output: %s", out)
	}
	if _, err := l.coat("lab", "exec", "nosuch", "--", "true"); err == nil {
		t.Fatal("lab exec on an unknown node succeeded")
	}
	// A crash: agents and etcd die with a container running.
	l.runSample("crash", "edge-1")
	var st struct{ Pids map[string]int }
	b, _ := os.ReadFile(filepath.Join("/var/lib/coat/labs", l.name, "lab.json"))
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	for _, pid := range st.Pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	l.must("lab", "down")
	if left := leftovers(l.name); len(left) > 0 {
		t.Fatalf("lab down left: %v", left)
	}
	// down again is fine
	l.must("lab", "down")
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}
