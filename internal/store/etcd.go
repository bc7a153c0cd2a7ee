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

	"github.com/coat-project/coat/internal/names"
)

// Etcd is the Store backed by an etcd cluster. Layout under the prefix:
//
//	hosts/<name>       Host JSON, attached to the agent's lease
//	containers/<name>  Container JSON
//	ips/<ip>           the name of the container holding ip
type Etcd struct {
	cli    *clientv3.Client
	prefix string
	subnet *net.IPNet
}

// NewEtcd wraps an etcd client. subnet is the overlay subnet IPs are
// allocated from.
func NewEtcd(cli *clientv3.Client, prefix string, subnet *net.IPNet) *Etcd {
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Etcd{cli: cli, prefix: prefix, subnet: subnet}
}

// Client exposes the underlying etcd client.
func (s *Etcd) Client() *clientv3.Client { return s.cli }

// Subnet is the overlay subnet.
func (s *Etcd) Subnet() *net.IPNet { return s.subnet }

// Close closes the etcd client.
func (s *Etcd) Close() error { return s.cli.Close() }

func (s *Etcd) hostKey(n string) string { return s.prefix + "hosts/" + n }
func (s *Etcd) ctrKey(n string) string  { return s.prefix + "containers/" + n }
func (s *Etcd) ipKey(ip string) string  { return s.prefix + "ips/" + ip }

// callTimeout bounds one call to etcd made on the store's own behalf.
const callTimeout = 5 * time.Second

