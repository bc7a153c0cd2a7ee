// Package store holds COAT's cluster state: which edge hosts exist, which
// containers run where, and which overlay IPs are taken.
//
// Everything that must agree across hosts lives behind the Store interface so
// that agents and the CLI never share a disk or a process to find each other.
// The only implementation is backed by etcd (see etcd.go): names and IPs are
// claimed in one transaction, a container record carries its etcd revision so
// updates are compare-and-swap, and hosts register with a lease so a dead
// agent drops out of the host list on its own.
package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/pki"
)

// Errors callers branch on.
var (
	ErrNotFound  = errors.New("not found")
	ErrNameTaken = errors.New("name already taken")
	ErrIPTaken   = errors.New("ip already taken")
	ErrConflict  = errors.New("record changed concurrently")
	ErrNoFreeIP  = errors.New("no free overlay ip")
)

// Host is one edge host as its agent registered it.
type Host struct {
	Name       string    `json:"name"`
	UnderlayIP string    `json:"underlay_ip"` // VXLAN tunnel endpoint
	API        string    `json:"api"`         // host:port of the agent's API
	Started    time.Time `json:"started"`
	// LinkRate is the underlay rate the operator declared (bits/s, 0:
	// unknown): what --strategy auto weighs a transfer against.
	LinkRate int64 `json:"link_rate,omitempty"`
	// LazyPages and SoftDirty: what the host's kernel offers for
	// post-copy and pre-copy (migrate.Features).
	LazyPages bool `json:"lazy_pages,omitempty"`
	SoftDirty bool `json:"soft_dirty,omitempty"`
	// ImageCopy: the agent gets a migrating container's image it lacks
	// (the image-ready step); an older agent's record says false.
	ImageCopy bool `json:"image_copy,omitempty"`
}

// Status is a container's lifecycle state as the cluster sees it.
type Status string

// Container states. A container moves created -> running, and
// running -> migrating -> running (on the destination, or back on the
// source after a rollback); any state -> stopped/failed on errors or rm.
const (
	StatusCreated   Status = "created"
	StatusRunning   Status = "running"
	StatusMigrating Status = "migrating"
	StatusStopped   Status = "stopped"
	StatusFailed    Status = "failed"
)

// Container is the cluster's record of one container.
type Container struct {
	Name    string    `json:"name"`
	Host    string    `json:"host"`
	Image   string    `json:"image"`
	IP      string    `json:"ip"`
	MAC     string    `json:"mac"`
	Args    []string  `json:"args"`
	Env     []string  `json:"env,omitempty"`
	Cwd     string    `json:"cwd,omitempty"` // working directory; "" is /
	UID     uint32    `json:"uid,omitempty"`
	GID     uint32    `json:"gid,omitempty"`
	Status  Status    `json:"status"`
	Error   string    `json:"error,omitempty"`
	Created time.Time `json:"created"`
	// MigratingTo names the destination while Status is migrating.
	MigratingTo string `json:"migrating_to,omitempty"`
	// SwitchedTo is set (to MigratingTo) once the container is frozen
	// and its traffic goes to the destination: every host forwards its
	// MAC there from then on (where it is held until the restore), not
	// only at the commit.
	SwitchedTo string `json:"switched_to,omitempty"`
	// Revision is the store's version of this record; UpdateContainer
	// succeeds only if it still matches.
	Revision int64 `json:"-"`
}

// ForwardTo is the host whose VTEP the container's traffic goes to: the
// destination once a migration switched it, otherwise its host.
func (c Container) ForwardTo() string {
	if c.Status == StatusMigrating && c.SwitchedTo != "" {
		return c.SwitchedTo
	}
	return c.Host
}

// Event is a change to the container records seen by a watch.
type Event struct {
	Deleted   bool
	Container Container
}

