package cli

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/coat-project/coat/internal/pki"
)

// A cluster's PKI in dir: a CA, a store certificate for 127.0.0.1 and an
// admin's.
func testPKI(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := pki.EnsureCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := pki.Issue(dir, "etcd", pki.RoleEtcd, []net.IP{net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	if err := pki.Issue(dir, "cli", pki.RoleAdmin, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

// serveTLS listens on 127.0.0.1 with dir's store certificate, requiring
// client certificates of dir's CA, and greets every accepted client (as
// a gRPC server sends its settings first).
func serveTLS(t *testing.T, dir string) string {
	t.Helper()
	sc, err := pki.FilesFor(dir, "etcd").ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if c.(*tls.Conn).Handshake() == nil {
					_, _ = c.Write([]byte("hello"))
				}
				var b [1]byte
				_, _ = c.Read(b[:])
			}()
		}
	}()
	return "https://" + ln.Addr().String()
}

func clientConfig(t *testing.T, dir string) *tls.Config {
	t.Helper()
	tc, err := pki.FilesFor(dir, "cli").ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

func TestCertRefused(t *testing.T) {
	ours, theirs := testPKI(t), testPKI(t)
	store := serveTLS(t, ours)
	closed := func() string { // a port nobody listens on
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return "https://" + ln.Addr().String()
	}()
	// Trusts the store, presents another cluster's certificate: only the
	// store's alert can tell.
	mixed := clientConfig(t, theirs)
	mixed.RootCAs = clientConfig(t, ours).RootCAs
	for _, c := range []struct {
		what      string
		endpoints []string
		tc        *tls.Config
		want      string // "" = no verdict
	}{
		{"same cluster", []string{store}, clientConfig(t, ours), ""},
		{"another cluster's certificates", []string{store}, clientConfig(t, theirs), "certificate signed by unknown authority"},
		{"our certificate refused", []string{store}, mixed, "remote error: tls:"},
		{"unreachable", []string{closed}, clientConfig(t, theirs), ""},
		{"one endpoint unreachable, one refusing", []string{closed, store}, clientConfig(t, theirs), ""},
		{"plain http", []string{"http://127.0.0.1:1"}, clientConfig(t, theirs), ""},
	} {
		t.Run(c.what, func(t *testing.T) {
			start := time.Now()
			err := certRefused(context.Background(), c.endpoints, c.tc)
			switch {
			case c.want == "" && err != nil:
				t.Errorf("certRefused: %v, want no verdict", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("certRefused: %v, want an error with %q", err, c.want)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("took %v: a probe is bounded by 2 s", d)
			}
		})
	}
}
