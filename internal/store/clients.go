package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/pki"
)

// Mobile clients and follow-me. A client is a device on the overlay
// without an agent (the lab's client node): the agents need its VTEP (its
// underlay address, which changes when it attaches to another access
// network) to flood to it and to point its MAC at it. Its record is the
// one place that says where it is now; every agent watches it, so a
// handover is one write.
//
// A follow policy says that a container should run on the edge host
// serving a client's attachment. Each change of attachment (a roam)
// bumps the client's Roams; the policy records the last roam handled, and
// whoever moves the container claims the roam first with a
// compare-and-swap on the policy, so each roam moves it at most once.
//
// Layout under the prefix, besides etcd.go's:
//
//	clients/<name>   Client JSON (admins write it; hosts read it)
//	follows/<name>   Follow JSON, by container (hosts claim roams in it)

// Client is a device attached to the overlay from outside the cluster.
type Client struct {
	Name string `json:"name"`
	// UnderlayIP is its VTEP: the address of its current attachment; ""
	// while it is detached (allocated, or `coat client down`).
	UnderlayIP string `json:"underlay_ip"`
	OverlayIP  string `json:"overlay_ip"`
	MAC        string `json:"mac"`
	// AttachedTo is the edge host serving its access network ("": none
	// in particular): where a container that follows it should run.
	AttachedTo string `json:"attached_to,omitempty"`
	// Roams counts its changes of attachment.
	Roams   int64     `json:"roams"`
	Updated time.Time `json:"updated"`
}

// Validate checks a client record before it is written.
func (c Client) Validate() error {
	if err := names.Host(c.Name); err != nil {
		return fmt.Errorf("client name: %w", err)
	}
	if ip := net.ParseIP(c.UnderlayIP); c.UnderlayIP != "" && (ip == nil || ip.To4() == nil) {
		return fmt.Errorf("client %s: underlay ip %q is not an IPv4 address", c.Name, c.UnderlayIP)
	}
	if ip := net.ParseIP(c.OverlayIP); ip == nil || ip.To4() == nil {
		return fmt.Errorf("client %s: overlay ip %q is not an IPv4 address", c.Name, c.OverlayIP)
	}
	mac, err := net.ParseMAC(c.MAC)
	if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
		return fmt.Errorf("client %s: mac %q is not a unicast MAC", c.Name, c.MAC)
	}
	if c.AttachedTo != "" {
		if err := names.Host(c.AttachedTo); err != nil {
			return fmt.Errorf("client %s: attached to: %w", c.Name, err)
		}
	}
	return nil
}

// Follow is a follow-me policy: Container runs next to Client.
type Follow struct {
	Container string `json:"container"`
	Client    string `json:"client"`
	// Handled is the client's Roams last acted on (claimed).
	Handled int64 `json:"handled"`
	// Revision is the record's version in the store (ClaimRoam swaps it).
	Revision int64 `json:"-"`
}

func (s *Etcd) clientKey(n string) string { return s.prefix + "clients/" + n }
func (s *Etcd) followKey(n string) string { return s.prefix + "follows/" + n }

// PutClient writes a client's record.
func (s *Etcd) PutClient(ctx context.Context, c Client) error {
	if err := c.Validate(); err != nil {
		return err
	}
	b, _ := json.Marshal(c)
	if _, err := s.cli.Put(ctx, s.clientKey(c.Name), string(b)); err != nil {
		return fmt.Errorf("write client %s: %w", c.Name, err)
	}
	return nil
}

// ClientRecord reads one client's record (ErrNotFound if none).
func (s *Etcd) ClientRecord(ctx context.Context, name string) (Client, error) {
	if err := names.Host(name); err != nil {
		return Client{}, fmt.Errorf("client name: %w", err)
	}
	resp, err := s.cli.Get(ctx, s.clientKey(name))
	if err != nil {
		return Client{}, fmt.Errorf("get client %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return Client{}, fmt.Errorf("client %q: %w", name, ErrNotFound)
	}
	var c Client
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
		return Client{}, fmt.Errorf("decode client %s: %w", name, err)
	}
	return c, nil
}

// Clients lists the records of the attached clients, by name.
func (s *Etcd) Clients(ctx context.Context) ([]Client, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"clients/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list clients: %w", err)
	}
	out := make([]Client, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var c Client
		if json.Unmarshal(kv.Value, &c) != nil || c.Validate() != nil || c.UnderlayIP == "" {
			continue // detached, or not ours to follow
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// WatchClients sends a value whenever a client record changes, until ctx
// ends (the channel closes then, or when the watch fails: read again and
// watch anew). Callers read the records with Clients.
func (s *Etcd) WatchClients(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), s.prefix+"clients/", clientv3.WithPrefix())
	go func() {
		defer close(out)
		for wr := range wch {
			if wr.Err() != nil {
				return
			}
			select {
			case out <- struct{}{}:
			default: // one pending signal is enough: the reader reads all
			}
		}
	}()
	return out
}

// Follows lists the follow-me policies, by container.
func (s *Etcd) Follows(ctx context.Context) ([]Follow, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"follows/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list follow policies: %w", err)
	}
	out := make([]Follow, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var f Follow
		if json.Unmarshal(kv.Value, &f) != nil {
			continue
		}
		f.Container = strings.TrimPrefix(string(kv.Key), s.prefix+"follows/")
		f.Revision = kv.ModRevision
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Container < out[j].Container })
	return out, nil
}