// Store is the cluster state. Implementations must be safe for concurrent use.
type Store interface {
	// RegisterHost publishes h and keeps it alive until ctx ends; the record
	// disappears within ttl after the process dies.
	RegisterHost(ctx context.Context, h Host, ttl time.Duration) error
	Hosts(ctx context.Context) ([]Host, error)
	Host(ctx context.Context, name string) (Host, error)

	// CreateContainer claims c.Name and c.IP atomically; an empty c.IP is
	// allocated from the cluster's overlay subnet, and c.MAC derived from it.
	CreateContainer(ctx context.Context, c Container) (Container, error)
	Container(ctx context.Context, name string) (Container, error)
	Containers(ctx context.Context) ([]Container, error)
	// UpdateContainer writes c if its record is still at c.Revision.
	UpdateContainer(ctx context.Context, c Container) (Container, error)
	// DeleteContainer removes the record and frees its IP.
	DeleteContainer(ctx context.Context, name string) error
	// WatchContainers sends the current records, then every change, until
	// ctx ends.
	WatchContainers(ctx context.Context) (<-chan Event, error)

	// LockContainer takes a container's leased migration lock.
	LockContainer(ctx context.Context, name, owner string, ttl time.Duration) (*Lock, error)
	Locked(ctx context.Context, name string) (bool, error)
	// PutMigration records a migration's phase; Migrations lists them.
	PutMigration(ctx context.Context, m Migration) error
	Migrations(ctx context.Context) ([]Migration, error)
	// Migration reads one migration record (ErrNotFound if none).
	Migration(ctx context.Context, name string) (Migration, error)
	// Revocations lists the revoked certificates (admins write them).
	Revocations(ctx context.Context) ([]pki.Revocation, error)
	// FinishMigration writes the container's final record and deletes
	// its migration record in one transaction.
	FinishMigration(ctx context.Context, c Container) (Container, error)
	// FinishMigrations is FinishMigration for several containers in one
	// transaction: all records are written (each still at its Revision)
	// or none (ErrConflict).
	FinishMigrations(ctx context.Context, cs []Container) error

	// DeclareGone records that the operator declared host name gone: the
	// other hosts drop their forwarding to it. A host that registers
	// after the declaration is back.
	DeclareGone(ctx context.Context, name string) error
	// Gone lists the hosts declared gone, with when.
	Gone(ctx context.Context) (map[string]time.Time, error)

	// Clients lists the client devices' records (clients.go); WatchClients
	// signals their changes.
	Clients(ctx context.Context) ([]Client, error)
	WatchClients(ctx context.Context) <-chan struct{}
	// Follows lists the follow-me policies; ClaimRoam marks a client's
	// roam handled in one of them, once.
	Follows(ctx context.Context) ([]Follow, error)
	ClaimRoam(ctx context.Context, f Follow, roam int64) (Follow, error)
	// Image reads an image's record (ErrNotFound if none): a destination
	// checks a copy of the image against its RootfsDigest.
	Image(ctx context.Context, name string) (Image, error)

	Close() error
}

// ValidName reports whether s can name a container: see names.Container.
func ValidName(s string) error { return names.Container(s) }

// MACFor derives the stable MAC of an overlay IPv4 address: a locally
// administered unicast MAC whose last four bytes are the address, so a
// container keeps its MAC wherever it runs.
func MACFor(ip net.IP) net.HardwareAddr {
	v4 := ip.To4()
	if v4 == nil {
		return nil
	}
	return net.HardwareAddr{0x02, 0xc0, v4[0], v4[1], v4[2], v4[3]}
}

// Allocatable lists the addresses of subnet that containers may get: all
// but the network, broadcast, the first ten (gateways, lab nodes) and the
// last ten (the lab's client node). It builds the whole list: allocation
// itself walks the range without one (see CreateContainer).
func Allocatable(subnet *net.IPNet) []net.IP {
	first, last, ok := ipRange(subnet)
	if !ok {
		return nil
	}
	out := make([]net.IP, 0, last-first+1)
	for n := first; n <= last; n++ {
		out = append(out, u32ToIP(n))
	}
	return out
}

// InSubnet checks that ip is an allocatable address of subnet.
func InSubnet(subnet *net.IPNet, ip net.IP) error {
	if ip.To4() == nil {
		return fmt.Errorf("invalid ip %q: want an IPv4 address in %s", ip, subnet)
	}
	if !subnet.Contains(ip) {
		return fmt.Errorf("ip %s is outside the overlay subnet %s", ip, subnet)
	}
	if ones, bits := subnet.Mask.Size(); bits == 32 && ones < 31 {
		v4, mask := ip.To4(), net.IP(subnet.Mask).To4()
		network, broadcast := true, true
		for i := range v4 {
			network = network && v4[i]&^mask[i] == 0
			broadcast = broadcast && v4[i]|mask[i] == 0xff
		}
		if network || broadcast {
			return fmt.Errorf("ip %s is the network or broadcast address of the overlay subnet %s", ip, subnet)
		}
	}
	return nil
}
