// Package agent is `coat agent`: one per edge host. It owns the host's
// overlay (through internal/overlay), runs containers (internal/runtime),
// serves the mutual-TLS API the CLI and the other agents call, coordinates
// the migrations of its containers (internal/migrate) and receives those of
// others, and keeps its VXLAN forwarding in line with the cluster records
// it watches in the store.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/coat-project/coat/internal/linkspec"
	"github.com/coat-project/coat/internal/metrics"
	"github.com/coat-project/coat/internal/migrate"

	"github.com/coat-project/coat/internal/api"
	"github.com/coat-project/coat/internal/authz"
	"github.com/coat-project/coat/internal/names"
	"github.com/coat-project/coat/internal/overlay"
	"github.com/coat-project/coat/internal/pki"
	"github.com/coat-project/coat/internal/runtime"
	"github.com/coat-project/coat/internal/store"
)

// Config is an agent's configuration.
type Config struct {
	Name        string
	StateDir    string
	Listen      string // ip:port of the API
	UnderlayIP  net.IP
	UnderlayDev string
	VNI         int
	Subnet      *net.IPNet
	ExtraPeers  []net.IP // VTEPs without an agent nor a client record
	PKI         pki.Files
	Self        string // path of this binary
	// CgroupParent for the containers (default /coat/NAME).
	CgroupParent string
	// LinkRate is the declared rate of this host's underlay link (0:
	// unknown, taken as fast).
	LinkRate linkspec.Rate
	// HostGoneAfter is how long forwarding to a host whose record vanished
	// is kept (vteps.go); 0 is defaultHostGoneAfter.
	HostGoneAfter time.Duration
	// MetricsAddr is where /metrics is served (ip:port); empty: nowhere.
	MetricsAddr string
	// MaxFrozen is how many of this host's containers an outgoing
	// migration may hold frozen at once (freezeslots.go); 0 is the
	// host's CPUs (at least 2), below 0 no limit.
	MaxFrozen int
}

// Agent is a running agent.
type Agent struct {
	cfg  Config
	st   store.Store
	ov   *overlay.Host
	rt   *runtime.Runtime
	log  *slog.Logger
	tls  *tls.Config // client side, for agent-to-agent calls
	mu   sync.Mutex
	busy map[string]bool // containers with an operation under way here
	wg   sync.WaitGroup
	// features: the memory strategies this host's kernel allows.
	features migrate.Features
	// fetching: post-copy restores whose memory is still arriving.
	fetching map[string]*fetch
	// seen: every host's last known VTEP (vteps.go).
	seen map[string]seenHost
	// known: the VTEPs of the last vteps() call, so that a watch event
	// (a switch at a freeze) is applied without reading etcd first.
	known map[string]net.IP
	// clients: the client devices' records, by name (clients.go); the
	// map is replaced, never changed in place.
	clients map[string]store.Client
	// fwdMu orders the full resync of the FDB and the writes of the
	// clients' entries, so the resync never writes back an old VTEP.
	fwdMu sync.Mutex
	// tunnels: loopback ports peers may reach (tunnel.go).
	tunnels map[string]tunnelTarget
	// revoked: certificates refused (authz.go follows the store).
	revoked authz.Revoked
	// incoming: requests of incoming migrations being served, by name.
	incoming map[string]int
	// prepared: the revision of each incoming container's record at
	// prepare (the commit swaps it directly, without reading it again).
	prepared map[string]int64
	// imageBusy: images being imported, copied or removed here, each
	// closed when done (imageLock).
	imageBusy map[string]chan struct{}
	// layerPending: layers received here that no image lists yet, and
	// when: gcLayers leaves them to the image being made of them.
	layerPending map[string]time.Time
	// groups: group moves being restored here (group.go).
	groups map[string]*incomingGroup
	// metrics: nil without a metrics address (its methods are nil-safe).
	metrics *metrics.Metrics
	// frozen: the freeze slots taken (freezeslots.go); nil: no limit.
	frozen chan struct{}
}

// enter counts a request of an incoming migration of name as under way
// (collectIncoming leaves such a migration alone) until the returned
// function is called.
func (a *Agent) enter(name string) func() {
	a.mu.Lock()
	if a.incoming == nil {
		a.incoming = map[string]int{}
	}
	a.incoming[name]++
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		if a.incoming[name]--; a.incoming[name] <= 0 {
			delete(a.incoming, name)
		}
		a.mu.Unlock()
	}
}

// inflight is the number of requests of an incoming migration of name
// being served.
func (a *Agent) inflight(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.incoming[name]
}

// New sets up the host's overlay and runtime.
func New(cfg Config, st store.Store, log *slog.Logger) (*Agent, error) {
	if err := names.Host(cfg.Name); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, err
	}
	ov, err := overlay.Open("")
	if err != nil {
		return nil, fmt.Errorf("open overlay: %w", err)
	}
	if err := ov.Ensure(overlay.Config{VNI: cfg.VNI, Port: 4789, LocalIP: cfg.UnderlayIP, UnderlayDev: cfg.UnderlayDev}); err != nil {
		return nil, fmt.Errorf("set up overlay: %w", err)
	}
	rt, err := runtime.New(cfg.StateDir, cfg.Name, cfg.Self)
	if err != nil {
		return nil, err
	}
	if cfg.CgroupParent != "" {
		rt.CgroupParent = cfg.CgroupParent
	}
	if err := rt.MountMemDirs(); err != nil {
		log.Warn("checkpoint images go to disk", "err", err)
	}
	if err := rt.EnableFastPaths(); err != nil {
		log.Warn("checkpoints and restores will be slower", "err", err)
	}
	ctls, err := cfg.PKI.ClientConfig()
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, st: st, ov: ov, rt: rt, log: log, tls: ctls, busy: map[string]bool{}, fetching: map[string]*fetch{},
		frozen: freezeSlots(cfg.MaxFrozen)}
	// Agents answer as hosts; peerTLS also checks it is the one called.
	a.tls.VerifyConnection = a.verifyPeer(pki.RoleHost, "")
	var note string
	a.features, note = hostFeatures()
	if note != "" {
		log.Info(note)
	}
	if cfg.MetricsAddr != "" {
		a.metrics = metrics.New(cfg.Name)
	}
	a.emptyTrash() // left by an agent that died before it was done
	return a, nil
}

