package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// certRefused says, faster than the store client can, that a command's
// certificate and the cluster store do not belong together. etcd's client
// retries a refused handshake until its deadline and then reports only
// "context deadline exceeded"; this dials each endpoint once, completes a
// TLS handshake and waits briefly for the server's first bytes (under TLS
// 1.3 a server that refuses the client's certificate says so only then,
// with an alert; a gRPC server that accepts it sends its settings at
// once). It returns an error only when every endpoint refused a
// certificate, ours or theirs; anything else (an endpoint unreachable,
// slow, or accepting) leaves the verdict to the store probe.
func certRefused(ctx context.Context, endpoints []string, tc *tls.Config) error {
	var refused []string
	for _, ep := range endpoints {
		err := probeTLS(ctx, ep, tc)
		if err == nil || !certError(err) {
			return nil
		}
		refused = append(refused, fmt.Sprintf("%s: %v", ep, err))
	}
	if len(refused) == 0 {
		return nil
	}
	return errors.New(strings.Join(refused, "; "))
}

// probeTLS returns nil if ep accepted the handshake and sent data, or if
// the answer is not known within the probe's bounds, else the error.
func probeTLS(ctx context.Context, ep string, tc *tls.Config) error {
	u, err := url.Parse(ep)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cfg := tc.Clone()
	cfg.ServerName = u.Hostname()
	conn, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	deadline, _ := ctx.Deadline()
	_ = conn.SetReadDeadline(deadline)
	var b [1]byte
	_, err = conn.Read(b[:])
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return err
}

// certError is a certificate refused by either side: ours by the server
// (a TLS alert after or during the handshake) or the server's by us.
func certError(err error) bool {
	var (
		unknown  x509.UnknownAuthorityError
		invalid  x509.CertificateInvalidError
		hostname x509.HostnameError
		verify   *tls.CertificateVerificationError
	)
	return errors.As(err, &unknown) || errors.As(err, &invalid) || errors.As(err, &hostname) ||
		errors.As(err, &verify) || strings.Contains(err.Error(), "remote error: tls:")
}
