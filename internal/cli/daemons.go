package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/coat-project/coat/internal/linkspec"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/coat-project/coat/internal/agent"
	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/pki"
	"github.com/coat-project/coat/internal/store"
)

func newAgentCmd() *cobra.Command {
	var cfg agent.Config
	var underlay, subnet, endpoints, pkiDir, logFormat string
	var peers []string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the agent of this edge host (in the host's network namespace)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(os.Stderr, logFormat)
			if err != nil {
				return err
			}
			// Flags (whose defaults are the COAT_* variables), then the
			// config file.
			fc, err := loadFileConfig()
			if err != nil {
				return err
			}
			if endpoints == "" {
				endpoints = fc.EtcdEndpoints
			}
			if pkiDir == "" {
				pkiDir = fc.PKIDir
			}
			if cfg.Name == "" || underlay == "" || pkiDir == "" {
				return fmt.Errorf("--name, --underlay-ip and --pki-dir are required")
			}
			if err := names.Host(cfg.Name); err != nil {
				return fmt.Errorf("--name: %w", err)
			}
			if cfg.MetricsAddr != "" {
				if _, _, err := net.SplitHostPort(cfg.MetricsAddr); err != nil {
					return fmt.Errorf("--metrics-addr %q: want IP:PORT, e.g. 127.0.0.1:9100 (loopback keeps it on this host)", cfg.MetricsAddr)
				}
			}
			if endpoints == "" {
				// A single-machine install: run etcd inside the agent,
				// on loopback, with mutual TLS from the cluster CA.
				url, stop, err := embedEtcd(cmd.Context(), cfg.StateDir, pkiDir)
				if err != nil {
					return err
				}
				defer stop()
				endpoints = url
			}
			if cfg.UnderlayIP = net.ParseIP(underlay); cfg.UnderlayIP == nil {
				return fmt.Errorf("--underlay-ip %q is not an IP address", underlay)
			}
			var sn *net.IPNet
			if subnet != "" {
				if sn, err = store.ParseOverlayCIDR(subnet); err != nil {
					return fmt.Errorf("--subnet: %w", err)
				}
			}
			for _, p := range peers {
				ip := net.ParseIP(p)
				if ip == nil {
					return fmt.Errorf("--peer %q is not an IP address", p)
				}
				cfg.ExtraPeers = append(cfg.ExtraPeers, ip)
			}
			if cfg.Listen == "" {
				cfg.Listen = net.JoinHostPort(underlay, "7443")
			}
			cfg.PKI = pki.FilesFor(pkiDir, cfg.Name)
			if err := cfg.PKI.CheckHost(cfg.Name, cfg.UnderlayIP); err != nil {
				return err
			}
			cfg.Self = self()
			tc, err := cfg.PKI.ClientConfig()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			cli, err := clientv3.New(clientv3.Config{
				Endpoints: strings.Split(endpoints, ","), TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
				// A connection lost to a partition is found and replaced
				// within seconds of the network's return, not after TCP's
				// retransmissions give up.
				DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second, PermitWithoutStream: true,
			})
			if err != nil {
				return fmt.Errorf("connect to etcd: %w", err)
			}
			st := store.NewEtcd(cli, "/coat/", nil)
			defer st.Close()
			if err := st.RequireAuth(ctx); err != nil {
				return fmt.Errorf("%w: set it up with `coat init --pki-dir %s --etcd-endpoints %s` (as admin) before starting agents", err, pkiDir, endpoints)
			}
			if cfg.Subnet, err = agentSubnet(ctx, st, sn, pkiDir, endpoints); err != nil {
				return err
			}
			if err := store.CheckUnderlay(cfg.Subnet, []net.IP{cfg.UnderlayIP}); err != nil {
				return fmt.Errorf("--underlay-ip: %w", err)
			}
			st = store.NewEtcd(cli, "/coat/", cfg.Subnet)
			a, err := agent.New(cfg, st, log.With("host", cfg.Name))
			if err != nil {
				return err
			}
			return a.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", "", "this host's name")
	f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/coat/agent", "state directory (images, containers, runc root)")
	f.StringVar(&cfg.Listen, "listen", "", "API address (default UNDERLAY-IP:7443)")
	f.StringVar(&underlay, "underlay-ip", "", "this host's underlay IP (the VXLAN endpoint)")
	f.StringVar(&cfg.UnderlayDev, "underlay-dev", "eth0", "underlay link")
	f.StringVar(&subnet, "subnet", "", "overlay subnet, e.g. 10.202.0.0/24 (default: the cluster's, recorded by coat init --overlay-cidr; if both are set they must agree)")
	f.IntVar(&cfg.VNI, "vni", 42, "VXLAN network identifier")
	f.StringArrayVar(&peers, "peer", nil, "extra VXLAN peer without an agent (repeatable)")
	f.Var(&rateFlag{&cfg.LinkRate}, "link-rate", "the rate of this host's underlay link, e.g. 100mbit (what --strategy auto weighs; default: unknown, taken as fast)")
	f.IntVar(&cfg.MaxFrozen, "max-frozen", 0, "how many of this host's containers outgoing migrations may hold frozen at once; more wait, serving, until one is restored (0: the host's CPUs, at least 2; -1: no limit)")
	f.DurationVar(&cfg.HostGoneAfter, "host-gone-after", 10*time.Minute, "keep forwarding to a host whose record vanished (its lease expired) for this long; its containers may still run")
	f.StringVar(&cfg.CgroupParent, "cgroup-parent", "", "cgroup parent of the containers (default /coat/NAME)")
	f.StringVar(&endpoints, "etcd-endpoints", os.Getenv("COAT_ETCD_ENDPOINTS"), "etcd endpoints (env COAT_ETCD_ENDPOINTS, config key etcd_endpoints); none: the agent runs an embedded etcd on 127.0.0.1:2379")
	f.StringVar(&pkiDir, "pki-dir", os.Getenv("COAT_PKI_DIR"), "PKI directory with ca.crt and NAME.crt/key (env COAT_PKI_DIR)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100 (default: no metrics; nothing else is served there)")
	f.StringVar(&logFormat, "log-format", envOr("COAT_LOG_FORMAT", "text"), "log format on stderr: text or json (one JSON object a line; env COAT_LOG_FORMAT)")
	return cmd
}

// agentSubnet decides an agent's overlay subnet: the cluster's, recorded
// in etcd by `coat init --overlay-cidr`, or --subnet (flag) when the
// cluster has none; both set must agree.
func agentSubnet(ctx context.Context, st *store.Etcd, flag *net.IPNet, pkiDir, endpoints string) (*net.IPNet, error) {
	cluster, err := st.OverlayCIDR(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound) && flag == nil:
		return nil, fmt.Errorf("no overlay subnet: record the cluster's with `coat init --pki-dir %s --etcd-endpoints %s --overlay-cidr CIDR` (as admin), or give --subnet", pkiDir, endpoints)
	case errors.Is(err, store.ErrNotFound):
		return flag, nil
	case err != nil:
		return nil, err
	case flag != nil && flag.String() != cluster.String():
		return nil, fmt.Errorf("--subnet %s differs from the cluster's overlay CIDR %s (recorded by `coat init --overlay-cidr`): drop --subnet, or give %s", flag, cluster, cluster)
	}
	return cluster, nil
}

