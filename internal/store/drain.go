package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/coat-project/coat/internal/names"
)

// Layout under the prefix, besides etcd.go's:
//
//	drains/<host>      Drain JSON while `coat drain HOST` runs, attached to
//	                   a lease the drain keeps alive: a drain killed
//	                   without cleaning up disappears within its TTL.

// ErrDraining is returned by StartDrain when the host is already being
// drained.
var ErrDraining = errors.New("host is already being drained")

// Drain is a drain of a host in progress.
type Drain struct {
	Host    string    `json:"host"`
	Started time.Time `json:"started"`
	// Plan maps each container to move to its destination.
	Plan map[string]string `json:"plan"`
}

// DrainHandle is a recorded drain; End removes the record.
type DrainHandle struct {
	s     *Etcd
	host  string
	lease clientv3.LeaseID
	stop  context.CancelFunc
}

func (s *Etcd) drainKey(h string) string { return s.prefix + "drains/" + h }

// StartDrain records d unless its host is already being drained
// (ErrDraining). The record lives on a lease of ttl that is kept alive
// until End or until ctx ends.
func (s *Etcd) StartDrain(ctx context.Context, d Drain, ttl time.Duration) (*DrainHandle, error) {
	if err := names.Host(d.Host); err != nil {
		return nil, err
	}
	secs := max(int64(ttl/time.Second), 1)
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	lease, err := s.cli.Grant(cctx, secs)
	if err != nil {
		return nil, fmt.Errorf("grant lease for the drain of %s: %w", d.Host, err)
	}
	b, _ := json.Marshal(d)
	key := s.drainKey(d.Host)
	resp, err := s.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b), clientv3.WithLease(lease.ID))).
		Commit()
	if err == nil && !resp.Succeeded {
		err = fmt.Errorf("host %s: %w", d.Host, ErrDraining)
	}
	if err != nil {
		_, _ = s.cli.Revoke(cctx, lease.ID)
		return nil, fmt.Errorf("record the drain of %s: %w", d.Host, err)
	}
	kctx, stop := context.WithCancel(ctx)
	ka, err := s.cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		stop()
		_, _ = s.cli.Revoke(cctx, lease.ID)
		return nil, fmt.Errorf("keep the drain of %s alive: %w", d.Host, err)
	}
	go func() {
		for range ka {
		}
	}()
	return &DrainHandle{s: s, host: d.Host, lease: lease.ID, stop: stop}, nil
}

// Update rewrites the drain's record (on the same lease).
func (h *DrainHandle) Update(ctx context.Context, d Drain) error {
	b, _ := json.Marshal(d)
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if _, err := h.s.cli.Put(cctx, h.s.drainKey(h.host), string(b), clientv3.WithLease(h.lease)); err != nil {
		return fmt.Errorf("update the drain of %s: %w", h.host, err)
	}
	return nil
}

// End removes the drain's record: it revokes the lease, which deletes
// the key. It has its own deadline and works after ctx was cancelled
// (Ctrl-C); if etcd cannot be reached the record expires with the lease.
func (h *DrainHandle) End() error {
	h.stop()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if _, err := h.s.cli.Revoke(ctx, h.lease); err != nil {
		return fmt.Errorf("end the drain of %s (the record expires with its lease): %w", h.host, err)
	}
	return nil
}

// Drains lists the drains in progress by host.
func (s *Etcd) Drains(ctx context.Context) (map[string]Drain, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"drains/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list drains: %w", err)
	}
	out := map[string]Drain{}
	for _, kv := range resp.Kvs {
		var d Drain
		if json.Unmarshal(kv.Value, &d) != nil {
			continue
		}
		out[strings.TrimPrefix(string(kv.Key), s.prefix+"drains/")] = d
	}
	return out, nil
}
