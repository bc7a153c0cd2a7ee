package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Migration is the cluster's record of a migration under way. It outlives
// its coordinator: the lock that guards it is leased, the record is not,
// so a record whose lock is gone names a migration whose coordinator died,
// and whoever finds it finishes it or rolls it back.
type Migration struct {
	Name        string    `json:"name"`
	From        string    `json:"from"`
	To          string    `json:"to"`
	Phase       string    `json:"phase"`
	Coordinator string    `json:"coordinator"`
	NoTCP       bool      `json:"no_tcp,omitempty"`
	Started     time.Time `json:"started"`
	Updated     time.Time `json:"updated"`
}

// ErrLocked means another party holds a container's migration lock.
var ErrLocked = errors.New("locked")

// Lock is a held, leased lock on one container.
type Lock struct {
	s      *Etcd
	key    string
	lease  clientv3.LeaseID
	cancel context.CancelFunc
}

func (s *Etcd) lockKey(n string) string { return s.prefix + "locks/" + n }
func (s *Etcd) migKey(n string) string  { return s.prefix + "migrations/" + n }

// LockContainer takes the lock on a container for owner, kept alive until
// Unlock or until the process dies (then it expires after ttl).
func (s *Etcd) LockContainer(ctx context.Context, name, owner string, ttl time.Duration) (*Lock, error) {
	secs := max(int64(ttl/time.Second), 2)
	lease, err := s.cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	key := s.lockKey(name)
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, owner, clientv3.WithLease(lease.ID))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		_, _ = s.cli.Revoke(context.WithoutCancel(ctx), lease.ID)
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	if !resp.Succeeded {
		_, _ = s.cli.Revoke(context.WithoutCancel(ctx), lease.ID)
		holder := ""
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			holder = string(kvs[0].Value)
		}
		return nil, fmt.Errorf("container %s is locked by %s: %w", name, holder, ErrLocked)
	}
	kctx, cancel := context.WithCancel(context.Background())
	ka, err := s.cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		cancel()
		return nil, err
	}
	go func() {
		for range ka {
		}
	}()
	return &Lock{s: s, key: key, lease: lease.ID, cancel: cancel}, nil
}

// Unlock releases the lock (revoking its lease deletes the key).
func (l *Lock) Unlock(ctx context.Context) error {
	l.cancel()
	_, err := l.s.cli.Revoke(context.WithoutCancel(ctx), l.lease)
	return err
}

// Locked reports whether a container's lock is held.
func (s *Etcd) Locked(ctx context.Context, name string) (bool, error) {
	resp, err := s.cli.Get(ctx, s.lockKey(name), clientv3.WithCountOnly())
	if err != nil {
		return false, err
	}
	return resp.Count > 0, nil
}

// PutMigration writes a migration record.
func (s *Etcd) PutMigration(ctx context.Context, m Migration) error {
	m.Updated = time.Now().UTC()
	b, _ := json.Marshal(m)
	if _, err := s.cli.Put(ctx, s.migKey(m.Name), string(b)); err != nil {
		return fmt.Errorf("record migration of %s: %w", m.Name, err)
	}
	return nil
}

// Migrations lists the migration records.
func (s *Etcd) Migrations(ctx context.Context) ([]Migration, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"migrations/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	var out []Migration
	for _, kv := range resp.Kvs {
		var m Migration
		if err := json.Unmarshal(kv.Value, &m); err == nil {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// FinishMigration ends a migration in one transaction: the container
// record becomes c (on the destination after a commit, on the source after
// a rollback) and the migration record goes. It fails with ErrConflict if
// the container record changed meanwhile.
func (s *Etcd) FinishMigration(ctx context.Context, c Container) (Container, error) {
	return s.putIfUnchanged(ctx, c, "finish migration of", clientv3.OpDelete(s.migKey(c.Name)))
}

// FinishMigrations implements Store: a group's commit point.
func (s *Etcd) FinishMigrations(ctx context.Context, cs []Container) error {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	for _, c := range cs {
		b, _ := json.Marshal(c)
		key := s.ctrKey(c.Name)
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", c.Revision))
		ops = append(ops, clientv3.OpPut(key, string(b)), clientv3.OpDelete(s.migKey(c.Name)))
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("finish the migration of %d containers: %w", len(cs), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("a container of the group changed: %w", ErrConflict)
	}
	return nil
}

// Migration reads the record of name's migration (ErrNotFound if none).
func (s *Etcd) Migration(ctx context.Context, name string) (Migration, error) {
	resp, err := s.cli.Get(ctx, s.migKey(name))
	if err != nil {
		return Migration{}, fmt.Errorf("get migration of %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return Migration{}, fmt.Errorf("migration of %q: %w", name, ErrNotFound)
	}
	var m Migration
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		return Migration{}, fmt.Errorf("decode migration of %s: %w", name, err)
	}
	return m, nil
}