func newEtcdCmd() *cobra.Command {
	var c store.EmbedConfig
	cmd := &cobra.Command{
		Use:    "etcd",
		Short:  "Run an embedded etcd server: a single member, or one member of a cluster (used by the lab)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("listen-peer") && c.CertFile != "" {
				c.PeerURL = "https://127.0.0.1:2380" // with TLS, peers are mutual TLS too
			}
			if c.CertFile != "" && (c.KeyFile == "" || c.CAFile == "") {
				return fmt.Errorf("--cert needs --key and --ca (clients must present a certificate from the CA)")
			}
			if (c.PeerCertFile != "") != (c.PeerKeyFile != "") {
				return fmt.Errorf("--peer-cert and --peer-key go together")
			}
			if c.InitialCluster == "" && c.ClusterState == "existing" {
				return fmt.Errorf("--initial-cluster-state existing needs --initial-cluster")
			}
			if strings.HasPrefix(c.PeerURL, "https://") {
				if c.PeerCertFile == "" {
					c.PeerCertFile, c.PeerKeyFile = c.CertFile, c.KeyFile
				}
				if c.PeerCAFile == "" {
					c.PeerCAFile = c.CAFile
				}
			}
			e, err := store.StartEmbedded(cmd.Context(), c)
			if err != nil {
				return err
			}
			defer e.Close()
			select {
			case <-cmd.Context().Done():
				return nil
			case err := <-e.Err():
				return err
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Name, "name", "default", "member name")
	f.StringVar(&c.DataDir, "data-dir", "/var/lib/coat/etcd", "data directory")
	f.StringVar(&c.ClientURL, "listen-client", "https://127.0.0.1:2379", "client URL")
	f.StringVar(&c.PeerURL, "listen-peer", "http://127.0.0.1:2380", "peer URL (https://127.0.0.1:2380 when --cert is given)")
	f.StringVar(&c.InitialCluster, "initial-cluster", "", "every member as NAME=PEER-URL,... (this one included); empty: a single-member cluster")
	f.StringVar(&c.ClusterState, "initial-cluster-state", "new", "new (bootstrap the cluster) or existing (join a running one)")
	f.StringVar(&c.ClusterToken, "initial-cluster-token", "", "token that tells clusters apart at bootstrap")
	f.StringVar(&c.CertFile, "cert", "", "server certificate")
	f.StringVar(&c.KeyFile, "key", "", "server key")
	f.StringVar(&c.CAFile, "ca", "", "CA that client certificates must chain to")
	f.StringVar(&c.PeerCertFile, "peer-cert", "", "certificate for peer connections, server and client side (default --cert)")
	f.StringVar(&c.PeerKeyFile, "peer-key", "", "key for peer connections (default --key)")
	f.StringVar(&c.PeerCAFile, "peer-ca", "", "CA that peer certificates must chain to (default --ca)")
	return cmd
}

