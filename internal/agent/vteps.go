package agent

import (
	"net"
	"time"

	"github.com/coat-project/coat/internal/store"
)

// The data plane outlives the control plane. A host's record in the store
// is leased: it vanishes when its agent stops renewing it (stopped, slow,
// or cut off from etcd for a few seconds), while that host's containers
// may well run on, and their peers still need the way to them. So the
// forwarding to a host whose record vanished is kept, as it was last seen,
// until the host has been absent for hostGoneAfter, or until the operator
// declares it gone (`coat hosts forget`); only then do its flood entry and
// its containers' FDB entries go. A host that comes back (registers after
// such a declaration), or comes back with another underlay address, is
// followed at once.

// defaultHostGoneAfter is how long an absent host keeps its forwarding.
const defaultHostGoneAfter = 10 * time.Minute

// seenHost is a host's VTEP and when its record was last in the store.
type seenHost struct {
	ip   net.IP
	last time.Time
}

// mergeVTEPs returns the VTEP of every host to forward to: those in the
// store, and those absent for less than goneAfter and not declared gone
// (gone: when, by host). seen is updated.
func mergeVTEPs(hosts []store.Host, seen map[string]seenHost, now time.Time, goneAfter time.Duration, gone map[string]time.Time) map[string]net.IP {
	out := map[string]net.IP{}
	for _, h := range hosts {
		ip := net.ParseIP(h.UnderlayIP)
		if ip == nil {
			continue
		}
		if when, ok := gone[h.Name]; ok && !h.Started.After(when) {
			continue // registered before it was declared gone: stale
		}
		seen[h.Name] = seenHost{ip: ip, last: now}
		out[h.Name] = ip
	}
	for name, s := range seen {
		if _, ok := out[name]; ok {
			continue
		}
		if _, declared := gone[name]; declared || now.Sub(s.last) >= goneAfter {
			delete(seen, name)
			continue
		}
		out[name] = s.ip
	}
	return out
}
