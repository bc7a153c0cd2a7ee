// Package authz decides what a caller of an agent's API may do. The caller
// is who its verified client certificate names (pki.Identify): its name
// and role. The rules (see the design note in internal/pki):
//
//   - an admin (the CLI) may do everything;
//   - a host may call another agent only to take part in a migration the
//     store records between the two: /v1/incoming/NAME/* while the
//     migration of NAME is recorded from the caller to this agent (the
//     caller coordinates it, as its source), /v1/tunnel/NAME/* while it is
//     recorded from this agent to the caller (the destination fetches
//     memory from the source), and /v1/outgoing/NAME/image likewise (the
//     destination copies the image of NAME, which it lacks, from the
//     source); never anything else (run, rm, logs,
//     migrate, image import);
//   - a host calls from the address its certificate names (FromAddress);
//   - an etcd member's certificate, and a revoked one, may do nothing.
//
// The agent names each route's Kind where it registers it (so the name is
// the one its handler sees); a route registered without one is
// admin-only, so a route added later is closed to hosts until a rule
// opens it.
package authz

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/coat-project/coat/internal/pki"
	"github.com/coat-project/coat/internal/store"
)

// ErrForbidden is a refusal: the caller is known but may not do this.
var ErrForbidden = errors.New("forbidden")

// Kind is the class of a request.
type Kind int

// The classes of requests.
const (
	// AdminOnly: the containers and images API (and anything unknown).
	AdminOnly Kind = iota
	// Incoming: /v1/incoming/NAME/..., the destination's side of a
	// migration.
	Incoming
	// Tunnel: /v1/tunnel/NAME/..., the source's page tunnel.
	Tunnel
	// Image: /v1/outgoing/NAME/image, the source's copy of the image
	// of NAME for a destination that lacks it.
	Image
)

// Op is one request: its class and the container it is about.
type Op struct {
	Kind Kind
	Name string
}

// Decide says whether caller may do op on agent self, given the store's
// migration record of op.Name (nil if there is none). A nil error allows.
func Decide(caller pki.Identity, op Op, self string, m *store.Migration) error {
	switch caller.Role {
	case pki.RoleAdmin:
		return nil
	case pki.RoleHost:
	default:
		return fmt.Errorf("%w: certificate %q has role %q, which may not call agents", ErrForbidden, caller.Name, caller.Role)
	}
	switch op.Kind {
	case Incoming:
		if m != nil && m.Name == op.Name && m.From == caller.Name && m.To == self {
			return nil
		}
		return fmt.Errorf("%w: host %s may not send container %s to %s: the store records no migration of it from %s to %s",
			ErrForbidden, caller.Name, op.Name, self, caller.Name, self)
	case Tunnel:
		if m != nil && m.Name == op.Name && m.From == self && m.To == caller.Name {
			return nil
		}
		return fmt.Errorf("%w: host %s may not open a page tunnel of container %s on %s: the store records no migration of it from %s to %s",
			ErrForbidden, caller.Name, op.Name, self, self, caller.Name)
	case Image:
		if m != nil && m.Name == op.Name && m.From == self && m.To == caller.Name {
			return nil
		}
		return fmt.Errorf("%w: host %s may not copy the image of container %s from %s: the store records no migration of it from %s to %s",
			ErrForbidden, caller.Name, op.Name, self, self, caller.Name)
	}
	return fmt.Errorf("%w: host certificate %q may only take part in migrations; running, removing, migrating, reading logs and importing images need an admin certificate (the CLI's)", ErrForbidden, caller.Name)
}

// FromAddress checks that a host calls from an address its certificate is
// bound to (its underlay IP SAN), so that its key is no good elsewhere.
// Other roles may call from anywhere.
func FromAddress(id pki.Identity, remote net.IP) error {
	if id.Role != pki.RoleHost {
		return nil
	}
	for _, ip := range id.IPs {
		if remote != nil && ip.Equal(remote) {
			return nil
		}
	}
	return fmt.Errorf("%w: host certificate %q is bound to %v, and the call comes from %v", ErrForbidden, id.Name, id.IPs, remote)
}

// Revoked is the set of revoked names and serials an agent refuses.
type Revoked struct {
	mu      sync.RWMutex
	names   map[string]bool
	serials map[string]bool
}

// Set replaces the set with list.
func (r *Revoked) Set(list []pki.Revocation) {
	names, serials := map[string]bool{}, map[string]bool{}
	for _, rv := range list {
		names[rv.Name] = true
		for _, s := range rv.Serials {
			serials[strings.ToLower(s)] = true
		}
	}
	r.mu.Lock()
	r.names, r.serials = names, serials
	r.mu.Unlock()
}

// Check refuses a revoked identity: by serial, and by name (a revoked
// name is never issued again).
func (r *Revoked) Check(id pki.Identity) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.serials[strings.ToLower(id.Serial)] || r.names[id.Name] {
		return fmt.Errorf("%w: certificate %q (serial %s) was revoked", ErrForbidden, id.Name, id.Serial)
	}
	return nil
}
