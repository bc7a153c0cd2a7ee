package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/images"
)

// A single-machine install outside the lab: `coat init` makes the cluster
// PKI, `coat agent` given no etcd endpoints runs an embedded etcd (mutual
// TLS, data on disk), and the CLI runs containers through it.
func TestSingleMachineInstall(t *testing.T) {
	requireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	ns, host := "coat-single-"+id, "single"+id
	dir := t.TempDir()
	pkiDir := filepath.Join(dir, "pki")
	coat := filepath.Join(binDir, "coat")
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + ns, coat}, args...)...)
		cmd.Env = append(os.Environ(), "COAT_PKI_DIR="+pkiDir, "COAT_ETCD_ENDPOINTS=https://127.0.0.1:2379")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	sh := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := exec.Command(coat, "init", "--pki-dir", pkiDir, "--issue", host+"=10.251.0.2").CombinedOutput(); err != nil {
		t.Fatalf("coat init: %v %s", err, out)
	}
	sh("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	sh("ip", "link", "add", "cs"+id, "type", "veth", "peer", "name", "eth0", "netns", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", "cs"+id).Run() })
	sh("ip", "-n", ns, "addr", "add", "10.251.0.2/24", "dev", "eth0")
	sh("ip", "-n", ns, "link", "set", "eth0", "up")
	sh("ip", "-n", ns, "link", "set", "lo", "up")
	sh("ip", "link", "set", "cs"+id, "up")

	agent := exec.Command("nsenter", "--net=/run/netns/"+ns, coat, "agent", "--name", host,
		"--underlay-ip", "10.251.0.2", "--subnet", "10.204.0.0/24", "--pki-dir", pkiDir,
		"--state-dir", filepath.Join(dir, "state"))
	logf, _ := os.Create(filepath.Join(dir, "agent.log"))
	agent.Stdout, agent.Stderr = logf, logf
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = run("rm", "one")
		_ = agent.Process.Signal(os.Interrupt)
		_, _ = agent.Process.Wait()
		// runc removed the container's cgroups; the host's parent stays.
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/coat/" + host)
		for _, d := range dirs {
			_ = os.Remove(d)
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "agent.log"))
			t.Logf("agent log:\n%s", b)
		}
	})
	waitFor(t, 30*time.Second, func() string {
		out, err := run("hosts")
		if err != nil || !strings.Contains(out, host) {
			return "agent not registered: " + out
		}
		return ""
	})
	img := filepath.Join(dir, "img")
	if err := images.BuildStatic(img, filepath.Join(binDir, "coat-sample"), "coat-sample"); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"image", "import", "sample", img},
		{"run", "--host", host, "--name", "one", "--image", "sample", "--", "/bin/coat-sample", "server"},
	} {
		if out, err := run(args...); err != nil {
			t.Fatalf("coat %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	out, err := run("ps", "--json")
	if err != nil || !strings.Contains(out, `"host": "`+host+`"`) || !strings.Contains(out, `"status": "running"`) {
		t.Fatalf("ps: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "etcd")); err != nil {
		t.Fatalf("embedded etcd keeps no data on disk: %v", err)
	}
}