// SetFollow records that container follows client, from the client's
// current roam on (an earlier roam does not move it), if both exist; it
// replaces the container's earlier policy.
func (s *Etcd) SetFollow(ctx context.Context, container, client string) (Follow, error) {
	if err := names.Container(container); err != nil {
		return Follow{}, err
	}
	cl, err := s.ClientRecord(ctx, client)
	if err != nil {
		return Follow{}, err
	}
	f := Follow{Container: container, Client: client, Handled: cl.Roams}
	b, _ := json.Marshal(f)
	// The container must still exist as the policy is written: one
	// transaction, so `rm` and `follow` cannot leave a policy behind.
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.ctrKey(container)), ">", 0)).
		Then(clientv3.OpPut(s.followKey(container), string(b))).
		Commit()
	if err != nil {
		return Follow{}, fmt.Errorf("write follow policy of %s: %w", container, err)
	}
	if !resp.Succeeded {
		return Follow{}, fmt.Errorf("container %q: %w", container, ErrNotFound)
	}
	f.Revision = resp.Header.Revision
	return f, nil
}

// Unfollow removes a container's follow policy; false if it had none.
func (s *Etcd) Unfollow(ctx context.Context, container string) (bool, error) {
	if err := names.Container(container); err != nil {
		return false, err
	}
	resp, err := s.cli.Delete(ctx, s.followKey(container))
	if err != nil {
		return false, fmt.Errorf("delete follow policy of %s: %w", container, err)
	}
	return resp.Deleted > 0, nil
}

// ClaimRoam marks roam as handled in f's policy if the policy is still at
// f.Revision: exactly one caller wins a roam (ErrConflict for the others).
func (s *Etcd) ClaimRoam(ctx context.Context, f Follow, roam int64) (Follow, error) {
	key := s.followKey(f.Container)
	f.Handled = roam
	b, _ := json.Marshal(f)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", f.Revision)).
		Then(clientv3.OpPut(key, string(b))).
		Commit()
	if err != nil {
		return Follow{}, fmt.Errorf("claim roam %d of %s's follow policy: %w", roam, f.Container, err)
	}
	if !resp.Succeeded {
		return Follow{}, fmt.Errorf("follow policy of %q: %w", f.Container, ErrConflict)
	}
	f.Revision = resp.Header.Revision
	return f, nil
}

// clientOwner is what a client's overlay IP is claimed with under ips/
// (container names have no ':').
func clientOwner(name string) string { return "client:" + name }

// AllocateClient gives client name an overlay IP from the cluster's
// subnet as a container's is (one claim per transaction, the lowest free
// address) and records it, detached; a client that has a record keeps
// its address.
func (s *Etcd) AllocateClient(ctx context.Context, name string) (Client, error) {
	if err := names.Host(name); err != nil {
		return Client{}, fmt.Errorf("client name: %w", err)
	}
	if c, err := s.ClientRecord(ctx, name); err == nil {
		return c, nil
	} else if !errors.Is(err, ErrNotFound) {
		return Client{}, err
	}
	first, last, ok := ipRange(s.subnet)
	if !ok {
		return Client{}, fmt.Errorf("subnet %s: %w", s.subnet, ErrNoFreeIP)
	}
	taken, err := s.takenIPs(ctx)
	if err != nil {
		return Client{}, err
	}
	for n := first; n <= last; n++ {
		ip := u32ToIP(n)
		if taken[ip.String()] {
			continue
		}
		c := Client{Name: name, OverlayIP: ip.String(), MAC: MACFor(ip).String(), Updated: time.Now().UTC()}
		b, _ := json.Marshal(c)
		resp, err := s.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(s.clientKey(name)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(s.ipKey(c.OverlayIP)), "=", 0),
		).Then(
			clientv3.OpPut(s.clientKey(name), string(b)),
			clientv3.OpPut(s.ipKey(c.OverlayIP), clientOwner(name)),
		).Commit()
		if err != nil {
			return Client{}, fmt.Errorf("allocate an overlay ip for client %s: %w", name, err)
		}
		if resp.Succeeded {
			return c, nil
		}
		if c, err := s.ClientRecord(ctx, name); err == nil {
			return c, nil // allocated meanwhile
		}
	}
	return Client{}, fmt.Errorf("subnet %s: %w", s.subnet, ErrNoFreeIP)
}

// dropClient deletes client name's record and frees its overlay IP (a
// revoked client); none is no error.
func (s *Etcd) dropClient(ctx context.Context, name string) error {
	c, err := s.ClientRecord(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	ops := []clientv3.Op{clientv3.OpDelete(s.clientKey(name))}
	resp, err := s.cli.Get(ctx, s.ipKey(c.OverlayIP))
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == clientOwner(name) {
		ops = append(ops, clientv3.OpDelete(s.ipKey(c.OverlayIP)))
	}
	_, err = s.cli.Txn(ctx).Then(ops...).Commit()
	return err
}

// AllocateClientFromPKI connects to etcd at endpoints as the admin
// certificate admin of dir and allocates client name's overlay IP from
// the cluster's recorded overlay CIDR (AllocateClient).
func AllocateClientFromPKI(ctx context.Context, endpoints []string, dir, admin, name string) (Client, error) {
	tc, err := pki.FilesFor(dir, admin).ClientConfig()
	if err != nil {
		return Client{}, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return Client{}, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	defer cli.Close()
	s := NewEtcd(cli, "/coat/", nil)
	sn, err := s.OverlayCIDR(ctx)
	if err != nil {
		return Client{}, fmt.Errorf("%w: record it first (`coat init --overlay-cidr CIDR`)", err)
	}
	s.subnet = sn
	ctx, cancel := context.WithTimeout(ctx, 2*callTimeout)
	defer cancel()
	return s.AllocateClient(ctx, name)
}
