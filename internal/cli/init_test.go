package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coat-project/coat/internal/pki"
)

// coat init without etcd: certificates with roles, refusals that say what
// to do, and revocation recorded (but reported as not yet done in etcd).
func TestInit(t *testing.T) {
	isolate(t)
	dir := filepath.Join(t.TempDir(), "pki")
	cfg := writeConfig(t, "{}")
	run := func(args ...string) (int, string) {
		var code int
		out := captureStderr(t, func() {
			code = Main(context.Background(), append([]string{"init", "--config", cfg, "--pki-dir", dir}, args...))
		})
		return code, out
	}
	if code, out := run("--issue", "edge-1=10.201.0.11", "--issue-admin", "ops"); code != 0 {
		t.Fatalf("init: %d %s", code, out)
	}
	for file, want := range map[string]pki.Role{"cli.crt": pki.RoleAdmin, "ops.crt": pki.RoleAdmin, "edge-1.crt": pki.RoleHost, "edge-1-client.crt": pki.RoleHost} {
		c, err := pki.ReadCert(filepath.Join(dir, file))
		if err != nil {
			t.Fatal(err)
		}
		if id, err := pki.Identify(c); err != nil || id.Role != want {
			t.Errorf("%s: %+v %v, want role %s", file, id, err, want)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--issue", "edge-2"}, "want NAME=UNDERLAY-IP"},
		{[]string{"--issue", "Bad_Name=10.0.0.1"}, "invalid name"},
		{[]string{"--issue", "ops=10.0.0.1"}, "choose another name"},
		{[]string{"--revoke", "nobody"}, "no certificate"},
		{[]string{"--revoke", "edge-1"}, "give --etcd-endpoints"},
		{[]string{"--issue", "edge-1=10.201.0.11"}, "choose a new name"},
	} {
		code, out := run(tc.args...)
		if code == 0 || !strings.Contains(out, tc.want) {
			t.Errorf("init %v: exit %d, stderr %q, want a failure saying %q", tc.args, code, out, tc.want)
		}
	}
	rs, err := pki.Revocations(dir)
	if err != nil || len(rs) != 1 || rs[0].Name != "edge-1" {
		t.Errorf("revocations: %+v %v", rs, err)
	}
}

// coat init --overlay-cidr: bad values, an underlay inside the range, and
// no etcd to record it in are refused before anything is written.
func TestInitOverlayCIDRBadInput(t *testing.T) {
	isolate(t)
	dir := filepath.Join(t.TempDir(), "pki")
	cfg := writeConfig(t, "{}")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--overlay-cidr", "10.96.0.0/30"}, "between /8 and /27"},
		{[]string{"--overlay-cidr", "10.96.1.0/16"}, "did you mean 10.96.0.0/16"},
		{[]string{"--overlay-cidr", "fd00::/64"}, "only IPv4"},
		{[]string{"--overlay-cidr", ""}, "want an IPv4 network"},
		{[]string{"--overlay-cidr", "10.201.0.0/16", "--issue", "edge-1=10.201.0.11"}, "contains the underlay address 10.201.0.11"},
		{[]string{"--overlay-cidr", "10.96.0.0/16"}, "give --etcd-endpoints"},
	} {
		var code int
		out := captureStderr(t, func() {
			code = Main(context.Background(), append([]string{"init", "--config", cfg, "--pki-dir", dir}, tc.args...))
		})
		if code == 0 || !strings.Contains(out, tc.want) {
			t.Errorf("init %v: exit %d, stderr %q, want a failure saying %q", tc.args, code, out, tc.want)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("init %v wrote %s (%v)", tc.args, dir, err)
		}
	}
}
