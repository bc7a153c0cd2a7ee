package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newPKI makes a CA in a fresh directory and issues the named certificates.
func newPKI(t *testing.T, names ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if err := EnsureCA(dir); err != nil {
		t.Fatalf("EnsureCA: %v", err)
	}
	for _, n := range names {
		role := RoleHost
		if n == "cli" {
			role = RoleAdmin
		}
		if err := Issue(dir, n, role, []net.IP{net.ParseIP("10.201.0.11")}); err != nil {
			t.Fatalf("Issue %s: %v", n, err)
		}
	}
	return dir
}

func serverConfig(t *testing.T, dir, name string) *tls.Config {
	t.Helper()
	c, err := FilesFor(dir, name).ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func clientConfig(t *testing.T, dir, name string) *tls.Config {
	t.Helper()
	c, err := FilesFor(dir, name).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type serverResult struct {
	peer []*x509.Certificate
	err  error
}

// serve accepts one connection with cfg, completes the handshake and
// echoes one line; it reports the handshake's outcome.
func serve(t *testing.T, cfg *tls.Config) (addr string, res <-chan serverResult) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan serverResult, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- serverResult{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			ch <- serverResult{err: err}
			return
		}
		ch <- serverResult{peer: tc.ConnectionState().PeerCertificates}
		_, _ = io.CopyN(tc, tc, 5)
	}()
	return ln.Addr().String(), ch
}

// dial connects with cfg and exchanges a few bytes; with TLS 1.3 a client
// learns that the server refused its certificate only when it reads.
func dial(addr string, cfg *tls.Config) error {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "hello" {
		return errors.New("bad echo")
	}
	return nil
}

func wait(t *testing.T, ch <-chan serverResult) serverResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish")
	}
	return serverResult{}
}

func TestMutualTLS(t *testing.T) {
	dir := newPKI(t, "edge-1", "cli")
	addr, res := serve(t, serverConfig(t, dir, "edge-1"))

	cc := clientConfig(t, dir, "cli")
	cc.ServerName = "edge-1"
	if err := dial(addr, cc); err != nil {
		t.Fatalf("client with a cluster certificate: %v", err)
	}
	r := wait(t, res)
	if r.err != nil {
		t.Fatalf("server handshake: %v", r.err)
	}
	if len(r.peer) == 0 || r.peer[0].Subject.CommonName != "cli" {
		t.Errorf("server saw peer %v, want CN cli", r.peer)
	}
}

// The server certificate is valid for its name, localhost and 127.0.0.1,
// and for the IPs it was issued with.
func TestServerNames(t *testing.T) {
	dir := newPKI(t, "edge-1", "cli")
	for _, name := range []string{"edge-1", "localhost", "127.0.0.1", "10.201.0.11", "other-host"} {
		t.Run(name, func(t *testing.T) {
			addr, res := serve(t, serverConfig(t, dir, "edge-1"))
			cc := clientConfig(t, dir, "cli")
			cc.ServerName = name
			err := dial(addr, cc)
			wait(t, res)
			if ok := name != "other-host"; (err == nil) != ok {
				t.Errorf("dial as %q: err = %v, want ok=%v", name, err, ok)
			}
		})
	}
}

func TestClientFromOtherCARefused(t *testing.T) {
	dir := newPKI(t, "edge-1")
	other := newPKI(t, "intruder")
	addr, res := serve(t, serverConfig(t, dir, "edge-1"))

	// The intruder trusts the real CA (so it accepts the server) but its
	// own certificate comes from another CA.
	cc := clientConfig(t, other, "intruder")
	real := clientConfig(t, dir, "edge-1")
	cc.RootCAs = real.RootCAs
	cc.ServerName = "edge-1"
	if err := dial(addr, cc); err == nil {
		t.Error("client with a foreign certificate got through")
	}
	r := wait(t, res)
	if r.err == nil {
		t.Fatal("server accepted a certificate from another CA")
	}
	var unknown x509.UnknownAuthorityError
	if !errors.As(r.err, &unknown) && !strings.Contains(r.err.Error(), "certificate") {
		t.Errorf("server error %v, want a certificate verification failure", r.err)
	}
}

