package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/coat-project/coat/internal/pki"
)

// secLabState is the part of a lab's lab.json these tests read.
type secLabState struct {
	Index   int    `json:"index"`
	EtcdURL string `json:"etcd_url"`
}

func secLabDir(l *testLab) string { return filepath.Join("/var/lib/coat/labs", l.name) }

func secState(t *testing.T, l *testLab) secLabState {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(secLabDir(l), "lab.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s secLabState
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("lab.json: %v\n%s", err, b)
	}
	return s
}

// secLabCA is a pool holding the lab's real CA, so that a client trusts
// the agents and etcd and only its own certificate can be the problem.
func secLabCA(t *testing.T, l *testLab) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(secLabDir(l), "pki", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		t.Fatal("no certificate in the lab's ca.crt")
	}
	return pool
}

type secHost struct {
	Name       string `json:"name"`
	UnderlayIP string `json:"underlay_ip"`
	API        string `json:"api"`
}

func secHosts(t *testing.T, l *testLab) []secHost {
	t.Helper()
	out := l.must("hosts", "--json")
	var hs []secHost
	if err := json.Unmarshal([]byte(out), &hs); err != nil {
		t.Fatalf("hosts --json: %v\n%s", err, out)
	}
	if len(hs) == 0 {
		t.Fatalf("no hosts:\n%s", out)
	}
	return hs
}

// secClientTLS trusts the lab's CA and presents cert (none if nil). The
// certificate is presented even when the server asks for another CA's
// (GetClientCertificate), so a foreign certificate really reaches it.
func secClientTLS(pool *x509.CertPool, cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return cfg
}

// secCoat runs the CLI with a timeout of its own: a refused party must be
// told so promptly, not hang.
func secCoat(l *testLab, d time.Duration, args ...string) (out string, timedOut bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "coat"), args...)
	cmd.Env = append(os.Environ(), "COAT_LAB="+l.name)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err = cmd.Run()
	return b.String(), ctx.Err() != nil, err
}

