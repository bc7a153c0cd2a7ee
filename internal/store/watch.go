package store

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Kinds of records a ClusterEvent is about.
const (
	KindContainer = "container"
	KindHost      = "host"
	KindMigration = "migration"
	KindGone      = "gone" // a host the operator declared gone
)

// ClusterEvent is a change to a container, host, migration or gone
// record, with the record before it (Prev, nil if there was none).
type ClusterEvent struct {
	Kind    string
	Name    string // the record's name (its key's last part)
	Deleted bool
	// Container, Host or Migration: the record after the change (before
	// it, for a deletion); Prev* the record before it (nil if none).
	Container     *Container
	PrevContainer *Container
	Host          *Host
	PrevHost      *Host
	Migration     *Migration
	PrevMigration *Migration
}

// WatchCluster follows the container, host, migration and gone records
// from the store's current revision (returned) until ctx ends; the channel
// closes then, or with an error sent first if the watch fails (etcd lost
// its leader, or compacted the revisions the watch needed).
func (s *Etcd) WatchCluster(ctx context.Context) (<-chan ClusterEvent, <-chan error, int64, error) {
	gctx, cancel := context.WithTimeout(ctx, callTimeout)
	resp, err := s.cli.Get(gctx, s.prefix+"hosts/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return nil, nil, 0, fmt.Errorf("read the store: %w", err)
	}
	rev := resp.Header.Revision
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), s.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV())
	out := make(chan ClusterEvent, 64)
	errc := make(chan error, 1)
	go func() {
		defer close(out)
		defer close(errc)
		for wr := range wch {
			if err := wr.Err(); err != nil {
				if ctx.Err() == nil {
					errc <- fmt.Errorf("watch the store: %w", err)
				}
				return
			}
			for _, ev := range wr.Events {
				var prev []byte
				if ev.PrevKv != nil {
					prev = ev.PrevKv.Value
				}
				ce, ok := s.decodeEvent(string(ev.Kv.Key), ev.Type == clientv3.EventTypeDelete, ev.Kv.Value, prev)
				if !ok {
					continue
				}
				select {
				case out <- ce:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, errc, rev, nil
}

// decodeEvent reads a watched change of key: its value now (none when
// deleted) and before (nil if there was none). Keys of other records
// (addresses, locks, revocations) are not events.
func (s *Etcd) decodeEvent(key string, deleted bool, value, prev []byte) (ClusterEvent, bool) {
	rest, ok := strings.CutPrefix(key, s.prefix)
	if !ok {
		return ClusterEvent{}, false
	}
	dir, name, ok := strings.Cut(rest, "/")
	if !ok || name == "" || strings.Contains(name, "/") {
		return ClusterEvent{}, false
	}
	e := ClusterEvent{Name: name, Deleted: deleted}
	now := value
	if deleted {
		now = prev
	}
	switch dir {
	case "containers":
		e.Kind = KindContainer
		e.Container, e.PrevContainer = decodeAs[Container](now), decodeAs[Container](prev)
		if e.Container == nil && deleted {
			e.Container = &Container{Name: name}
		}
		ok = e.Container != nil
	case "hosts":
		e.Kind = KindHost
		e.Host, e.PrevHost = decodeAs[Host](now), decodeAs[Host](prev)
		if e.Host == nil {
			e.Host = &Host{Name: name} // a deleted one without its previous value
		}
	case "migrations":
		e.Kind = KindMigration
		e.Migration, e.PrevMigration = decodeAs[Migration](now), decodeAs[Migration](prev)
		if e.Migration == nil && deleted {
			e.Migration = &Migration{Name: name}
		}
		ok = e.Migration != nil
	case "gone":
		e.Kind = KindGone
	default:
		return ClusterEvent{}, false
	}
	if deleted {
		e.PrevContainer, e.PrevHost, e.PrevMigration = nil, nil, nil
	}
	return e, ok
}

func decodeAs[T any](b []byte) *T {
	if b == nil {
		return nil
	}
	v := new(T)
	if json.Unmarshal(b, v) != nil {
		return nil
	}
	return v
}