// RegisterHost implements Store. If the lease is lost (etcd unreachable
// for longer than ttl), the host registers again as soon as it can.
func (s *Etcd) RegisterHost(ctx context.Context, h Host, ttl time.Duration) error {
	// Names are keys: a '/' would reach another key space.
	if err := names.Host(h.Name); err != nil {
		return err
	}
	ka, err := s.register(ctx, h, ttl)
	if err != nil {
		return err
	}
	go func() {
		for ctx.Err() == nil {
			for range ka { // drained until ctx ends or the lease is lost
			}
			for ctx.Err() == nil {
				if ka, err = s.register(ctx, h, ttl); err == nil {
					break
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
	}()
	return nil
}

func (s *Etcd) register(ctx context.Context, h Host, ttl time.Duration) (<-chan *clientv3.LeaseKeepAliveResponse, error) {
	secs := int64(ttl / time.Second)
	if secs < 1 {
		secs = 1
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	lease, err := s.cli.Grant(cctx, secs)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	b, _ := json.Marshal(h)
	if _, err := s.cli.Put(cctx, s.hostKey(h.Name), string(b), clientv3.WithLease(lease.ID)); err != nil {
		return nil, fmt.Errorf("register host %s: %w", h.Name, err)
	}
	ka, err := s.cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		return nil, fmt.Errorf("keep lease alive: %w", err)
	}
	return ka, nil
}

// Hosts implements Store.
func (s *Etcd) Hosts(ctx context.Context) ([]Host, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"hosts/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	out := make([]Host, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var h Host
		if err := json.Unmarshal(kv.Value, &h); err != nil {
			return nil, fmt.Errorf("decode host %s: %w", kv.Key, err)
		}
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Host implements Store.
func (s *Etcd) Host(ctx context.Context, name string) (Host, error) {
	resp, err := s.cli.Get(ctx, s.hostKey(name))
	if err != nil {
		return Host{}, fmt.Errorf("get host %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return Host{}, fmt.Errorf("host %q: %w", name, ErrNotFound)
	}
	var h Host
	err = json.Unmarshal(resp.Kvs[0].Value, &h)
	return h, err
}

// CreateContainer implements Store. The name and the IP are claimed in one
// transaction; with no IP given it tries free addresses in order.
func (s *Etcd) CreateContainer(ctx context.Context, c Container) (Container, error) {
	// Names are keys: a '/' would reach another key space.
	if err := ValidName(c.Name); err != nil {
		return Container{}, err
	}
	if c.IP != "" {
		if err := InSubnet(s.subnet, net.ParseIP(c.IP)); err != nil {
			return Container{}, err
		}
		return s.claim(ctx, c)
	}
	// One read of the claimed addresses, then a claim of the lowest free
	// one per transaction; a claim lost to a concurrent create moves on
	// to the next free address. A /16 costs two round trips, not 65,000.
	first, last, ok := ipRange(s.subnet)
	if !ok {
		return Container{}, fmt.Errorf("subnet %s: %w", s.subnet, ErrNoFreeIP)
	}
	taken, err := s.takenIPs(ctx)
	if err != nil {
		return Container{}, err
	}
	for n := first; n <= last; n++ {
		ip := u32ToIP(n).String()
		if taken[ip] {
			continue
		}
		c.IP = ip
		out, err := s.claim(ctx, c)
		if errors.Is(err, ErrIPTaken) {
			continue // lost a race for this address; try the next
		}
		return out, err
	}
	return Container{}, fmt.Errorf("subnet %s: %w", s.subnet, ErrNoFreeIP)
}

func (s *Etcd) claim(ctx context.Context, c Container) (Container, error) {
	ip := net.ParseIP(c.IP).To4()
	c.IP = ip.String()
	c.MAC = MACFor(ip).String()
	b, _ := json.Marshal(c)
	nameFree := clientv3.Compare(clientv3.CreateRevision(s.ctrKey(c.Name)), "=", 0)
	ipFree := clientv3.Compare(clientv3.CreateRevision(s.ipKey(c.IP)), "=", 0)
	resp, err := s.cli.Txn(ctx).If(nameFree, ipFree).Then(
		clientv3.OpPut(s.ctrKey(c.Name), string(b)),
		clientv3.OpPut(s.ipKey(c.IP), c.Name),
	).Else(
		clientv3.OpGet(s.ctrKey(c.Name), clientv3.WithCountOnly()),
	).Commit()
	if err != nil {
		return Container{}, fmt.Errorf("create container %s: %w", c.Name, err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().Count > 0 {
			return Container{}, fmt.Errorf("container %q: %w", c.Name, ErrNameTaken)
		}
		return Container{}, fmt.Errorf("ip %s: %w", c.IP, ErrIPTaken)
	}
	c.Revision = resp.Header.Revision
	return c, nil
}

// Container implements Store.
func (s *Etcd) Container(ctx context.Context, name string) (Container, error) {
	resp, err := s.cli.Get(ctx, s.ctrKey(name))
	if err != nil {
		return Container{}, fmt.Errorf("get container %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return Container{}, fmt.Errorf("container %q: %w", name, ErrNotFound)
	}
	var c Container
	if err := json.Unmarshal(resp.Kvs[0].Value, &c); err != nil {
		return Container{}, fmt.Errorf("decode container %s: %w", name, err)
	}
	c.Revision = resp.Kvs[0].ModRevision
	return c, nil
}

// Containers implements Store.
func (s *Etcd) Containers(ctx context.Context) ([]Container, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"containers/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]Container, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var c Container
		if err := json.Unmarshal(kv.Value, &c); err != nil {
			return nil, fmt.Errorf("decode container %s: %w", kv.Key, err)
		}
		c.Revision = kv.ModRevision
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// UpdateContainer implements Store.
func (s *Etcd) UpdateContainer(ctx context.Context, c Container) (Container, error) {
	return s.putIfUnchanged(ctx, c, "update container")
}

// putIfUnchanged writes c, together with any further operations, only if
// its record is still at c.Revision.
func (s *Etcd) putIfUnchanged(ctx context.Context, c Container, what string, also ...clientv3.Op) (Container, error) {
	b, _ := json.Marshal(c)
	key := s.ctrKey(c.Name)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", c.Revision)).
		Then(append([]clientv3.Op{clientv3.OpPut(key, string(b))}, also...)...).Commit()
	if err != nil {
		return Container{}, fmt.Errorf("%s %s: %w", what, c.Name, err)
	}
	if !resp.Succeeded {
		return Container{}, fmt.Errorf("container %q: %w", c.Name, ErrConflict)
	}
	c.Revision = resp.Header.Revision
	return c, nil
}

// DeleteContainer implements Store.
func (s *Etcd) DeleteContainer(ctx context.Context, name string) error {
	c, err := s.Container(ctx, name)
	if err != nil {
		return err
	}
	_, err = s.cli.Txn(ctx).Then(
		clientv3.OpDelete(s.ctrKey(name)),
		clientv3.OpDelete(s.ipKey(c.IP)),
	).Commit()
	if err != nil {
		return fmt.Errorf("delete container %s: %w", name, err)
	}
	// Its follow-me policy goes too, on its own: a host of a cluster whose
	// access control predates follows/ may not write it (`coat init`
	// grants it), and that must not keep the container from going. A
	// policy left behind would apply to a later container of that name
	// (`coat ps` shows it, `coat unfollow` removes it).
	_, _ = s.cli.Delete(ctx, s.followKey(name))
	return nil
}

// WatchContainers implements Store.
func (s *Etcd) WatchContainers(ctx context.Context) (<-chan Event, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"containers/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make(chan Event, 64)
	initial := make([]Event, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var c Container
		if json.Unmarshal(kv.Value, &c) == nil {
			c.Revision = kv.ModRevision
			initial = append(initial, Event{Container: c})
		}
	}
	wch := s.cli.Watch(ctx, s.prefix+"containers/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1), clientv3.WithPrevKV())
	go func() {
		defer close(out)
		for _, ev := range initial {
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
		for wr := range wch {
			for _, ev := range wr.Events {
				var e Event
				switch ev.Type {
				case clientv3.EventTypeDelete:
					e.Deleted = true
					if ev.PrevKv != nil {
						_ = json.Unmarshal(ev.PrevKv.Value, &e.Container)
					}
					e.Container.Name = strings.TrimPrefix(string(ev.Kv.Key), s.prefix+"containers/")
				default:
					if json.Unmarshal(ev.Kv.Value, &e.Container) != nil {
						continue
					}
					e.Container.Revision = ev.Kv.ModRevision
				}
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

func (s *Etcd) goneKey(n string) string { return s.prefix + "gone/" + n }

// DeclareGone implements Store.
func (s *Etcd) DeclareGone(ctx context.Context, name string) error {
	if _, err := s.cli.Put(ctx, s.goneKey(name), time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
		return fmt.Errorf("declare host %s gone: %w", name, err)
	}
	return nil
}

// Gone implements Store.
func (s *Etcd) Gone(ctx context.Context) (map[string]time.Time, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"gone/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list hosts declared gone: %w", err)
	}
	out := map[string]time.Time{}
	for _, kv := range resp.Kvs {
		t, err := time.Parse(time.RFC3339Nano, string(kv.Value))
		if err != nil {
			continue
		}
		out[strings.TrimPrefix(string(kv.Key), s.prefix+"gone/")] = t
	}
	return out, nil
}