// secTar is a small tar stream holding one file.
func secTar(t *testing.T, name, content string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// secHandshakeRefusal completes a TLS handshake with addr and reads: a
// server that refuses our certificate answers with a TLS alert ("remote
// error: tls: ..."), one that accepts it waits for a request (timeout).
func secHandshakeRefusal(addr string, cfg *tls.Config) (alert string, err error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		if strings.Contains(err.Error(), "remote error: tls:") {
			return err.Error(), nil
		}
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	if err != nil && strings.Contains(err.Error(), "remote error: tls:") {
		return err.Error(), nil
	}
	return "", fmt.Errorf("no TLS alert, read: %v", err)
}

// secTLSLayerError says whether err is a connection-level failure (a TLS
// alert or the connection torn down with it), not a timeout and not an
// HTTP reply.
func secTLSLayerError(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	s := err.Error()
	for _, w := range []string{"tls:", "certificate", "connection reset", "broken pipe", "EOF"} {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// Nobody without a certificate from the cluster CA can list, run,
// checkpoint, read logs, import images or push checkpoint data, neither
// through the CLI nor straight at the agents' API or at etcd; and the
// attempts change nothing.
func TestUnauthenticatedRefused(t *testing.T) {
	l := newLab(t, 2)
	c := l.runSample("victim", "edge-1")
	before := l.must("ps", "--json")
	labDir := secLabDir(l)
	st := secState(t, l)
	pool := secLabCA(t, l)

	foreign := filepath.Join(t.TempDir(), "pki")
	if err := pki.EnsureCA(foreign); err != nil {
		t.Fatal(err)
	}
	if err := pki.Issue(foreign, "cli", pki.RoleAdmin, nil); err != nil {
		t.Fatal(err)
	}
	foreignCert, err := tls.LoadX509KeyPair(filepath.Join(foreign, "cli.crt"), filepath.Join(foreign, "cli.key"))
	if err != nil {
		t.Fatal(err)
	}
	labCert, err := tls.LoadX509KeyPair(filepath.Join(labDir, "pki", "cli.crt"), filepath.Join(labDir, "pki", "cli.key"))
	if err != nil {
		t.Fatal(err)
	}

	// The CLI with a foreign CA and a "cli" certificate it issued.
	t.Run("cli", func(t *testing.T) {
		for _, args := range [][]string{
			{"ps"},
			{"ps", "--json"},
			{"run", "--host", "edge-1", "--name", "intruder", "--image", "sample", "--", "/bin/coat-sample", "server"},
			{"migrate", "victim", "--to", "edge-2"},
			{"logs", "victim"},
			{"rm", "victim"},
		} {
			full := append([]string{args[0], "--pki-dir", foreign}, args[1:]...)
			out, timedOut, err := secCoat(l, 15*time.Second, full...)
			what := strings.Join(args, " ")
			switch {
			case timedOut:
				t.Errorf("coat %s with a foreign certificate did not exit within 15 s (hangs instead of refusing)\n%s", what, out)
			case err == nil:
				t.Errorf("coat %s with a foreign certificate succeeded:\n%s", what, out)
			default:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() <= 0 {
					t.Errorf("coat %s: want a non-zero exit, got %v", what, err)
				}
			}
			if strings.Contains(out, c.IP) || strings.Contains(out, c.MAC) ||
				(args[0] == "ps" && strings.Contains(out, "victim")) {
				t.Errorf("coat %s with a foreign certificate printed a container:\n%s", what, out)
			}
			t.Logf("coat %s (foreign cert): %v: %s", what, err, secFirstLine(out))
		}
	})

	hosts := secHosts(t, l)
	other := func(h string) string {
		for _, x := range hosts {
			if x.Name != h {
				return x.Name
			}
		}
		return h
	}
	runBody, _ := json.Marshal(map[string]any{
		"name": "intruder", "image": "sample", "args": []string{"/bin/coat-sample", "server"},
	})
	imageTar := secTar(t, "rootfs/planted", "planted by an unauthenticated party\n")
	dataTar := secTar(t, "upper/planted", "planted by an unauthenticated party\n")

	// Straight at every agent, with no client certificate and with the
	// foreign one; the agents' certificates are trusted, so only ours
	// can be what is refused.
	for _, who := range []struct {
		name  string
		cert  *tls.Certificate
		alert []string
	}{
		{"no client certificate", nil, []string{"certificate required", "bad certificate", "handshake failure"}},
		{"foreign CA certificate", &foreignCert, []string{"unknown certificate authority", "bad certificate"}},
	} {
		t.Run("agent api/"+who.name, func(t *testing.T) {
			cfg := secClientTLS(pool, who.cert)
			for _, h := range hosts {
				alert, err := secHandshakeRefusal(h.API, cfg)
				if err != nil {
					t.Errorf("%s %s: the agent did not refuse the handshake: %v", h.Name, h.API, err)
				} else if !secContainsAny(alert, who.alert) {
					t.Errorf("%s %s: refused with %q, want one of %q", h.Name, h.API, alert, who.alert)
				} else {
					t.Logf("%s handshake: %s", h.Name, alert)
				}
				for _, r := range []struct {
					op, method, path, ctype string
					body                    []byte
				}{
					{"run", http.MethodPost, "/v1/containers", "application/json", runBody},
					{"checkpoint", http.MethodPost, "/v1/containers/victim/migrate", "application/json", []byte(`{"to":"` + other(h.Name) + `"}`)},
					{"logs", http.MethodGet, "/v1/containers/victim/logs", "", nil},
					{"image import", http.MethodPut, "/v1/images/evil", "application/x-tar", imageTar},
					{"incoming data", http.MethodPut, "/v1/incoming/victim/data", "application/x-tar", dataTar},
				} {
					cl := &http.Client{
						Timeout:   15 * time.Second,
						Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true},
					}
					req, err := http.NewRequest(r.method, "https://"+h.API+r.path, bytes.NewReader(r.body))
					if err != nil {
						t.Fatal(err)
					}
					if r.ctype != "" {
						req.Header.Set("Content-Type", r.ctype)
					}
					resp, err := cl.Do(req)
					if err == nil {
						resp.Body.Close()
						t.Errorf("%s %s %s (%s): got HTTP %d, want a TLS failure", h.Name, r.method, r.path, r.op, resp.StatusCode)
						continue
					}
					if !secTLSLayerError(err) {
						t.Errorf("%s %s %s (%s): want a TLS-layer failure, got %v", h.Name, r.method, r.path, r.op, err)
						continue
					}
					t.Logf("%s %s (%s): %v", h.Name, r.path, r.op, err)
				}
			}
		})
	}

	// etcd refuses a client without a valid certificate, too.
	t.Run("etcd", func(t *testing.T) {
		for _, who := range []struct {
			name string
			cert *tls.Certificate
		}{{"no client certificate", nil}, {"foreign CA certificate", &foreignCert}} {
			cli, err := clientv3.New(clientv3.Config{
				Endpoints: []string{st.EtcdURL}, TLS: secClientTLS(pool, who.cert),
				DialTimeout: 3 * time.Second, Logger: zap.NewNop(),
			})
			if err != nil {
				t.Logf("etcd (%s): refused at connect: %v", who.name, err)
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			resp, err := cli.Get(ctx, "/", clientv3.WithPrefix())
			cancel()
			cli.Close()
			if err == nil {
				t.Errorf("etcd Get with %s succeeded: %d keys", who.name, resp.Count)
				continue
			}
			t.Logf("etcd (%s): %v", who.name, err)
		}
		// Control: the same client with the lab's certificate gets in.
		cli, err := clientv3.New(clientv3.Config{
			Endpoints: []string{st.EtcdURL}, TLS: secClientTLS(pool, &labCert),
			DialTimeout: 3 * time.Second, Logger: zap.NewNop(),
		})
		if err != nil {
			t.Fatalf("etcd with the lab's certificate: %v", err)
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := cli.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count == 0 {
			t.Fatalf("control: etcd Get with the lab's certificate: %v %+v", err, resp)
		}
	})

	// Control: the same request with the lab's CLI certificate succeeds,
	// so what was refused above is the certificate.
	t.Run("control", func(t *testing.T) {
		cfg := secClientTLS(pool, &labCert)
		var api string
		for _, h := range hosts {
			if h.Name == "edge-1" {
				api = h.API
			}
		}
		if api == "" {
			t.Fatalf("edge-1 not in hosts: %+v", hosts)
		}
		if alert, err := secHandshakeRefusal(api, cfg); err == nil {
			t.Fatalf("edge-1 refused the lab's own certificate: %s", alert)
		}
		cl := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
		resp, err := cl.Get("https://" + api + "/v1/containers/victim/logs")
		if err != nil {
			t.Fatalf("logs with the lab's certificate: %v", err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("logs with the lab's certificate: HTTP %d %s", resp.StatusCode, b.String())
		}
		if !strings.Contains(b.String(), "listening") {
			t.Errorf("logs with the lab's certificate lack the server's output:\n%s", b.String())
		}
	})

	// Nothing changed and the container still answers.
	if after := l.must("ps", "--json"); after != before {
		t.Errorf("state changed by refused requests:\nbefore %s\nafter %s", before, after)
	}
	for _, h := range hosts {
		for _, p := range []string{
			filepath.Join(labDir, h.Name, "images", "evil"),
			filepath.Join(labDir, h.Name, "containers", "intruder"),
			filepath.Join(labDir, h.Name, "containers", "victim", "upper", "planted"),
		} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("a refused request left %s", p)
			}
		}
	}
	if out, err := l.ctl(c.IP, "ping"); err != nil || out != "pong" {
		t.Fatalf("victim after the refused requests: %v %q", err, out)
	}
}

func secContainsAny(s string, subs []string) bool {
	for _, w := range subs {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

func secFirstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// secCapture is a running tcpdump writing a pcap file.
type secCapture struct {
	cmd      *exec.Cmd
	file     string
	mu       sync.Mutex
	stderr   bytes.Buffer
	drained  chan struct{}
	stopOnce sync.Once
}

// secStartCapture starts the real tcpdump on iface and returns once it
// captures; Cleanup kills it if the test did not stop it.
func secStartCapture(t *testing.T, iface, file string) *secCapture {
	t.Helper()
	// -Z root: Debian's tcpdump otherwise drops to user tcpdump before it
	// opens the file, which lives in a root-only temporary directory.
	c := &secCapture{file: file, drained: make(chan struct{})}
	c.cmd = exec.Command("tcpdump", "-i", iface, "-U", "-w", file, "-s", "0", "-n", "-B", "32768", "-Z", "root")
	pipe, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start tcpdump: %v", err)
	}
	listening := make(chan struct{})
	go func() {
		defer close(c.drained)
		sc := bufio.NewScanner(pipe)
		seen := false
		for sc.Scan() {
			c.mu.Lock()
			c.stderr.WriteString(sc.Text() + "\n")
			c.mu.Unlock()
			if !seen && strings.Contains(sc.Text(), "listening on") {
				seen = true
				close(listening)
			}
		}
	}()
	t.Cleanup(func() { c.stop() })
	select {
	case <-listening:
	case <-c.drained:
		c.stop()
		t.Fatalf("tcpdump exited: %s", c.output())
	case <-time.After(10 * time.Second):
		c.stop()
		t.Fatalf("tcpdump not capturing after 10 s: %s", c.output())
	}
	time.Sleep(500 * time.Millisecond)
	return c
}

func (c *secCapture) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stderr.String()
}

// stop ends tcpdump with SIGINT (it then flushes the file and prints its
// counters), or SIGKILL if it does not go within 10 s, and waits for it.
func (c *secCapture) stop() {
	c.stopOnce.Do(func() {
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-c.drained:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.drained
		}
		_ = c.cmd.Wait()
	})
}

var secDropped = regexp.MustCompile(`(\d+) packets? dropped by kernel`)

// secLeftImages lists CRIU page images anywhere under the lab's edge
// state directories, and any image file or tar under checkpoints/ and
// incoming/.
func secLeftImages(labDir string) []string {
	var found []string
	dirs, _ := filepath.Glob(filepath.Join(labDir, "edge-*"))
	for _, d := range dirs {
		_ = filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return nil // vanished while we walked: being cleaned up
			}
			rel, _ := filepath.Rel(d, p)
			inImageDir := strings.HasPrefix(rel, "checkpoints/") || strings.HasPrefix(rel, "incoming/")
			if m, _ := filepath.Match("pages-*.img", e.Name()); m ||
				inImageDir && (strings.HasSuffix(e.Name(), ".img") || strings.HasSuffix(e.Name(), ".tar")) {
				found = append(found, p)
			}
			return nil
		})
	}
	return found
}

