package agent

import (
	"context"
	"net"
	"time"

	"github.com/coat-project/coat/internal/store"
)

// Client devices (the lab's client node; see internal/store/clients.go).
// A client has no agent: its record says where its VTEP is. This host
// floods to every client's VTEP and points each client's MAC at it with a
// static FDB entry, as it does for another host's containers. A handover
// (the client's underlay address changes) is one write of the record;
// the watch brings it here within the watch's latency, and the FDB entry
// is rewritten first, before the flood list, so that unicast to the
// client (its TCP peers' segments) goes to the new address at once. The
// static entry matters in both directions: the kernel drops frames from
// the client's MAC that arrive from another VTEP than the one a static
// entry names, so the old entry must go as soon as the client has moved.

// clientsResync is how often the client records are read again, in case
// a watch event was missed, and the follow-me policies checked.
const clientsResync = time.Second

// watchClients follows the client records until ctx ends; after each
// change (and every clientsResync) it checks the follow-me policies.
func (a *Agent) watchClients(ctx context.Context) {
	for ctx.Err() == nil {
		a.clientsWatch(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (a *Agent) clientsWatch(ctx context.Context) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	changed := a.st.WatchClients(wctx)
	tick := time.NewTicker(clientsResync)
	defer tick.Stop()
	for {
		a.refreshClients(ctx)
		a.checkFollows(ctx)
		select {
		case <-ctx.Done():
			return
		case _, ok := <-changed:
			if !ok {
				return
			}
		case <-tick.C:
		}
	}
}

// refreshClients reads the client records and brings the forwarding to
// them in line: FDB entries first, then (when a VTEP changed) the flood
// list.
func (a *Agent) refreshClients(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	list, err := a.st.Clients(rctx)
	if err != nil {
		a.log.Warn("client records", "err", err)
		return
	}
	a.fwdMu.Lock()
	defer a.fwdMu.Unlock()
	now := map[string]store.Client{}
	for _, c := range list {
		now[c.Name] = c
	}
	a.mu.Lock()
	before := a.clients
	a.clients = now
	a.mu.Unlock()
	set, del, peersChanged := diffClients(before, now)
	for _, c := range set {
		mac, _ := net.ParseMAC(c.MAC)
		if err := a.ov.SetRemoteMAC(mac, net.ParseIP(c.UnderlayIP)); err != nil {
			a.log.Warn("fdb set", "client", c.Name, "mac", c.MAC, "err", err)
			continue
		}
		if old, ok := before[c.Name]; ok && old.UnderlayIP != c.UnderlayIP {
			a.log.Info("client moved", "client", c.Name, "from", old.UnderlayIP, "to", c.UnderlayIP, "attached_to", c.AttachedTo)
		}
	}
	for _, c := range del {
		mac, _ := net.ParseMAC(c.MAC)
		if err := a.ov.DelRemoteMAC(mac); err != nil {
			a.log.Warn("fdb delete", "client", c.Name, "mac", c.MAC, "err", err)
		}
	}
	if peersChanged {
		if _, err := a.vteps(rctx); err != nil {
			a.log.Warn("flood list", "err", err)
		}
	}
}

// diffClients says which clients' FDB entries to write (new, or moved,
// or first seen: before is nil), which to delete, and whether the set of
// client VTEPs changed (the flood list must follow).
func diffClients(before, now map[string]store.Client) (set, del []store.Client, peersChanged bool) {
	for name, c := range now {
		old, ok := before[name]
		if before == nil || !ok || old.UnderlayIP != c.UnderlayIP || old.MAC != c.MAC {
			set = append(set, c)
		}
		if !ok || old.UnderlayIP != c.UnderlayIP {
			peersChanged = true
		}
		if ok && old.MAC != c.MAC {
			del = append(del, old)
		}
	}
	for name, old := range before {
		if _, ok := now[name]; !ok {
			del = append(del, old)
			peersChanged = true
		}
	}
	return set, del, peersChanged
}

// extraPeers are the VTEPs to flood to besides the hosts': --peer's and
// the clients'.
func (a *Agent) extraPeers() []net.IP {
	peers := append([]net.IP(nil), a.cfg.ExtraPeers...)
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.clients {
		if ip := net.ParseIP(c.UnderlayIP); ip != nil {
			peers = append(peers, ip)
		}
	}
	return peers
}

// addClientMACs adds the clients' MAC -> VTEP entries to want (resync).
func (a *Agent) addClientMACs(want map[string]net.IP) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.clients {
		mac, err := net.ParseMAC(c.MAC)
		if ip := net.ParseIP(c.UnderlayIP); err == nil && ip != nil {
			want[mac.String()] = ip
		}
	}
}
