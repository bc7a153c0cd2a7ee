package agent

import (
	"context"
	"net"
	"time"

	"github.com/coat-project/coat/internal/store"
)

// forward keeps this host's VXLAN forwarding in line with the cluster:
// flood entries for every other host (and the clients, clients.go, and
// extra peers), and a static FDB entry MAC -> VTEP for every container on
// another host and every client. It follows
// the container records through a watch, so one write (a migration's
// commit) updates every host, and resyncs fully every few seconds so it
// converges from any state, including a crash's leftovers.
func (a *Agent) forward(ctx context.Context) {
	for ctx.Err() == nil {
		if err := a.followWatch(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("forwarding watch", "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (a *Agent) followWatch(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := a.st.WatchContainers(wctx)
	if err != nil {
		return err
	}
	tick := time.NewTicker(3 * time.Second)
	defer tick.Stop()
	if err := a.resync(ctx); err != nil {
		a.log.Warn("forwarding resync", "err", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			a.apply(ctx, ev)
		case <-tick.C:
			if err := a.resync(ctx); err != nil {
				a.log.Warn("forwarding resync", "err", err)
			}
		}
	}
}

// vteps maps host names to their underlay IPs and sets the flood list.
func (a *Agent) vteps(ctx context.Context) (map[string]net.IP, error) {
	hosts, err := a.st.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	gone, err := a.st.Gone(ctx)
	if err != nil {
		return nil, err
	}
	goneAfter := a.cfg.HostGoneAfter
	if goneAfter <= 0 {
		goneAfter = defaultHostGoneAfter
	}
	a.mu.Lock()
	if a.seen == nil {
		a.seen = map[string]seenHost{}
	}
	out := mergeVTEPs(hosts, a.seen, time.Now(), goneAfter, gone)
	a.known = out
	a.mu.Unlock()
	peers := a.extraPeers()
	for name, ip := range out {
		if name != a.cfg.Name {
			peers = append(peers, ip)
		}
	}
	if err := a.ov.SetPeers(peers); err != nil {
		return nil, err
	}
	return out, nil
}

func (a *Agent) apply(ctx context.Context, ev store.Event) {
	mac, err := net.ParseMAC(ev.Container.MAC)
	if err != nil {
		return
	}
	to := ev.Container.ForwardTo()
	if ev.Deleted || ev.Container.Host == a.cfg.Name || to == a.cfg.Name {
		if err := a.ov.DelRemoteMAC(mac); err != nil {
			a.log.Warn("fdb delete", "mac", mac, "err", err)
		}
		return
	}
	// The VTEPs known from the last resync (at most 3 s old) serve: a
	// switch at a freeze is applied within the watch's latency, not after
	// two more reads from etcd (frames sent to the source after it took
	// what it held are lost, and cost their senders a retransmission
	// timeout). Only a host not seen yet is looked up.
	a.mu.Lock()
	ip := a.known[to]
	a.mu.Unlock()
	if ip == nil {
		vteps, err := a.vteps(ctx)
		if err != nil {
			a.log.Warn("hosts", "err", err)
			return
		}
		ip = vteps[to]
	}
	if ip != nil {
		if err := a.ov.SetRemoteMAC(mac, ip); err != nil {
			a.log.Warn("fdb set", "mac", mac, "err", err)
		}
	}
}

// resync rewrites every entry and removes the ones no container needs.
func (a *Agent) resync(ctx context.Context) error {
	// Never with a client's entries of before a handover (clients.go).
	a.fwdMu.Lock()
	defer a.fwdMu.Unlock()
	vteps, err := a.vteps(ctx)
	if err != nil {
		return err
	}
	cs, err := a.st.Containers(ctx)
	if err != nil {
		return err
	}
	want := map[string]net.IP{}
	for _, c := range cs {
		if to := c.ForwardTo(); c.Host != a.cfg.Name && to != a.cfg.Name && vteps[to] != nil {
			want[c.MAC] = vteps[to]
		}
	}
	a.addClientMACs(want)
	have, err := a.ov.RemoteMACs()
	if err != nil {
		return err
	}
	for m, ip := range want {
		if have[m].Equal(ip) {
			continue
		}
		mac, _ := net.ParseMAC(m)
		if err := a.ov.SetRemoteMAC(mac, ip); err != nil {
			return err
		}
	}
	for m := range have {
		if _, ok := want[m]; !ok {
			mac, _ := net.ParseMAC(m)
			if err := a.ov.DelRemoteMAC(mac); err != nil {
				return err
			}
		}
	}
	return nil
}