// Run serves until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	stls, err := a.cfg.PKI.ServerConfig()
	if err != nil {
		return err
	}
	// A certificate without a role, or a revoked one, fails the handshake
	// (and every request, should it be revoked while connected).
	stls.VerifyConnection = a.verifyPeer("", "")
	if err := a.loadRevocations(ctx); err != nil {
		return fmt.Errorf("%w (is etcd up, and does it know this host? `coat init` sets its users up)", err)
	}
	if err := a.st.RegisterHost(ctx, store.Host{
		Name: a.cfg.Name, UnderlayIP: a.cfg.UnderlayIP.String(), API: a.cfg.Listen, Started: time.Now().UTC(), LinkRate: int64(a.cfg.LinkRate),
		LazyPages: a.features.LazyPages, SoftDirty: a.features.SoftDirty, ImageCopy: true,
	}, 5*time.Second); err != nil {
		return err
	}
	tln, err := listenConfig().Listen(ctx, "tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", a.cfg.Listen, err)
	}
	ln := tls.NewListener(tln, stls)
	if a.metrics != nil {
		done, err := a.metrics.Serve(ctx, a.cfg.MetricsAddr, slog.NewLogLogger(a.log.With("server", "metrics").Handler(), slog.LevelWarn))
		if err != nil {
			tln.Close()
			return err
		}
		a.wg.Add(2)
		go func() {
			defer a.wg.Done()
			if err := <-done; err != nil {
				a.log.Error("metrics server stopped", "addr", a.cfg.MetricsAddr, "err", err)
			}
		}()
		go func() { defer a.wg.Done(); a.sampleStore(ctx) }()
		a.log.Info("serving metrics", "addr", "http://"+a.cfg.MetricsAddr+"/metrics")
	}
	// The clients' forwarding is known before the first resync, which
	// would otherwise drop what an earlier run of this agent set for them.
	a.refreshClients(ctx)
	a.wg.Add(5)
	go func() { defer a.wg.Done(); a.watchClients(ctx) }()
	go func() { defer a.wg.Done(); a.followRevocations(ctx) }()
	go func() {
		defer a.wg.Done()
		if err := a.rt.Warm(ctx); err != nil {
			a.log.Warn("warm-up (the first migration will be slower)", "err", err)
		}
	}()
	go func() { defer a.wg.Done(); a.forward(ctx) }()
	go func() { defer a.wg.Done(); a.recoverLoop(ctx) }()
	// net/http's own messages (failed handshakes...) go through the
	// agent's logger too, so that --log-format json holds for every line.
	srv := &http.Server{Handler: a.routes(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	a.log.Info("agent serving", "listen", a.cfg.Listen, "underlay", a.cfg.UnderlayIP)
	err = srv.Serve(ln)
	a.wg.Wait()
	a.rt.UnmountMemDirs()
	if cerr := a.rt.Close(); cerr != nil {
		a.log.Warn("stop", "err", cerr)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// peerClient is an API client for another agent.
func (a *Agent) peerClient(h store.Host) *api.Client {
	return &api.Client{
		Base: "https://" + h.API,
		// Keepalive finds a peer lost to a partition within seconds, also
		// in the middle of a long image stream.
		HTTP: &http.Client{Transport: &http.Transport{
			TLSClientConfig: a.peerTLS(h.Name), DisableCompression: true,
			DialContext:         a.peerDialer().DialContext,
			TLSHandshakeTimeout: 10 * time.Second,
		}},
	}
}

// lock marks a container busy on this agent; false if it already is.
func (a *Agent) lock(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.busy[name] {
		return false
	}
	a.busy[name] = true
	return true
}

// lockWait is lock, retried for up to d.
func (a *Agent) lockWait(name string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !a.lock(name) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func (a *Agent) unlock(name string) {
	a.mu.Lock()
	delete(a.busy, name)
	a.mu.Unlock()
}

func (a *Agent) netnsPath(name string) string {
	return filepath.Join(a.cfg.StateDir, "netns", name)
}

// vethName is the host side of a container's veth: "cv" and a hash of the
// name, within the kernel's 15 characters.
func vethName(name string) string {
	h := fnv.New32a()
	h.Write([]byte(name))
	return fmt.Sprintf("cv%08x", h.Sum32())
}

func (a *Agent) endpoint(c store.Container) (overlay.Endpoint, error) {
	ip := net.ParseIP(c.IP)
	mac, err := net.ParseMAC(c.MAC)
	if err != nil || ip == nil {
		return overlay.Endpoint{}, fmt.Errorf("container %s has a bad address %q/%q", c.Name, c.IP, c.MAC)
	}
	return overlay.Endpoint{
		NetNS:    a.netnsPath(c.Name),
		HostVeth: vethName(c.Name),
		Addr:     net.IPNet{IP: ip, Mask: a.cfg.Subnet.Mask},
		MAC:      mac,
		MTU:      1450,
	}, nil
}

func (a *Agent) spec(c store.Container) runtime.Spec {
	return runtime.Spec{Name: c.Name, Image: c.Image, Args: c.Args, Env: c.Env, Cwd: c.Cwd, UID: c.UID, GID: c.GID, NetNS: a.netnsPath(c.Name)}
}
