package cli

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/coat-project/coat/internal/pki"
)

// isolate resets the shared flag globals and the COAT_* environment for
// one test, and restores them afterwards.
func isolate(t *testing.T) {
	t.Helper()
	saved := g
	g = globals{lab: "nosuchlabfortest"}
	t.Cleanup(func() { g = saved })
	for _, k := range []string{"COAT_LAB", "COAT_ETCD_ENDPOINTS", "COAT_PKI_DIR", "COAT_CERT_NAME", "COAT_CONFIG"} {
		t.Setenv(k, "")
	}
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "coat.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const fullConfig = `{"etcd_endpoints":"https://file:2379","pki_dir":"/file/pki","cert_name":"filecert"}`

func TestResolvePrecedence(t *testing.T) {
	for _, tc := range []struct {
		name     string
		flags    globals
		env      map[string]string
		wantEps  []string
		wantPKI  pki.Files
		fileBody string
	}{
		{
			name:     "file only",
			fileBody: fullConfig,
			wantEps:  []string{"https://file:2379"},
			wantPKI:  pki.FilesFor("/file/pki", "filecert"),
		},
		{
			name:     "env beats file",
			fileBody: fullConfig,
			env:      map[string]string{"COAT_ETCD_ENDPOINTS": "https://env1:2379,https://env2:2379", "COAT_PKI_DIR": "/env/pki", "COAT_CERT_NAME": "envcert"},
			wantEps:  []string{"https://env1:2379", "https://env2:2379"},
			wantPKI:  pki.FilesFor("/env/pki", "envcert"),
		},
		{
			name:     "flag beats env and file",
			fileBody: fullConfig,
			flags:    globals{endpoints: "https://flag:2379", pkiDir: "/flag/pki", certName: "flagcert"},
			env:      map[string]string{"COAT_ETCD_ENDPOINTS": "https://env:2379", "COAT_PKI_DIR": "/env/pki", "COAT_CERT_NAME": "envcert"},
			wantEps:  []string{"https://flag:2379"},
			wantPKI:  pki.FilesFor("/flag/pki", "flagcert"),
		},
		{
			name:     "mixed sources per key",
			fileBody: fullConfig,
			flags:    globals{pkiDir: "/flag/pki"},
			env:      map[string]string{"COAT_CERT_NAME": "envcert"},
			wantEps:  []string{"https://file:2379"},
			wantPKI:  pki.FilesFor("/flag/pki", "envcert"),
		},
		{
			name:     "cert name defaults to cli",
			fileBody: `{"etcd_endpoints":"https://file:2379","pki_dir":"/file/pki"}`,
			wantEps:  []string{"https://file:2379"},
			wantPKI:  pki.FilesFor("/file/pki", "cli"),
		},
		{
			name:     "no file, flags only",
			fileBody: `{}`,
			flags:    globals{endpoints: "https://a:1,https://b:2", pkiDir: "/p"},
			wantEps:  []string{"https://a:1", "https://b:2"},
			wantPKI:  pki.FilesFor("/p", "cli"),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isolate(t)
			f := tc.flags
			f.lab = g.lab
			f.config = writeConfig(t, tc.fileBody)
			g = f
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			r, err := resolve()
			if err != nil {
				t.Fatalf("resolve: %v", err)
			}
			if !slices.Equal(r.endpoints, tc.wantEps) {
				t.Errorf("endpoints = %q, want %q", r.endpoints, tc.wantEps)
			}
			if r.pki != tc.wantPKI {
				t.Errorf("pki = %+v, want %+v", r.pki, tc.wantPKI)
			}
		})
	}
}