func TestClientWithoutCertificateRefused(t *testing.T) {
	dir := newPKI(t, "edge-1")
	addr, res := serve(t, serverConfig(t, dir, "edge-1"))
	cc := clientConfig(t, dir, "edge-1")
	cc.Certificates = nil
	cc.ServerName = "edge-1"
	if err := dial(addr, cc); err == nil {
		t.Error("client without a certificate got through")
	}
	r := wait(t, res)
	if r.err == nil || !strings.Contains(r.err.Error(), "certificate") {
		t.Errorf("server handshake err = %v, want a missing-certificate error", r.err)
	}
}

func TestServerFromOtherCARefusedByClient(t *testing.T) {
	dir := newPKI(t, "cli")
	other := newPKI(t, "edge-1")
	addr, res := serve(t, serverConfig(t, other, "edge-1"))
	cc := clientConfig(t, dir, "cli")
	cc.ServerName = "edge-1"
	err := dial(addr, cc)
	wait(t, res)
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("dial to a server from another CA: err = %v, want UnknownAuthorityError", err)
	}
}

func TestFileModes(t *testing.T) {
	dir := newPKI(t, "edge-1")
	want := map[string]os.FileMode{
		".":          os.ModeDir | 0o700,
		"ca.key":     0o600,
		"edge-1.key": 0o600,
		"ca.crt":     0o644,
		"edge-1.crt": 0o644,
		// A host's client certificate, apart from its server's.
		"edge-1-client.key": 0o600,
		"edge-1-client.crt": 0o644,
	}
	for name, mode := range want {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != mode {
			t.Errorf("%s mode = %v, want %v", name, fi.Mode(), mode)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 6 {
		t.Errorf("pki dir holds %d files, want 6", len(entries))
	}
}

func TestCertificateContents(t *testing.T) {
	dir := newPKI(t, "edge-1")
	read := func(name string) *x509.Certificate {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil || blk.Type != "CERTIFICATE" {
			t.Fatalf("%s is not a PEM certificate", name)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ca, leaf := read("ca.crt"), read("edge-1.crt")
	if !ca.IsCA || leaf.IsCA {
		t.Errorf("IsCA: ca %v, leaf %v", ca.IsCA, leaf.IsCA)
	}
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		t.Errorf("leaf not signed by the CA: %v", err)
	}
	var ips []string
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, ip.String())
	}
	if got := strings.Join(ips, ","); got != "10.201.0.11,127.0.0.1" {
		t.Errorf("IP SANs = %s", got)
	}
	if got := strings.Join(leaf.DNSNames, ","); got != "edge-1,localhost" {
		t.Errorf("DNS SANs = %s", got)
	}
	if leaf.Subject.CommonName != "edge-1" {
		t.Errorf("CN = %q", leaf.Subject.CommonName)
	}
	if time.Until(leaf.NotAfter) < 365*24*time.Hour || time.Since(leaf.NotBefore) < 0 {
		t.Errorf("validity %v..%v", leaf.NotBefore, leaf.NotAfter)
	}
	if got := strings.Join(leaf.Subject.Organization, ","); got != string(RoleHost) {
		t.Errorf("O = %q, want %s", got, RoleHost)
	}
	client := read("edge-1-client.crt")
	if client.Subject.CommonName != "edge-1" || strings.Join(client.Subject.Organization, ",") != string(RoleHost) {
		t.Errorf("client certificate subject %v", client.Subject)
	}
	if len(client.IPAddresses) != 1 || client.IPAddresses[0].String() != "10.201.0.11" || len(client.DNSNames) != 0 {
		t.Errorf("client certificate SANs %v %v, want the underlay IP only", client.IPAddresses, client.DNSNames)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	// Usages are separate: the server certificate serves, the client one
	// calls, neither does the other's job.
	for _, tc := range []struct {
		what  string
		c     *x509.Certificate
		usage x509.ExtKeyUsage
		ok    bool
	}{
		{"server cert as server", leaf, x509.ExtKeyUsageServerAuth, true},
		{"server cert as client", leaf, x509.ExtKeyUsageClientAuth, false},
		{"client cert as client", client, x509.ExtKeyUsageClientAuth, true},
		{"client cert as server", client, x509.ExtKeyUsageServerAuth, false},
	} {
		_, err := tc.c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{tc.usage}})
		if (err == nil) != tc.ok {
			t.Errorf("%s: verify err = %v, want ok=%v", tc.what, err, tc.ok)
		}
	}
}

