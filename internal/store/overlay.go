package store

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/coat-project/coat/internal/pki"
)

// Layout under the prefix, besides etcd.go's:
//
//	config/overlay_cidr   the cluster's overlay subnet, e.g. 10.96.0.0/16,
//	                      written by `coat init --overlay-cidr` (admins);
//	                      agents read it at start.

// Overlay subnet sizes: a /8 is the largest (16M addresses), a /27 the
// smallest that leaves addresses (11) once the network, broadcast and
// the first and last ten are kept aside (see Allocatable): a /28 would
// leave none.
const (
	MinOverlayPrefix = 8
	MaxOverlayPrefix = 27
)

// ParseOverlayCIDR parses and checks an overlay subnet: IPv4, a prefix
// between /8 and /27, given as its network address.
func ParseOverlayCIDR(s string) (*net.IPNet, error) {
	ip, sn, err := net.ParseCIDR(s)
	if err != nil {
		return nil, fmt.Errorf("overlay CIDR %q: want an IPv4 network such as 10.96.0.0/16", s)
	}
	if ip.To4() == nil {
		return nil, fmt.Errorf("overlay CIDR %s: only IPv4 is supported, e.g. 10.96.0.0/16", s)
	}
	ones, _ := sn.Mask.Size()
	if ones < MinOverlayPrefix || ones > MaxOverlayPrefix {
		return nil, fmt.Errorf("overlay CIDR %s: the prefix must be between /%d and /%d", s, MinOverlayPrefix, MaxOverlayPrefix)
	}
	if !ip.Equal(sn.IP) {
		return nil, fmt.Errorf("overlay CIDR %s has host bits set: did you mean %s?", s, sn)
	}
	sn.IP = sn.IP.To4()
	return sn, nil
}

// CheckUnderlay fails if an underlay address lies in the overlay subnet:
// the hosts' VXLAN endpoints and the containers would share addresses.
func CheckUnderlay(sn *net.IPNet, underlay []net.IP) error {
	for _, ip := range underlay {
		if ip != nil && sn.Contains(ip) {
			return fmt.Errorf("overlay CIDR %s contains the underlay address %s: pick a range the hosts' own network does not use", sn, ip)
		}
	}
	return nil
}

func (s *Etcd) overlayKey() string { return s.prefix + "config/overlay_cidr" }

// OverlayCIDR reads the cluster's overlay subnet (ErrNotFound if none was
// recorded).
func (s *Etcd) OverlayCIDR(ctx context.Context) (*net.IPNet, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.overlayKey())
	if err != nil {
		return nil, fmt.Errorf("read the cluster's overlay CIDR: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("the cluster's overlay CIDR: %w", ErrNotFound)
	}
	sn, err := ParseOverlayCIDR(string(resp.Kvs[0].Value))
	if err != nil {
		return nil, fmt.Errorf("the cluster's overlay CIDR in etcd: %w", err)
	}
	return sn, nil
}

// SetOverlayCIDR records the cluster's overlay subnet. The first time,
// the addresses containers already hold (a cluster whose agents were
// given --subnet) must all lie in it; a recorded subnet changes only
// while no container holds an address, and the agents must then be
// restarted to use it. Either way the check and the write are one
// transaction: a CreateContainer cannot slip in between.
func (s *Etcd) SetOverlayCIDR(ctx context.Context, sn *net.IPNet) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	want := sn.String()
	key, ips := s.overlayKey(), s.prefix+"ips/"
	cur, err := s.cli.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read the cluster's overlay CIDR: %w", err)
	}
	if len(cur.Kvs) > 0 && string(cur.Kvs[0].Value) == want {
		return nil
	}
	held, err := s.cli.Get(ctx, ips, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("list ips: %w", err)
	}
	var rev int64
	if len(cur.Kvs) > 0 {
		rev = cur.Kvs[0].ModRevision
		if len(held.Kvs) > 0 {
			return fmt.Errorf("the cluster's overlay CIDR is %s and %d container(s) hold addresses in it: remove them (`coat ps`, `coat rm`) before changing it to %s", cur.Kvs[0].Value, len(held.Kvs), want)
		}
	}
	for _, kv := range held.Kvs {
		ip := strings.TrimPrefix(string(kv.Key), ips)
		if !sn.Contains(net.ParseIP(ip)) {
			return fmt.Errorf("a container holds %s, outside %s: pick a CIDR that contains the addresses in use (`coat ps`), or remove those containers", ip, want)
		}
	}
	unchanged := clientv3.Compare(clientv3.ModRevision(key), "=", rev)
	// No address claimed (or changed) since the read.
	noNewIPs := clientv3.Compare(clientv3.ModRevision(ips), "<", held.Header.Revision+1).WithRange(clientv3.GetPrefixRangeEnd(ips))
	resp, err := s.cli.Txn(ctx).If(unchanged, noNewIPs).Then(clientv3.OpPut(key, want)).Commit()
	if err != nil {
		return fmt.Errorf("record the overlay CIDR: %w", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("the overlay CIDR or the containers' addresses changed while recording %s: run it again", want)
	}
	return nil
}

// SetOverlayCIDRFromPKI connects to etcd at endpoints as the admin
// certificate admin of dir, checks sn against the underlay addresses
// given and those of the registered hosts, and records it.
func SetOverlayCIDRFromPKI(ctx context.Context, endpoints []string, dir, admin string, sn *net.IPNet, underlay []net.IP) error {
	tc, err := pki.FilesFor(dir, admin).ClientConfig()
	if err != nil {
		return err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	defer cli.Close()
	s := NewEtcd(cli, "/coat/", nil)
	hctx, cancel := context.WithTimeout(ctx, callTimeout)
	hosts, err := s.Hosts(hctx)
	cancel()
	if err != nil {
		return err
	}
	for _, h := range hosts {
		underlay = append(underlay, net.ParseIP(h.UnderlayIP))
	}
	if err := CheckUnderlay(sn, underlay); err != nil {
		return err
	}
	return s.SetOverlayCIDR(ctx, sn)
}

// ipRange is the allocatable addresses of subnet as integers, first to
// last inclusive (see Allocatable); ok is false if there are none.
func ipRange(subnet *net.IPNet) (first, last uint32, ok bool) {
	ones, bits := subnet.Mask.Size()
	if bits != 32 || ones > MaxOverlayPrefix || ones < 1 || subnet.IP.To4() == nil {
		return 0, 0, false
	}
	size := uint32(1) << (bits - ones)
	base := ipToU32(subnet.IP.To4())
	return base + 10, base + size - 12, true
}

func ipToU32(v4 net.IP) uint32 {
	return uint32(v4[0])<<24 | uint32(v4[1])<<16 | uint32(v4[2])<<8 | uint32(v4[3])
}

func u32ToIP(n uint32) net.IP {
	return net.IPv4(byte(n>>24), byte(n>>16), byte(n>>8), byte(n)).To4()
}

// takenIPs reads the claimed addresses once (keys only).
func (s *Etcd) takenIPs(ctx context.Context) (map[string]bool, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"ips/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("list ips: %w", err)
	}
	taken := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		taken[strings.TrimPrefix(string(kv.Key), s.prefix+"ips/")] = true
	}
	return taken, nil
}