// Without endpoints or a PKI directory, resolve falls back to the lab and
// says so when the lab is not up.
func TestResolveFallsBackToLab(t *testing.T) {
	isolate(t)
	g.config = writeConfig(t, `{"pki_dir":"/file/pki"}`)
	_, err := resolve()
	if err == nil {
		t.Fatal("resolve with no endpoints and no lab: want an error")
	}
	// As root the lab "is not up"; as a user /var/lib/coat/labs may be
	// unreadable. Either way the error names the lab.
	for _, want := range []string{"no cluster configured", "nosuchlabfortest"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestLoadFileConfigSources(t *testing.T) {
	isolate(t)
	flagFile := writeConfig(t, `{"etcd_endpoints":"from-flag"}`)
	envFile := writeConfig(t, `{"etcd_endpoints":"from-env"}`)

	t.Setenv("COAT_CONFIG", envFile)
	fc, err := loadFileConfig()
	if err != nil || fc.EtcdEndpoints != "from-env" {
		t.Errorf("COAT_CONFIG: got %+v, %v", fc, err)
	}
	g.config = flagFile
	fc, err = loadFileConfig()
	if err != nil || fc.EtcdEndpoints != "from-flag" {
		t.Errorf("--config over COAT_CONFIG: got %+v, %v", fc, err)
	}
}

func TestLoadFileConfigErrors(t *testing.T) {
	isolate(t)
	bad := writeConfig(t, `{"etcd_endpoints": `)
	g.config = bad
	_, err := loadFileConfig()
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad JSON: error %v does not name %s", err, bad)
	}
	if _, err := resolve(); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("resolve with bad JSON: error %v does not name %s", err, bad)
	}

	missing := filepath.Join(t.TempDir(), "absent.json")
	g.config = missing
	if _, err := loadFileConfig(); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: error %v does not name %s", err, missing)
	}
}

func TestEnvOr(t *testing.T) {
	t.Setenv("COAT_TEST_ENVOR", "")
	if got := envOr("COAT_TEST_ENVOR", "def"); got != "def" {
		t.Errorf("unset: %q", got)
	}
	t.Setenv("COAT_TEST_ENVOR", "v")
	if got := envOr("COAT_TEST_ENVOR", "def"); got != "v" {
		t.Errorf("set: %q", got)
	}
}

