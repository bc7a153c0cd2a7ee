package store

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// EmbedConfig configures an etcd server run inside a COAT process: a
// single member (the default for a one-machine install and for the lab)
// or one member of a cluster (InitialCluster set).
type EmbedConfig struct {
	Name      string
	DataDir   string
	ClientURL string // e.g. https://10.1.0.1:2379
	PeerURL   string // e.g. https://10.1.0.1:2380

	// InitialCluster lists every member as name=peerURL,... (this one
	// included, as Name=PeerURL). Empty means a single-member cluster.
	InitialCluster string
	// ClusterState is "new" (bootstrap, the default) or "existing" (join
	// a running cluster). A member restarted on its data directory
	// ignores both.
	ClusterState string
	// ClusterToken tells clusters apart at bootstrap (default etcd's).
	ClusterToken string

	// TLS files for client connections (mutual TLS). Empty means plain.
	CertFile, KeyFile, CAFile string
	// TLS files for peer connections (mutual TLS between members). With
	// an https PeerURL, empty ones default to the client files above.
	PeerCertFile, PeerKeyFile, PeerCAFile string
}

// configure turns c into etcd's configuration.
func (c EmbedConfig) configure() (*embed.Config, error) {
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.DataDir
	cfg.LogLevel = "error"
	cu, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("client url: %w", err)
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("peer url: %w", err)
	}
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.ListenMetricsUrls = nil
	if c.InitialCluster == "" {
		cfg.InitialCluster = fmt.Sprintf("%s=%s", c.Name, c.PeerURL)
	} else {
		if err := checkInitialCluster(c.InitialCluster, c.Name, c.PeerURL); err != nil {
			return nil, err
		}
		cfg.InitialCluster = c.InitialCluster
	}
	switch c.ClusterState {
	case "", embed.ClusterStateFlagNew:
		cfg.ClusterState = embed.ClusterStateFlagNew
	case embed.ClusterStateFlagExisting:
		cfg.ClusterState = embed.ClusterStateFlagExisting
	default:
		return nil, fmt.Errorf("initial cluster state %q: want %q or %q", c.ClusterState, embed.ClusterStateFlagNew, embed.ClusterStateFlagExisting)
	}
	if c.ClusterToken != "" {
		cfg.InitialClusterToken = c.ClusterToken
	}
	if c.CertFile != "" {
		cfg.ClientTLSInfo.CertFile = c.CertFile
		cfg.ClientTLSInfo.KeyFile = c.KeyFile
		cfg.ClientTLSInfo.TrustedCAFile = c.CAFile
		cfg.ClientTLSInfo.ClientCertAuth = true
		cfg.ClientTLSInfo.MinVersion = tls.VersionTLS12
	}
	pc, pk, pca := c.PeerCertFile, c.PeerKeyFile, c.PeerCAFile
	if pu.Scheme == "https" {
		if pc == "" && pk == "" {
			pc, pk = c.CertFile, c.KeyFile
		}
		if pca == "" {
			pca = c.CAFile
		}
		if pc == "" || pk == "" || pca == "" {
			return nil, fmt.Errorf("peer url %s is https: it needs a certificate, a key and a CA (peer or client TLS files)", c.PeerURL)
		}
	} else if pc != "" {
		return nil, fmt.Errorf("peer url %s is plain http while peer TLS files are given: use https", c.PeerURL)
	}
	if pc != "" {
		// Members authenticate each other: a peer must present a
		// certificate from the CA, and etcd checks it names the peer's IP.
		cfg.PeerTLSInfo.CertFile = pc
		cfg.PeerTLSInfo.KeyFile = pk
		cfg.PeerTLSInfo.TrustedCAFile = pca
		cfg.PeerTLSInfo.ClientCertAuth = true
		cfg.PeerTLSInfo.MinVersion = tls.VersionTLS12
	}
	return cfg, nil
}

// checkInitialCluster checks the name=peerURL list names this member with
// its own peer URL, so a typo fails here with a readable error.
func checkInitialCluster(list, name, peerURL string) error {
	self := false
	for _, m := range strings.Split(list, ",") {
		n, u, ok := strings.Cut(strings.TrimSpace(m), "=")
		if !ok || n == "" || u == "" {
			return fmt.Errorf("initial cluster %q: %q is not name=peerURL", list, m)
		}
		if _, err := url.Parse(u); err != nil {
			return fmt.Errorf("initial cluster %q: %w", list, err)
		}
		if n == name && u == peerURL {
			self = true
		}
	}
	if !self {
		return fmt.Errorf("initial cluster %q does not list this member as %s=%s", list, name, peerURL)
	}
	return nil
}

// StartEmbedded starts an etcd server and waits until it serves (for a
// member of a new cluster: until a quorum of members has started).
func StartEmbedded(ctx context.Context, c EmbedConfig) (*embed.Etcd, error) {
	cfg, err := c.configure()
	if err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd did not become ready within 60s (data dir %s)", c.DataDir)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
}
