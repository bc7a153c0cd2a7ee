package store

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// EmbedConfig configures a single-member etcd server run inside a COAT
// process (the default for a one-machine install and for the lab).
type EmbedConfig struct {
	Name      string
	DataDir   string
	ClientURL string // e.g. https://10.1.0.1:2379
	PeerURL   string // e.g. http://127.0.0.1:2380 (single member)
	// TLS files for client connections (mutual TLS). Empty means plain.
	CertFile, KeyFile, CAFile string
}

// StartEmbedded starts an etcd server and waits until it serves.
func StartEmbedded(ctx context.Context, c EmbedConfig) (*embed.Etcd, error) {
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
	cfg.InitialCluster = fmt.Sprintf("%s=%s", c.Name, c.PeerURL)
	cfg.ListenMetricsUrls = nil
	if c.CertFile != "" {
		cfg.ClientTLSInfo.CertFile = c.CertFile
		cfg.ClientTLSInfo.KeyFile = c.KeyFile
		cfg.ClientTLSInfo.TrustedCAFile = c.CAFile
		cfg.ClientTLSInfo.ClientCertAuth = true
		cfg.ClientTLSInfo.MinVersion = tls.VersionTLS12
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