// EnsureCA and Issue keep what exists: re-running `coat init` must not
// invalidate every certificate in the cluster.
func TestIdempotent(t *testing.T) {
	dir := newPKI(t, "edge-1")
	before := map[string][]byte{}
	for _, f := range []string{"ca.crt", "ca.key", "edge-1.crt", "edge-1.key", "edge-1-client.crt", "edge-1-client.key"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		before[f] = b
	}
	if err := EnsureCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := Issue(dir, "edge-1", RoleHost, nil); err != nil {
		t.Fatal(err)
	}
	for f, b := range before {
		after, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, after) {
			t.Errorf("%s rewritten", f)
		}
	}
}

// Issue must not write into the caller's slice (append onto ips).
func TestIssueDoesNotClobberCallerSlice(t *testing.T) {
	dir := newPKI(t)
	backing := []net.IP{net.ParseIP("10.201.0.11"), net.ParseIP("192.0.2.99")}
	ips := backing[:1] // spare capacity
	if err := Issue(dir, "edge-1", RoleHost, ips); err != nil {
		t.Fatal(err)
	}
	if got := backing[1].String(); got != "192.0.2.99" {
		t.Errorf("caller's backing array changed: %s", got)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	if err := Issue(dir, "edge-1", RoleHost, nil); err == nil {
		t.Error("Issue without a CA succeeded")
	}
	_, err := FilesFor(dir, "nobody").ServerConfig()
	if err == nil || !strings.Contains(err.Error(), "coat init") {
		t.Errorf("missing files: err = %v, want a hint to run coat init", err)
	}
	d := newPKI(t, "edge-1")
	if err := os.WriteFile(filepath.Join(d, "ca.crt"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := FilesFor(d, "edge-1").ClientConfig(); err == nil {
		t.Error("ClientConfig with a garbage CA file succeeded")
	}
}

func TestConfigs(t *testing.T) {
	dir := newPKI(t, "edge-1")
	s, c := serverConfig(t, dir, "edge-1"), clientConfig(t, dir, "edge-1")
	if s.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("server ClientAuth = %v", s.ClientAuth)
	}
	if s.MinVersion < tls.VersionTLS12 || c.MinVersion < tls.VersionTLS12 {
		t.Errorf("min versions %x/%x", s.MinVersion, c.MinVersion)
	}
	if c.InsecureSkipVerify {
		t.Error("client skips verification")
	}
}

// A host's server certificate cannot log in as a client: the server
// refuses it in the handshake.
func TestServerCertificateRefusedAsClient(t *testing.T) {
	dir := newPKI(t, "edge-1", "edge-2")
	addr, res := serve(t, serverConfig(t, dir, "edge-1"))
	cc := clientConfig(t, dir, "edge-2")
	stolen, err := tls.LoadX509KeyPair(filepath.Join(dir, "edge-2.crt"), filepath.Join(dir, "edge-2.key"))
	if err != nil {
		t.Fatal(err)
	}
	cc.Certificates = []tls.Certificate{stolen}
	cc.ServerName = "edge-1"
	if err := dial(addr, cc); err == nil {
		t.Error("a server certificate got through as a client")
	}
	if r := wait(t, res); r.err == nil {
		t.Error("server accepted a client presenting a server-only certificate")
	}
}

func TestIdentify(t *testing.T) {
	dir := newPKI(t, "edge-1", "cli")
	if err := Issue(dir, "etcd", RoleEtcd, nil); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]Identity{
		"edge-1.crt":        {Name: "edge-1", Role: RoleHost},
		"edge-1-client.crt": {Name: "edge-1", Role: RoleHost},
		"cli.crt":           {Name: "cli", Role: RoleAdmin},
		"etcd.crt":          {Name: "etcd", Role: RoleEtcd},
	} {
		c, err := ReadCert(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		id, err := Identify(c)
		if err != nil || id.Name != want.Name || id.Role != want.Role || id.Serial != SerialOf(c) {
			t.Errorf("%s: %+v %v, want %+v", file, id, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "cli-client.crt")); err == nil {
		t.Error("an admin got a second certificate")
	}
	if _, err := Identify(&x509.Certificate{SerialNumber: serial()}); err == nil {
		t.Error("a certificate without a role was identified")
	}
}

func TestIssueRefusals(t *testing.T) {
	dir := newPKI(t, "edge-1", "cli")
	if err := Issue(dir, "edge-1", RoleAdmin, nil); err == nil || !strings.Contains(err.Error(), "choose another name") {
		t.Errorf("edge-1 as admin: %v, want a refusal (the name is a host's)", err)
	}
	if err := Issue(dir, "cli", RoleHost, nil); err == nil {
		t.Error("cli as host: issued; etcd would take it for the admin")
	}
	if err := Issue(dir, "root", RoleHost, nil); err == nil {
		t.Error("a certificate named root was issued (etcd's superuser)")
	}
	if err := Issue(dir, "x", Role("coat:other"), nil); err == nil {
		t.Error("unknown role accepted")
	}
}

func TestRevoke(t *testing.T) {
	dir := newPKI(t, "edge-1", "edge-2")
	r, err := Revoke(dir, "edge-2")
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := ReadCert(filepath.Join(dir, "edge-2.crt"))
	cl, _ := ReadCert(filepath.Join(dir, "edge-2-client.crt"))
	if r.Name != "edge-2" || !slicesEqual(r.Serials, []string{SerialOf(srv), SerialOf(cl)}) {
		t.Errorf("revocation %+v", r)
	}
	again, err := Revoke(dir, "edge-2")
	if err != nil || !slicesEqual(again.Serials, r.Serials) {
		t.Errorf("second revoke: %+v %v", again, err)
	}
	all, err := Revocations(dir)
	if err != nil || len(all) != 1 {
		t.Errorf("revocations %+v %v", all, err)
	}
	if err := Issue(dir, "edge-2", RoleHost, nil); err == nil || !strings.Contains(err.Error(), "new name") {
		t.Errorf("re-issue of a revoked name: %v, want a refusal", err)
	}
	if _, err := Revoke(dir, "nobody"); err == nil {
		t.Error("revoked a name without a certificate")
	}
}

func slicesEqual(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

// Certificates from before roles are replaced by Issue, not kept.
func TestIssueReplacesRoleless(t *testing.T) {
	dir := newPKI(t)
	ca, caKey, err := loadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := &x509.Certificate{Subject: pkix.Name{CommonName: "edge-1"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	if err := issueOne(dir, "edge-1", old, ca, caKey); err != nil {
		t.Fatal(err)
	}
	if err := Issue(dir, "edge-1", RoleHost, nil); err != nil {
		t.Fatal(err)
	}
	c, _ := ReadCert(filepath.Join(dir, "edge-1.crt"))
	if id, err := Identify(c); err != nil || id.Role != RoleHost {
		t.Errorf("after Issue: %+v %v", id, err)
	}
}

func TestCheckHost(t *testing.T) {
	dir := newPKI(t, "edge-1", "cli")
	ip := net.ParseIP("10.201.0.11")
	if err := FilesFor(dir, "edge-1").CheckHost("edge-1", ip); err != nil {
		t.Errorf("edge-1's own files: %v", err)
	}
	if err := FilesFor(dir, "edge-1").CheckHost("edge-1", net.ParseIP("10.201.0.12")); err == nil || !strings.Contains(err.Error(), "bound to") {
		t.Errorf("another underlay IP: %v", err)
	}
	if err := FilesFor(dir, "edge-1").CheckHost("edge-2", ip); err == nil {
		t.Error("edge-1's files passed for edge-2")
	}
	if err := FilesFor(dir, "cli").CheckHost("cli", ip); err == nil {
		t.Error("the admin's files passed for a host")
	}
	if err := FilesFor(dir, "nobody").CheckHost("nobody", ip); err == nil || !strings.Contains(err.Error(), "coat init --issue") {
		t.Errorf("missing files: %v", err)
	}
}