func newInitCmd() *cobra.Command {
	var dir, overlayCIDR string
	var hosts, etcds, admins, clients, revoke []string
	cmd := &cobra.Command{
		Use:   "init [--pki-dir DIR] [--issue NAME=IP]... [--issue-etcd NAME=IP]... [--issue-admin NAME]... [--issue-client NAME]... [--revoke NAME]... [--etcd-endpoints URLS] [--overlay-cidr CIDR]",
		Short: "Create the cluster CA and certificates (the CLI's admin one, a host's per --issue), revoke certificates, and set etcd's access control up",
		Long: `Create the cluster CA and certificates: the CLI's (role admin), one per
--issue for an agent (role host, bound to its name and underlay IP), one
per --issue-etcd for an etcd member, one per --issue-admin for another
admin and one per --issue-client for a client device (role client; its
overlay IP is allocated in etcd then). --revoke NAME revokes NAME's
certificates: they are recorded in DIR/revoked.json, and, with etcd
endpoints (--etcd-endpoints, COAT_ETCD_ENDPOINTS or the config file), in
etcd, where NAME's user goes and every agent refuses them.

With etcd endpoints, init also gives etcd a user per certificate in DIR
(admins: root; hosts: their own keys) and turns its authentication on. Run
it again after issuing or revoking.

--overlay-cidr CIDR records the cluster's overlay subnet in etcd (it
needs etcd endpoints): the containers' addresses come from it and agents
started without --subnet use it. IPv4, a prefix from /8 to /27 (e.g.
10.96.0.0/16), not over any host's underlay address (those of --issue
and of the registered hosts). It can be changed only while no container
holds an address; restart the agents after a change.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Checked before anything is written.
			var overlay *net.IPNet
			var underlay []net.IP
			if cmd.Flags().Changed("overlay-cidr") {
				var err error
				if overlay, err = store.ParseOverlayCIDR(overlayCIDR); err != nil {
					return fmt.Errorf("--overlay-cidr: %w", err)
				}
				for _, n := range hosts {
					if _, ipStr, ok := strings.Cut(n, "="); ok {
						underlay = append(underlay, net.ParseIP(ipStr))
					}
				}
				if err := store.CheckUnderlay(overlay, underlay); err != nil {
					return fmt.Errorf("--overlay-cidr: %w", err)
				}
			}
			fc, err := loadFileConfig()
			if err != nil {
				return err
			}
			eps := g.endpoints
			for _, v := range []string{os.Getenv("COAT_ETCD_ENDPOINTS"), fc.EtcdEndpoints} {
				if eps == "" {
					eps = v
				}
			}
			if overlay != nil && eps == "" {
				return fmt.Errorf("--overlay-cidr is recorded in etcd: give --etcd-endpoints (or COAT_ETCD_ENDPOINTS) and run it again")
			}
			if len(clients) > 0 && eps == "" {
				return fmt.Errorf("--issue-client allocates the client's overlay IP in etcd: give --etcd-endpoints (or COAT_ETCD_ENDPOINTS) and run it again")
			}
			for _, n := range clients {
				if err := names.Host(n); err != nil {
					return fmt.Errorf("--issue-client %q: %w", n, err)
				}
			}
			if err := pki.EnsureCA(dir); err != nil {
				return err
			}
			revoked, err := pki.Revocations(dir)
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(revoked, func(r pki.Revocation) bool { return r.Name == "cli" }) {
				if err := pki.Issue(dir, "cli", pki.RoleAdmin, nil); err != nil {
					return err
				}
			}
			for _, list := range []struct {
				flag  string
				names []string
				role  pki.Role
			}{{"--issue", hosts, pki.RoleHost}, {"--issue-etcd", etcds, pki.RoleEtcd}, {"--issue-admin", admins, pki.RoleAdmin}, {"--issue-client", clients, pki.RoleClient}} {
				for _, n := range list.names {
					name, ipStr, _ := strings.Cut(n, "=")
					if err := store.ValidName(name); err != nil {
						return fmt.Errorf("%s %q: %w", list.flag, n, err)
					}
					if ipStr == "" && list.role == pki.RoleHost {
						return fmt.Errorf("--issue %q: want NAME=UNDERLAY-IP: a host's certificate is bound to the address its agent calls from", n)
					}
					var ips []net.IP
					if ipStr != "" {
						ip := net.ParseIP(ipStr)
						if ip == nil {
							return fmt.Errorf("%s %q: %q is not an IP", list.flag, n, ipStr)
						}
						ips = append(ips, ip)
					}
					if err := pki.Issue(dir, name, list.role, ips); err != nil {
						return err
					}
				}
			}
			for _, n := range revoke {
				r, err := pki.Revoke(dir, n)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "revoked %s (serials %s)\n", r.Name, strings.Join(r.Serials, ", "))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "cluster PKI in %s\n", dir)
			if eps == "" {
				if len(revoke) > 0 {
					return fmt.Errorf("revoked in %s only: give --etcd-endpoints (or COAT_ETCD_ENDPOINTS) and run it again so that etcd and the agents refuse it too", dir)
				}
				return nil
			}
			admin := g.certName
			if admin == "" {
				admin = envOr("COAT_CERT_NAME", "cli")
			}
			if err := store.SetupAuthFromPKI(cmd.Context(), strings.Split(eps, ","), dir, admin); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "etcd access control set up at %s\n", eps)
			for _, n := range clients {
				c, err := store.AllocateClientFromPKI(cmd.Context(), strings.Split(eps, ","), dir, admin, n)
				if err != nil {
					return fmt.Errorf("--issue-client %s: %w", n, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "client %s: overlay IP %s, MAC %s (certificate %s): run `coat client up --name %s --server %s --pki-dir DIR` on the device\n",
					n, c.OverlayIP, c.MAC, pki.FilesFor(dir, n).Cert, n, eps)
			}
			if overlay != nil {
				if err := store.SetOverlayCIDRFromPKI(cmd.Context(), strings.Split(eps, ","), dir, admin, overlay, underlay); err != nil {
					return fmt.Errorf("--overlay-cidr: %w", err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "overlay CIDR %s recorded: agents started without --subnet use it\n", overlay)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "pki-dir", "/etc/coat/pki", "where to write the CA and certificates")
	cmd.Flags().StringArrayVar(&hosts, "issue", nil, "issue a host certificate NAME=UNDERLAY-IP for an agent (repeatable)")
	cmd.Flags().StringArrayVar(&etcds, "issue-etcd", nil, "issue a certificate NAME=IP for an etcd member (repeatable)")
	cmd.Flags().StringArrayVar(&admins, "issue-admin", nil, "issue another admin certificate NAME (repeatable; use it with --cert-name)")
	cmd.Flags().StringArrayVar(&clients, "issue-client", nil, "issue a client device's certificate NAME and allocate its overlay IP (repeatable; needs etcd endpoints; see coat client up)")
	cmd.Flags().StringVar(&overlayCIDR, "overlay-cidr", "", "record the cluster's overlay subnet in etcd, e.g. 10.96.0.0/16 (IPv4, /8 to /27)")
	cmd.Flags().StringArrayVar(&revoke, "revoke", nil, "revoke NAME's certificates (repeatable); the name cannot be issued again")
	return cmd
}

// embedEtcd starts an embedded single-member etcd for an agent that was
// given no endpoints: data under stateDir/etcd, client URL on loopback,
// certificate "etcd" from the cluster CA in pkiDir (issued if missing),
// and access control for the certificates in pkiDir (as `coat init`).
func embedEtcd(ctx context.Context, stateDir, pkiDir string) (string, func(), error) {
	if err := pki.Issue(pkiDir, "etcd", pki.RoleEtcd, []net.IP{net.IPv4(127, 0, 0, 1)}); err != nil {
		return "", nil, fmt.Errorf("etcd certificate: %w (create the cluster CA with `coat init --pki-dir %s`)", err, pkiDir)
	}
	f := pki.FilesFor(pkiDir, "etcd")
	url := "https://127.0.0.1:2379"
	e, err := store.StartEmbedded(ctx, store.EmbedConfig{
		Name: "default", DataDir: filepath.Join(stateDir, "etcd"),
		ClientURL: url, PeerURL: "https://127.0.0.1:2380",
		CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA,
	})
	if err != nil {
		return "", nil, err
	}
	if err := store.SetupAuthFromPKI(ctx, []string{url}, pkiDir, "cli"); err != nil {
		e.Close()
		return "", nil, fmt.Errorf("etcd access control: %w (`coat init --pki-dir %s` creates the CLI's admin certificate)", err, pkiDir)
	}
	return url, e.Close, nil
}

// rateFlag is a pflag.Value for a link rate.
type rateFlag struct{ r *linkspec.Rate }

func (f *rateFlag) String() string {
	if f.r == nil || *f.r == 0 {
		return ""
	}
	return f.r.String()
}

func (f *rateFlag) Set(s string) error {
	r, err := linkspec.ParseRate(s)
	if err != nil {
		return err
	}
	*f.r = r
	return nil
}

func (f *rateFlag) Type() string { return "rate" }
