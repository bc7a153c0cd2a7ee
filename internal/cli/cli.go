// Package cli implements the coat command line: a thin layer that reads
// the cluster state from the store and calls agents through internal/api.
package cli

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/lab"
	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/pki"
	"github.com/coat-project/coat/internal/store"
)

// exitError carries an exit code through cobra.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// Main runs the CLI and returns the process exit code.
func Main(ctx context.Context, args []string) int {
	root := newRoot()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintln(os.Stderr, "coat:", err)
	return 1
}

// globals are the flags every command shares.
type globals struct {
	lab       string
	endpoints string
	pkiDir    string
	certName  string
	config    string
}

var g globals

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "coat",
		Short:         "Live-migrate stateful containers between edge hosts, keeping their TCP connections",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.lab, "lab", envOr("COAT_LAB", lab.DefaultName), "lab whose cluster to use when no endpoints are configured (env COAT_LAB)")
	pf.StringVar(&g.endpoints, "etcd-endpoints", "", "comma-separated etcd endpoints (env COAT_ETCD_ENDPOINTS, config key etcd_endpoints)")
	pf.StringVar(&g.pkiDir, "pki-dir", "", "directory with ca.crt and this client's certificate (env COAT_PKI_DIR, config key pki_dir)")
	pf.StringVar(&g.certName, "cert-name", "", "certificate name in the PKI directory (default cli; env COAT_CERT_NAME)")
	pf.StringVar(&g.config, "config", "", "config file (env COAT_CONFIG; default /etc/coat/coat.json if present)")
	root.AddCommand(
		newRunCmd(), newPsCmd(), newLogsCmd(), newRmCmd(), newImageCmd(), newMigrateCmd(), newDrainCmd(), newFollowCmd(), newUnfollowCmd(), newClientCmd(),
		newHostsCmd(), newEventsCmd(), newDoctorCmd(), newLabCmd(), newChaosCmd(), newAgentCmd(), newEtcdCmd(), newInitCmd(), newBenchCmd(),
	)
	return root
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// fileConfig is the config file's shape.
type fileConfig struct {
	EtcdEndpoints string `json:"etcd_endpoints"`
	PKIDir        string `json:"pki_dir"`
	CertName      string `json:"cert_name"`
}

// resolved is the connection settings after flags, environment, config
// file and the lab default, in that order.
type resolved struct {
	endpoints []string
	pki       pki.Files
}

// loadFileConfig reads the config file: --config, COAT_CONFIG, or
// /etc/coat/coat.json when it exists; none is no error.
func loadFileConfig() (fileConfig, error) {
	var fc fileConfig
	path := g.config
	if path == "" {
		path = os.Getenv("COAT_CONFIG")
	}
	if path == "" {
		if _, err := os.Stat("/etc/coat/coat.json"); err == nil {
			path = "/etc/coat/coat.json"
		}
	}
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return fc, fmt.Errorf("read config: %w", err)
		}
		if fc, err = parseFileConfig(b); err != nil {
			return fc, fmt.Errorf("config %s: %w", path, err)
		}
	}
	return fc, nil
}

// parseFileConfig reads a config file's JSON and checks it: cert_name
// names files in the PKI directory, so it must be a plain name.
func parseFileConfig(b []byte) (fileConfig, error) {
	var fc fileConfig
	if err := json.Unmarshal(b, &fc); err != nil {
		return fileConfig{}, fmt.Errorf("%w: want a JSON object with etcd_endpoints, pki_dir and cert_name", err)
	}
	if fc.CertName != "" && !names.Label(fc.CertName) {
		return fileConfig{}, fmt.Errorf("cert_name %q: use 1-32 lowercase letters, digits and dashes (the certificate is PKI_DIR/NAME.crt)", fc.CertName)
	}
	return fc, nil
}

func resolve() (resolved, error) {
	fc, err := loadFileConfig()
	if err != nil {
		return resolved{}, err
	}
	pick := func(flag, env, file string) string {
		if flag != "" {
			return flag
		}
		if v := os.Getenv(env); v != "" {
			return v
		}
		return file
	}
	eps := pick(g.endpoints, "COAT_ETCD_ENDPOINTS", fc.EtcdEndpoints)
	dir := pick(g.pkiDir, "COAT_PKI_DIR", fc.PKIDir)
	name := pick(g.certName, "COAT_CERT_NAME", fc.CertName)
	if name == "" {
		name = "cli"
	}
	if !names.Label(name) {
		return resolved{}, fmt.Errorf("certificate name %q (--cert-name, COAT_CERT_NAME or cert_name): use 1-32 lowercase letters, digits and dashes (the certificate is PKI_DIR/NAME.crt)", name)
	}
	if eps == "" || dir == "" {
		st, err := lab.Load(g.lab)
		if err != nil {
			return resolved{}, fmt.Errorf("no cluster configured (--etcd-endpoints, COAT_ETCD_ENDPOINTS or a config file) and %w", err)
		}
		if eps == "" {
			eps = st.EtcdURL
		}
		if dir == "" {
			dir = st.PKIDir()
		}
	}
	return resolved{endpoints: strings.Split(eps, ","), pki: pki.FilesFor(dir, name)}, nil
}

