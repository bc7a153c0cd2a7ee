package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/coat-project/coat/internal/nstest"
)

// authzEtcd is an etcd client presenting cert.
func authzEtcd(t *testing.T, url string, cfg *tls.Config) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(url, ","), TLS: cfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// authzFrom is an HTTP client with cfg whose connections start in node's
// network namespace, as the node's agent's do (a host's certificate is
// good only from the host's underlay IP).
func authzFrom(l *testLab, node string, cfg *tls.Config) *http.Client {
	ns := "/run/netns/coat-" + l.name + "-" + node
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := nstest.Run(ns, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DialContext: dial, DisableKeepAlives: true}}
}

func authzCert(t *testing.T, labDir, name string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(labDir, "pki", name+".crt"), filepath.Join(labDir, "pki", name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A host's certificate gets a host nothing beyond its part of the
// migrations recorded with it: with edge-2's certificate, nobody can run,
// remove, migrate or read another host's container, prepare a namespace
// with another container's address on edge-1, nor write edge-1's keys in
// etcd; and once edge-2 is revoked, its certificate opens nothing.
func TestAuthz(t *testing.T) {
	requireRoot(t)
	l := newLab(t, 2)
	labDir := secLabDir(l)
	st := secState(t, l)
	pool := secLabCA(t, l)
	victim := l.runSample("victim", "edge-1")
	before := l.must("ps", "--json")
	hostsBefore := l.must("hosts", "--json")
	var edge1 string
	for _, h := range secHosts(t, l) {
		if h.Name == "edge-1" {
			edge1 = h.API
		}
	}
	if edge1 == "" {
		t.Fatal("edge-1 not in hosts")
	}
	e2client := authzCert(t, labDir, "edge-2-client")
	e2cfg := secClientTLS(pool, &e2client)

	// The reviewer's case, through the CLI on edge-2: edge-2's certificate
	// in place of the admin's.
	t.Run("cli with a host certificate", func(t *testing.T) {
		for _, args := range [][]string{
			{"rm", "victim"},
			{"migrate", "victim", "--to", "edge-2"},
			{"logs", "victim"},
			{"run", "--host", "edge-1", "--name", "intruder", "--image", "sample", "--", "/bin/coat-sample", "server"},
			{"run", "--host", "edge-2", "--name", "intruder", "--image", "sample", "--", "/bin/coat-sample", "server"},
		} {
			full := append([]string{"lab", "exec", "edge-2", "--", filepath.Join(binDir, "coat"), args[0], "--cert-name", "edge-2"}, args[1:]...)
			out, timedOut, err := secCoat(l, 30*time.Second, full...)
			what := strings.Join(args, " ")
			var ee *exec.ExitError
			switch {
			case timedOut:
				t.Errorf("coat %s as edge-2: no exit within 30 s\n%s", what, out)
			case !errors.As(err, &ee) || ee.ExitCode() <= 0:
				t.Errorf("coat %s as edge-2: err %v, want a non-zero exit\n%s", what, err, out)
			case !strings.Contains(out, "forbidden"):
				t.Errorf("coat %s as edge-2: want a refusal that says forbidden, got\n%s", what, out)
			}
			t.Logf("coat %s as edge-2: %s", what, secFirstLine(out))
		}
	})

	// Straight at edge-1's API with edge-2's client certificate, from
	// edge-2.
	t.Run("agent api", func(t *testing.T) {
		runBody, _ := json.Marshal(map[string]any{"name": "intruder", "image": "sample", "args": []string{"/bin/coat-sample", "server"}})
		// The old prepare body: a container record with the victim's
		// address under a new name (now ignored: the name is what counts).
		evil, _ := json.Marshal(map[string]any{"container": map[string]any{
			"name": "evil", "host": "edge-2", "image": "sample", "ip": victim.IP, "mac": victim.MAC,
			"args": []string{"/bin/coat-sample", "server"}, "status": "migrating", "migrating_to": "edge-1",
		}})
		cl := authzFrom(l, "edge-2", e2cfg)
		layerBody := secTar(t, "planted", "x\n")
		sum := sha256.Sum256(layerBody)
		layerDigest := "sha256:" + hex.EncodeToString(sum[:])
		for _, r := range []struct {
			op, method, path, ctype string
			body                    []byte
		}{
			{"run", http.MethodPost, "/v1/containers", "application/json", runBody},
			{"rm", http.MethodDelete, "/v1/containers/victim", "", nil},
			{"migrate", http.MethodPost, "/v1/containers/victim/migrate", "application/json", []byte(`{"to":"edge-2"}`)},
			{"logs", http.MethodGet, "/v1/containers/victim/logs", "", nil},
			{"image import", http.MethodPut, "/v1/images/evil", "application/x-tar", secTar(t, "rootfs/planted", "x\n")},
			{"prepare with another container's address", http.MethodPost, "/v1/incoming/evil/prepare", "application/json", evil},
			{"prepare a running container", http.MethodPost, "/v1/incoming/victim/prepare", "application/json", []byte(`{"hold":true}`)},
			{"data", http.MethodPut, "/v1/incoming/victim/data", "application/x-tar", secTar(t, "upper/planted", "x\n")},
			{"restore", http.MethodPost, "/v1/incoming/victim/restore", "application/json", []byte(`{"name":"victim"}`)},
			{"abort", http.MethodPost, "/v1/incoming/victim/abort", "", nil},
			{"tunnel", http.MethodPost, "/v1/tunnel/victim/lazy", "", nil},
			{"image copy", http.MethodGet, "/v1/outgoing/victim/image", "", nil},
			{"image-ready", http.MethodPost, "/v1/incoming/victim/image", "", nil},
			{"layer import", http.MethodPut, "/v1/layers/" + layerDigest, "application/x-tar", layerBody},
			{"layers missing", http.MethodPost, "/v1/layers/missing", "application/json", []byte(`{"layers":["` + layerDigest + `"]}`)},
			{"image of layers", http.MethodPut, "/v1/images/evil/layers", "application/json", []byte(`{"layers":["` + layerDigest + `"]}`)},
			{"layer copy", http.MethodGet, "/v1/outgoing/victim/layers/" + layerDigest, "", nil},
		} {
			req, err := http.NewRequest(r.method, "https://"+edge1+r.path, bytes.NewReader(r.body))
			if err != nil {
				t.Fatal(err)
			}
			if r.ctype != "" {
				req.Header.Set("Content-Type", r.ctype)
			}
			resp, err := cl.Do(req)
			if err != nil {
				t.Errorf("%s: %v", r.op, err)
				continue
			}
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s %s (%s) as edge-2: HTTP %d %s, want 403", r.method, r.path, r.op, resp.StatusCode, b.String())
				continue
			}
			t.Logf("%s: 403 %s", r.op, strings.TrimSpace(b.String()))
		}
		// edge-2's certificate from elsewhere (the root namespace) is
		// refused whatever it asks.
		resp, err := (&http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: e2cfg, DisableKeepAlives: true}}).
			Post("https://"+edge1+"/v1/incoming/victim/abort", "", nil)
		if err != nil {
			t.Errorf("edge-2's certificate from elsewhere: %v", err)
		} else {
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(b.String(), "bound to") {
				t.Errorf("edge-2's certificate from elsewhere: HTTP %d %s, want 403 for the address", resp.StatusCode, b.String())
			}
		}
		// A host's server certificate is no client certificate.
		e2server := authzCert(t, labDir, "edge-2")
		resp, err = authzFrom(l, "edge-2", secClientTLS(pool, &e2server)).Get("https://" + edge1 + "/v1/containers/victim/logs")
		if err == nil {
			resp.Body.Close()
			t.Errorf("edge-2's server certificate as a client: HTTP %d, want a TLS failure", resp.StatusCode)
		} else if !secTLSLayerError(err) {
			t.Errorf("edge-2's server certificate as a client: %v, want a TLS failure", err)
		}
	})

	t.Run("etcd", func(t *testing.T) {
		cli := authzEtcd(t, st.EtcdURL, e2cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if resp, err := cli.Get(ctx, "/coat/hosts/", clientv3.WithPrefix()); err != nil || resp.Count != 2 {
			t.Fatalf("control: edge-2 reads the hosts: %v", err)
		}
		for _, w := range []struct {
			what string
			do   func() error
		}{
			{"overwrite edge-1's host key", func() error {
				_, err := cli.Put(ctx, "/coat/hosts/edge-1", `{"name":"edge-1","underlay_ip":"10.9.9.9","api":"10.9.9.9:7443"}`)
				return err
			}},
			{"delete edge-1's host key", func() error { _, err := cli.Delete(ctx, "/coat/hosts/edge-1"); return err }},
			{"write a revocation", func() error { _, err := cli.Put(ctx, "/coat/revoked/edge-1", `{"name":"edge-1"}`); return err }},
			{"write outside /coat/", func() error { _, err := cli.Put(ctx, "/evil", "x"); return err }},
			{"make itself root", func() error { _, err := cli.UserGrantRole(ctx, "edge-2", "root"); return err }},
			{"turn access control off", func() error { _, err := cli.AuthDisable(ctx); return err }},
		} {
			err := w.do()
			if err == nil || !strings.Contains(err.Error(), "permission denied") {
				t.Errorf("edge-2 could %s: err = %v, want permission denied", w.what, err)
				continue
			}
			t.Logf("%s: %v", w.what, err)
		}
	})

	// Nothing changed.
	if after := l.must("ps", "--json"); after != before {
		t.Errorf("state changed by refused requests:\nbefore %s\nafter %s", before, after)
	}
	if after := l.must("hosts", "--json"); after != hostsBefore {
		t.Errorf("hosts changed by refused requests:\nbefore %s\nafter %s", hostsBefore, after)
	}
	for _, p := range []string{
		filepath.Join(labDir, "edge-1", "netns", "evil"),
		filepath.Join(labDir, "edge-1", "incoming", "evil"),
		filepath.Join(labDir, "edge-1", "incoming", "victim"),
		filepath.Join(labDir, "edge-1", "images", "evil"),
		filepath.Join(labDir, "edge-1", "containers", "intruder"),
		filepath.Join(labDir, "edge-2", "containers", "intruder"),
	} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("a refused request left %s", p)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(labDir, "edge-1", "layers", "*", "rootfs", "planted")); len(m) > 0 {
		t.Errorf("a refused request left the layer %v", m)
	}
	if out, err := l.ctl(victim.IP, "ping"); err != nil || out != "pong" {
		t.Fatalf("victim after the refused requests: %v %q", err, out)
	}

	// Revocation: `coat init --revoke` and edge-2's certificates open
	// nothing any more, while the admin's still work.
	t.Run("revoke", func(t *testing.T) {
		out, timedOut, err := secCoat(l, 60*time.Second, "init", "--pki-dir", filepath.Join(labDir, "pki"), "--revoke", "edge-2", "--etcd-endpoints", st.EtcdURL)
		if err != nil || timedOut {
			t.Fatalf("coat init --revoke edge-2: %v\n%s", err, out)
		}
		t.Logf("coat init --revoke edge-2: %s", strings.TrimSpace(out))
		// etcd refuses it at once.
		cli := authzEtcd(t, st.EtcdURL, e2cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = cli.Get(ctx, "/coat/hosts/", clientv3.WithPrefix())
		cancel()
		if err == nil {
			t.Error("etcd still serves edge-2's revoked certificate")
		} else {
			t.Logf("etcd with the revoked certificate: %v", err)
		}
		// The agents within their next read of the revocations (1 s).
		cl := authzFrom(l, "edge-2", e2cfg)
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := cl.Post("https://"+edge1+"/v1/incoming/victim/abort", "", nil)
			if err != nil && secTLSLayerError(err) {
				t.Logf("edge-1 with the revoked certificate: %v", err)
				break
			}
			if err == nil {
				resp.Body.Close()
			}
			if time.Now().After(deadline) {
				t.Fatalf("edge-1 still completes a handshake with edge-2's revoked certificate 10 s later: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if hs := l.must("hosts"); strings.Contains(hs, "edge-2") {
			t.Errorf("the revoked host is still registered:\n%s", hs)
		}
		if out, err := l.ctl(victim.IP, "ping"); err != nil || out != "pong" {
			t.Errorf("victim after the revocation: %v %q", err, out)
		}
		if c := l.get("victim"); c.Host != "edge-1" || c.Status != "running" {
			t.Errorf("victim after the revocation: %+v", c)
		}
		// The name is not issued again.
		out, _, err = secCoat(l, 30*time.Second, "init", "--pki-dir", filepath.Join(labDir, "pki"), "--issue", "edge-2=10.9.9.9")
		if err == nil || !strings.Contains(out, "new name") {
			t.Errorf("coat init --issue of the revoked name: %v\n%s", err, out)
		}
	})
}