// A secret that exists only in the container's memory (its environment)
// crosses the underlay during a migration only encrypted, and no
// checkpoint image stays on disk afterwards.
func TestCheckpointStreamEncrypted(t *testing.T) {
	l := newLab(t, 2)
	labDir := secLabDir(l)
	st := secState(t, l)
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	secret := hex.EncodeToString(raw)
	l.must("run", "--host", "edge-1", "--name", "sec", "--image", "sample",
		"--env", "COAT_SECRET="+secret, "--", "/bin/coat-sample", "server")
	c := l.get("sec")
	l.waitCtl(c.IP)

	pcap := filepath.Join(t.TempDir(), "migration.pcap")
	capture := secStartCapture(t, fmt.Sprintf("coatbr%d", st.Index), pcap)

	// Control for the capture: a marker the client sends in clear over
	// the overlay (VXLAN is not encrypted) must be found in it.
	mark := make([]byte, 8)
	if _, err := rand.Read(mark); err != nil {
		t.Fatal(err)
	}
	canary := "canary-" + hex.EncodeToString(mark)
	if out, err := l.ctl(c.IP, "put", "probe", canary); err != nil || out != "ok" {
		t.Fatalf("put: %v %q", err, out)
	}
	r := l.migrate("sec", "edge-2")
	time.Sleep(time.Second)
	capture.stop()
	tdOut := capture.output()
	t.Logf("tcpdump: %s", strings.Join(strings.Fields(tdOut), " "))

	data, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("capture %d bytes, migration moved %d bytes", len(data), r.Bytes)
	if r.Bytes <= 0 || int64(len(data)) <= r.Bytes {
		t.Fatalf("capture (%d bytes) is not larger than the migration's %d bytes: it missed the transfer", len(data), r.Bytes)
	}
	if m := secDropped.FindStringSubmatch(tdOut); m == nil {
		t.Errorf("tcpdump printed no drop counter: %s", tdOut)
	} else if m[1] != "0" {
		t.Errorf("tcpdump dropped %s packets: the capture may miss a leak", m[1])
	}
	if !bytes.Contains(data, []byte(canary)) {
		t.Fatalf("control: the clear-text marker sent over the overlay is not in the capture, so it would not show a leak either")
	}
	if bytes.Contains(data, []byte(secret)) {
		t.Errorf("the container's secret crossed the underlay in clear during the migration")
	}
	if bytes.Contains(data, raw) {
		t.Errorf("the container's secret (hex-decoded) crossed the underlay in clear during the migration")
	}

	// Control: the secret is in the process's memory on the destination,
	// where a plain search finds it.
	if got := l.get("sec"); got.Host != "edge-2" || got.Status != "running" {
		t.Fatalf("after migration: %+v", got)
	}
	stOut, err := exec.Command("runc", "--root", filepath.Join(labDir, "edge-2", "runc"), "state", "sec").CombinedOutput()
	if err != nil {
		t.Fatalf("runc state sec: %v\n%s", err, stOut)
	}
	var rs struct{ Pid int }
	if err := json.Unmarshal(stOut, &rs); err != nil || rs.Pid <= 0 {
		t.Fatalf("runc state sec: %v\n%s", err, stOut)
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", rs.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(env, []byte("COAT_SECRET="+secret)) {
		t.Fatalf("control: the secret is not in the restored process's environment (pid %d):\n%q", rs.Pid, env)
	}
	if out, err := l.ctl(c.IP, "get", "probe"); err != nil || out != canary {
		t.Errorf("container state after migration: %v %q, want %q", err, out, canary)
	}

	// No checkpoint image is left on either host (the source removes its
	// copy in the background once the destination runs the container).
	deadline := time.Now().Add(3 * time.Second)
	left := secLeftImages(labDir)
	for len(left) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		left = secLeftImages(labDir)
	}
	if len(left) > 0 {
		t.Errorf("checkpoint images left on disk 3 s after the migration:\n%s", strings.Join(left, "\n"))
	}

	// The directories that hold images are not open to other users.
	for _, d := range []struct {
		path     string
		optional bool
	}{
		{labDir, false},
		{filepath.Join(labDir, "edge-1"), false},
		{filepath.Join(labDir, "edge-1", "checkpoints"), true},
		{filepath.Join(labDir, "edge-2"), false},
		{filepath.Join(labDir, "edge-2", "incoming"), true},
	} {
		fi, err := os.Stat(d.path)
		if d.optional && errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Errorf("stat %s: %v", d.path, err)
			continue
		}
		if fi.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s is %v: other users can reach what it holds", d.path, fi.Mode().Perm())
		}
	}
}
