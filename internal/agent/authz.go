package agent

// Authorization of the API's callers (see internal/authz for the rules and
// internal/pki for the design). Every request passes authenticate, which
// identifies the caller from its verified client certificate and refuses
// a revoked one; each route then says what it is (guard), and hosts get
// only what internal/authz grants them.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/coat-project/coat/internal/authz"
	"github.com/coat-project/coat/internal/pki"
	"github.com/coat-project/coat/internal/store"
)

type callerKey struct{}

// caller is who made r (set by authenticate).
func caller(r *http.Request) pki.Identity {
	id, _ := r.Context().Value(callerKey{}).(pki.Identity)
	return id
}

// authenticate identifies the caller and refuses certificates without a
// role or revoked ones with 403.
func (a *Agent) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			httpError(w, fmt.Errorf("%w: no client certificate", authz.ErrForbidden))
			return
		}
		id, err := pki.Identify(r.TLS.PeerCertificates[0])
		if err == nil {
			err = a.revoked.Check(id)
		}
		if err == nil {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			err = authz.FromAddress(id, net.ParseIP(host))
		}
		if err != nil {
			if !errors.Is(err, authz.ErrForbidden) {
				err = fmt.Errorf("%w: %v", authz.ErrForbidden, err)
			}
			a.log.Warn("refused", "method", r.Method, "path", r.URL.Path, "caller", id.Name, "err", err)
			httpError(w, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, id)))
	})
}

// guard lets the caller through to h if it may do kind on the route's
// container ({name}).
func (a *Agent) guard(kind authz.Kind, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := caller(r)
		if err := a.authorize(r, id, authz.Op{Kind: kind, Name: r.PathValue("name")}); err != nil {
			a.log.Warn("refused", "method", r.Method, "path", r.URL.Path, "caller", id.Name, "err", err)
			httpError(w, err)
			return
		}
		h(w, r)
	}
}

func (a *Agent) authorize(r *http.Request, id pki.Identity, op authz.Op) error {
	if id.Role != pki.RoleHost || op.Kind == authz.AdminOnly {
		return authz.Decide(id, op, a.cfg.Name, nil)
	}
	// What this agent set up itself for the caller's migration needs no
	// look-up (it keeps the store off the freeze window): a migration it
	// prepared on the store's word, or a page tunnel it opened.
	switch {
	case op.Kind == authz.Incoming && r.Pattern != preparePattern:
		if c, err := a.incomingContainer(op.Name); err == nil && c.Host == id.Name && c.MigratingTo == a.cfg.Name {
			return nil
		}
	case op.Kind == authz.Tunnel:
		a.mu.Lock()
		t, ok := a.tunnels[tunnelKey(op.Name, r.PathValue("kind"))]
		a.mu.Unlock()
		if ok && t.peer == id.Name {
			return nil
		}
	}
	m, err := a.st.Migration(r.Context(), op.Name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return authz.Decide(id, op, a.cfg.Name, nil)
	case err != nil:
		return fmt.Errorf("authorize %s: %w", id.Name, err)
	}
	return authz.Decide(id, op, a.cfg.Name, &m)
}

// verifyPeer checks the certificate a TLS peer presented (its chain is
// already verified): it must carry a role and not be revoked; want, if
// set, says what it must be (an agent: a host named as we called it).
func (a *Agent) verifyPeer(wantRole pki.Role, wantName string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("no peer certificate")
		}
		id, err := pki.Identify(cs.PeerCertificates[0])
		if err != nil {
			return err
		}
		if err := a.revoked.Check(id); err != nil {
			return err
		}
		if wantRole != "" && id.Role != wantRole {
			return fmt.Errorf("peer %s has role %s, want %s", id.Name, id.Role, wantRole)
		}
		if wantName != "" && id.Name != wantName {
			return fmt.Errorf("peer certificate names %s, want %s", id.Name, wantName)
		}
		return nil
	}
}

// peerDialer dials other agents from this host's underlay IP: the address
// its client certificate is bound to, whatever route the kernel picks.
func (a *Agent) peerDialer() *net.Dialer {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAliveConfig: keepalive, Control: userTimeout}
	if a.cfg.UnderlayIP != nil {
		d.LocalAddr = &net.TCPAddr{IP: a.cfg.UnderlayIP}
	}
	return d
}

// peerTLS is the client configuration for calls to host's agent.
func (a *Agent) peerTLS(host string) *tls.Config {
	cfg := a.tls.Clone()
	cfg.VerifyConnection = a.verifyPeer(pki.RoleHost, host)
	return cfg
}

// followRevocations keeps the set of revoked certificates in line with
// the store until ctx ends.
func (a *Agent) followRevocations(ctx context.Context) {
	for {
		if err := a.loadRevocations(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("read revocations", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (a *Agent) loadRevocations(ctx context.Context) error {
	rs, err := a.st.Revocations(ctx)
	if err != nil {
		return err
	}
	a.revoked.Set(rs)
	return nil
}