// session is a connection to the cluster for one command.
type session struct {
	st  *store.Etcd
	tls *tls.Config
}

func connect(ctx context.Context) (*session, error) {
	r, err := resolve()
	if err != nil {
		return nil, err
	}
	tc, err := r.pki.ClientConfig()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: r.endpoints, TLS: tc, DialTimeout: 5 * time.Second, Context: ctx,
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", r.endpoints, err)
	}
	// The client waits for a usable connection forever by default (as when
	// etcd refuses our certificate): probe it with a deadline.
	// Alongside, a handshake of our own says at once when the store and
	// this certificate are of different clusters.
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	got, refused := make(chan error, 1), make(chan error, 1)
	go func() {
		_, err := cli.Get(pctx, "/coat/probe", clientv3.WithCountOnly())
		got <- err
	}()
	go func() { refused <- certRefused(pctx, r.endpoints, tc) }()
	select {
	case err = <-got:
	case rerr := <-refused:
		if rerr != nil {
			cli.Close()
			return nil, fmt.Errorf("cannot use the cluster store at %v: a certificate was refused (%v): the certificate in %s and the store are not of the same cluster's CA; use that cluster's certificates (--pki-dir, --lab or --config)",
				r.endpoints, rerr, filepath.Dir(r.pki.Cert))
		}
		err = <-got
	}
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("cannot use the cluster store at %v: %w (is it up? does its CA accept the certificate in %s?)", r.endpoints, err, filepath.Dir(r.pki.Cert))
	}
	return &session{st: store.NewEtcd(cli, "/coat/", nil), tls: tc}, nil
}

func (s *session) Close() { _ = s.st.Close() }

// agent returns a client for host.
func (s *session) agent(ctx context.Context, host string) (*api.Client, error) {
	h, err := s.st.Host(ctx, host)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("unknown host %q: `coat hosts` lists the hosts", host)
	}
	if err != nil {
		return nil, err
	}
	// The agent must answer with its own host certificate, not just any
	// of the cluster CA's.
	tc := s.tls.Clone()
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no server certificate")
		}
		id, err := pki.Identify(cs.PeerCertificates[0])
		if err != nil {
			return err
		}
		if id.Role != pki.RoleHost || id.Name != host {
			return fmt.Errorf("the agent at %s answers with the certificate of %s (%s), not host %s's", h.API, id.Name, id.Role, host)
		}
		return nil
	}
	return &api.Client{
		Base: "https://" + h.API,
		HTTP: &http.Client{Transport: &http.Transport{TLSClientConfig: tc, DisableCompression: true}},
	}, nil
}

// record reads a container's record; an unknown name says where the
// known ones are listed.
func (s *session) record(ctx context.Context, name string) (store.Container, error) {
	c, err := s.st.Container(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return c, fmt.Errorf("unknown container %q: `coat ps` lists the containers", name)
	}
	return c, err
}

// container finds a container and the agent of the host it runs on.
func (s *session) container(ctx context.Context, name string) (store.Container, *api.Client, error) {
	c, err := s.record(ctx, name)
	if err != nil {
		return c, nil, err
	}
	cl, err := s.agent(ctx, c.Host)
	if err != nil {
		return c, nil, fmt.Errorf("container %s is on host %s: %w", name, c.Host, err)
	}
	return c, cl, nil
}

func logger(w io.Writer) *slog.Logger {
	l, _ := newLogger(w, "text")
	return l
}

// newLogger is a structured logger on w in format text (key=value) or
// json (one object a line); COAT_LOG_LEVEL=debug adds debug records.
func newLogger(w io.Writer, format string) (*slog.Logger, error) {
	level := slog.LevelInfo
	if os.Getenv("COAT_LOG_LEVEL") == "debug" {
		level = slog.LevelDebug
	}
	o := &slog.HandlerOptions{Level: level}
	switch format {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func self() string {
	p, err := os.Executable()
	if err != nil {
		return os.Args[0]
	}
	p, _ = filepath.EvalSymlinks(p)
	return p
}