func TestSplitList(t *testing.T) {
	for in, want := range map[string][]string{
		"":               nil,
		"a":              {"a"},
		"a,b":            {"a", "b"},
		" a , b ,, c , ": {"a", "b", "c"},
		",,,":            nil,
	} {
		if got := splitList(in); !slices.Equal(got, want) {
			t.Errorf("splitList(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRootCommands(t *testing.T) {
	saved := g
	t.Cleanup(func() { g = saved })
	root := newRoot()
	visible := map[string]bool{}
	hidden := map[string]bool{}
	for _, c := range root.Commands() {
		if c.Hidden {
			hidden[c.Name()] = true
		} else {
			visible[c.Name()] = true
		}
	}
	for _, n := range []string{"run", "ps", "logs", "rm", "image", "migrate", "follow", "unfollow", "hosts", "doctor", "lab", "bench", "init", "agent"} {
		if !visible[n] {
			t.Errorf("no visible %q command (visible %v, hidden %v)", n, visible, hidden)
		}
	}
	if !hidden["etcd"] {
		t.Errorf("etcd is not a hidden command (hidden %v)", hidden)
	}
	for _, n := range []string{"lab up", "lab down", "lab exec", "lab roam", "image import"} {
		c, rest, err := root.Find(strings.Fields(n))
		if err != nil || len(rest) != 0 || c.CommandPath() != "coat "+n {
			t.Errorf("%q: found %v, rest %q, err %v", n, c.CommandPath(), rest, err)
		}
	}
	for _, f := range []string{"lab", "etcd-endpoints", "pki-dir", "cert-name", "config"} {
		if root.PersistentFlags().Lookup(f) == nil {
			t.Errorf("no persistent --%s flag", f)
		}
	}
}

// captureStderr runs fn with os.Stderr redirected and returns what it wrote.
func captureStderr(t *testing.T, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	defer func() {
		os.Stderr = old
	}()
	fn()
	os.Stderr = old
	w.Close()
	out := <-done
	r.Close()
	return out
}

// These fail on validation, before any connection: with no cluster
// configured, a later failure would say "no cluster configured".
func TestRunValidatesBeforeConnecting(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--name", "Bad_Name", "--host", "h", "--image", "i", "--", "x"}, `invalid name "Bad_Name"`},
		{[]string{"run", "--name", "ok", "--host", "h"}, "no image: give one"},
		{[]string{"run", "--name", "ok", "--image", "i", "--", "x"}, "--host and --name are required"},
		{[]string{"run", "--name", "ok", "--host", "h", "--workdir", "srv", "i"}, `working directory "srv": want an absolute path`},
		{[]string{"image", "pull", "../a"}, `invalid image "../a"`},
		{[]string{"image", "load", "--name", "A", "f.tar"}, `invalid image "A"`},
		{[]string{"image", "rm", "a:b:c"}, `invalid image "a:b:c"`},
		{[]string{"image", "rm", "--host", "../edge-1", "sample"}, `--host: invalid host name "../edge-1"`},
		{[]string{"image", "rm", "--host", "edge-1", "a:b:c"}, `invalid image "a:b:c"`},
		{[]string{"run", "--name", "ok", "--host", "h", "--image", "i", "--env", "NOEQUALS", "--", "x"}, `--env "NOEQUALS"`},
		{[]string{"run", "--name", "ok", "--host", "h", "--image", "../containers/a", "--", "x"}, `invalid image "../containers/a"`},
		{[]string{"run", "--name", "ok", "--host", "h", "--image", "/var/lib", "--", "x"}, "no leading '/'"},
		{[]string{"run", "--name", "ok", "--host", "../h", "--image", "i", "--", "x"}, `invalid host name "../h"`},
		{[]string{"rm", "../x"}, `invalid name "../x"`},
		{[]string{"logs", "A"}, `invalid name "A"`},
		{[]string{"migrate", "x/y", "--to", "edge-2"}, `invalid name "x/y"`},
		{[]string{"migrate", "web", "--to", "edge_2"}, `invalid host name "edge_2"`},
		{[]string{"image", "import", "../a", "/tmp"}, `invalid image "../a"`},
		{[]string{"image", "pull", "a@sha256:00"}, `bad digest "sha256:00"`},
		{[]string{"image", "pull", "a@sha512:" + strings.Repeat("0", 128)}, "bad digest"},
		{[]string{"image", "rm", "a@" + strings.Repeat("0", 64)}, "bad digest"},
		{[]string{"hosts", "forget", "../edge-1"}, `invalid host name "../edge-1"`},
		{[]string{"follow", "web"}, "--client is required"},
		{[]string{"follow", "Web", "--client", "client"}, `invalid name "Web"`},
		{[]string{"follow", "web", "--client", "../c"}, `--client: invalid host name "../c"`},
		{[]string{"unfollow", "x/y"}, `invalid name "x/y"`},
		{[]string{"agent", "--name", "../h", "--underlay-ip", "10.0.0.1", "--subnet", "10.202.0.0/24", "--pki-dir", "/x"}, `invalid host name "../h"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			isolate(t)
			var code int
			out := captureStderr(t, func() { code = Main(context.Background(), tc.args) })
			if code == 0 {
				t.Fatalf("Main returned 0")
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("stderr %q lacks %q", out, tc.want)
			}
			if strings.Contains(out, "no cluster configured") {
				t.Errorf("tried to connect: %q", out)
			}
		})
	}
}

func TestMainUnknownCommand(t *testing.T) {
	isolate(t)
	var code int
	out := captureStderr(t, func() { code = Main(context.Background(), []string{"no-such-command"}) })
	if code == 0 || !strings.Contains(out, "no-such-command") {
		t.Errorf("code %d, stderr %q", code, out)
	}
}

func TestExitError(t *testing.T) {
	if got := (exitError{code: 3}).Error(); got != "exit 3" {
		t.Errorf("exitError.Error() = %q", got)
	}
}
