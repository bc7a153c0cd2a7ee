package main

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/images"
	"github.com/coat-project/coat/internal/sample"
)

// buildBinary builds coat-sample the way the lab does: CGO_ENABLED=0.
func buildBinary(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go toolchain not in PATH")
	}
	bin := filepath.Join(t.TempDir(), "coat-sample")
	cmd := exec.Command(goBin, "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startServer starts the binary's server (optionally chrooted) and waits
// until its control port answers.
func startServer(t *testing.T, bin string, chroot string, data string) (*exec.Cmd, *bytes.Buffer, string, string) {
	t.Helper()
	port, ctlPort := freePort(t), freePort(t)
	cmd := exec.Command(bin, "server", "--port", strconv.Itoa(port),
		"--ctl-port", strconv.Itoa(ctlPort), "--data", data)
	if chroot != "" {
		cmd.Dir = "/"
		cmd.Env = []string{}
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: chroot}
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	ctl := net.JoinHostPort("127.0.0.1", strconv.Itoa(ctlPort))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r, err := sample.Ctl(context.Background(), ctl, "ping"); err == nil && r == "pong" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not come up: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd, &out, addr, ctl
}

func stopServer(t *testing.T, cmd *exec.Cmd, out *bytes.Buffer) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("server exit after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Errorf("server did not exit after SIGTERM")
	}
}

func TestBinaryIsStatic(t *testing.T) {
	bin := buildBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("binary has an ELF interpreter: not static")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary needs shared libraries %v", libs)
	}
}

func TestBinaryEndToEnd(t *testing.T) {
	bin := buildBinary(t)
	data := t.TempDir()
	srv, out, addr, ctl := startServer(t, bin, "", data)

	run := func(args ...string) (int, string) {
		cmd := exec.Command(bin, args...)
		b, err := cmd.Output()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(b)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(b)
	}
	code, rep := run("stream", "--addr", addr, "--duration", "500ms", "--rate", "1MB/s", "--json")
	if code != 0 {
		t.Fatalf("stream exit %d: %s", code, rep)
	}
	var r sample.Report
	if err := json.Unmarshal([]byte(rep), &r); err != nil || r.Sent == 0 || r.Sent != r.Received {
		t.Fatalf("report %q: %v", rep, err)
	}
	if code, reply := run("ctl", "--addr", ctl, "put", "k", "v"); code != 0 || strings.TrimSpace(reply) != "ok" {
		t.Errorf("ctl put: %d %q", code, reply)
	}
	if b, err := os.ReadFile(filepath.Join(data, "k")); err != nil || string(b) != "v" {
		t.Errorf("data file: %q %v", b, err)
	}
	if code, _ := run("ctl", "--addr", ctl, "get", "missing"); code != 1 {
		t.Errorf("ctl get missing exit %d, want 1", code)
	}

	// --duration 0 streams until SIGINT, then drains and reports.
	st := exec.Command(bin, "stream", "--addr", addr, "--duration", "0", "--rate", "0", "--json")
	var stOut bytes.Buffer
	st.Stdout = &stOut
	if err := st.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	st.Process.Signal(syscall.SIGINT)
	if err := st.Wait(); err != nil {
		t.Errorf("stream until SIGINT: %v: %s", err, stOut.String())
	}
	if err := json.Unmarshal(stOut.Bytes(), &r); err != nil || r.Sent == 0 || r.Sent != r.Received {
		t.Errorf("SIGINT report %q: %v", stOut.String(), err)
	}

	stopServer(t, srv, out)
	logs := out.String()
	if strings.Count(logs, " open conn=") != 2 || strings.Count(logs, " close conn=") != 2 {
		t.Errorf("want 2 open and 2 close log lines:\n%s", logs)
	}
}

func TestBinaryInStaticImage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	bin := buildBinary(t)
	root := filepath.Join(t.TempDir(), "rootfs")
	if err := images.BuildStatic(root, bin, "coat-sample"); err != nil {
		t.Fatal(err)
	}
	srv, out, addr, ctl := startServer(t, "/bin/coat-sample", root, "/data")
	rep := sample.Stream(context.Background(), sample.StreamOptions{
		Addr: addr, Duration: 300 * time.Millisecond, Rate: 1 << 20,
	})
	if !rep.OK() {
		t.Errorf("stream to chrooted server: %+v", rep)
	}
	if r, err := sample.Ctl(context.Background(), ctl, "put state 42"); err != nil || r != "ok" {
		t.Errorf("put: %q %v", r, err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "data", "state")); err != nil || string(b) != "42" {
		t.Errorf("rootfs /data/state = %q, %v", b, err)
	}
	stopServer(t, srv, out)
}
