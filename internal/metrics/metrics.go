// Package metrics is an agent's Prometheus metrics: a registry of its own
// (not the global one), what the agent records into it, and the handler
// that serves it in the Prometheus text format.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Outcomes of a migration, the values of the outcome label.
const (
	OutcomeCommitted  = "committed"
	OutcomeRolledBack = "rolled_back"
	OutcomeFailed     = "failed"
)

// Metrics is one agent's metrics.
type Metrics struct {
	Registry *prometheus.Registry

	Migrations     *prometheus.CounterVec   // outcome, strategy
	PhaseSeconds   *prometheus.HistogramVec // phase
	Downtime       *prometheus.HistogramVec // strategy
	BytesMoved     prometheus.Counter
	FramesHeld     prometheus.Counter
	FramesReplayed prometheus.Counter
	Containers     *prometheus.GaugeVec // status
	EtcdRTT        prometheus.Histogram
	Recovered      *prometheus.CounterVec // outcome
	BuildInfo      *prometheus.GaugeVec
}

// New makes an agent's metrics, labelled with its host name.
func New(host string) *Metrics {
	c := prometheus.Labels{"host": host}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coat_migrations_total", ConstLabels: c,
			Help: "Migrations this agent coordinated (as the source), by outcome (committed, rolled_back, failed) and memory strategy.",
		}, []string{"outcome", "strategy"}),
		PhaseSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "coat_migration_phase_duration_seconds", ConstLabels: c,
			Help:    "How long each phase of a migration took, on the source.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"phase"}),
		Downtime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "coat_migration_downtime_seconds", ConstLabels: c,
			Help:    "How long a committed migration's container was frozen (from the freeze to the restore on the destination).",
			Buckets: []float64{.01, .025, .05, .1, .15, .2, .3, .5, .75, 1, 2, 5, 10, 30},
		}, []string{"strategy"}),
		BytesMoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coat_migration_bytes_total", ConstLabels: c,
			Help: "Bytes sent to destinations by committed migrations (checkpoint image, rootfs changes and post-copy pages).",
		}),
		FramesHeld: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coat_frames_held_total", ConstLabels: c,
			Help: "Frames sent to containers migrating from this host that it held during the freeze and passed on to the destination for replay.",
		}),
		FramesReplayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coat_frames_replayed_total", ConstLabels: c,
			Help: "Held frames delivered to a restored (or resumed) container on this host.",
		}),
		Containers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "coat_containers", ConstLabels: c,
			Help: "Containers recorded on this host, by status (as last read from the store).",
		}, []string{"status"}),
		EtcdRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "coat_etcd_round_trip_seconds", ConstLabels: c,
			Help:    "Round-trip time of a read from the cluster store (etcd), sampled periodically.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		Recovered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coat_migrations_recovered_total", ConstLabels: c,
			Help: "Migrations left by a dead or cut-off coordinator that this agent finished, by outcome (committed, rolled_back).",
		}, []string{"outcome"}),
		BuildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "coat_build_info", ConstLabels: c,
			Help: "The agent's build: always 1, with the version, the Go version and the VCS revision as labels.",
		}, []string{"version", "goversion", "revision"}),
	}
	version, gover, rev := buildInfo()
	m.BuildInfo.WithLabelValues(version, gover, rev).Set(1)
	m.Registry.MustRegister(m.Migrations, m.PhaseSeconds, m.Downtime, m.BytesMoved, m.FramesHeld,
		m.FramesReplayed, m.Containers, m.EtcdRTT, m.Recovered, m.BuildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// buildInfo is the binary's module version ("(devel)" for a build from a
// work tree), Go version and VCS revision ("" when not stamped).
func buildInfo() (version, goversion, revision string) {
	version, goversion = "unknown", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	version, goversion = bi.Main.Version, bi.GoVersion
	if version == "" {
		version = "(devel)"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			revision = s.Value
		}
	}
	return
}

// Migration is what a migration's outcome records.
type Migration struct {
	Outcome  string // OutcomeCommitted, OutcomeRolledBack or OutcomeFailed
	Strategy string
	Downtime time.Duration // committed ones only
	Bytes    int64         // committed ones only
	Held     int           // frames the source held and took for replay
}

// ObserveMigration records a migration's outcome. Nil-safe.
func (m *Metrics) ObserveMigration(mg Migration) {
	if m == nil {
		return
	}
	strategy := mg.Strategy
	if strategy == "" {
		strategy = "unknown"
	}
	m.Migrations.WithLabelValues(mg.Outcome, strategy).Inc()
	if mg.Outcome == OutcomeCommitted {
		m.Downtime.WithLabelValues(strategy).Observe(mg.Downtime.Seconds())
		if mg.Bytes > 0 {
			m.BytesMoved.Add(float64(mg.Bytes))
		}
	}
	if mg.Held > 0 {
		m.FramesHeld.Add(float64(mg.Held))
	}
}

// ObservePhase records how long a migration phase took. Nil-safe.
func (m *Metrics) ObservePhase(phase string, d time.Duration) {
	if m == nil {
		return
	}
	m.PhaseSeconds.WithLabelValues(phase).Observe(d.Seconds())
}

// Replayed counts frames delivered to a container. Nil-safe.
func (m *Metrics) Replayed(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.FramesReplayed.Add(float64(n))
}

// Held counts frames held for a container (on the destination's side).
// Nil-safe.
func (m *Metrics) Held(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.FramesHeld.Add(float64(n))
}

// SetContainers replaces the containers-by-status gauge with counts.
// Nil-safe.
func (m *Metrics) SetContainers(counts map[string]int) {
	if m == nil {
		return
	}
	m.Containers.Reset()
	for s, n := range counts {
		m.Containers.WithLabelValues(s).Set(float64(n))
	}
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry, Timeout: 10 * time.Second})
}

// Serve listens on addr and serves /metrics (and nothing else) there until
// ctx ends. A failure to listen is returned at once; the channel gets the
// server's end (nil after ctx ended). errLog (nil: the log package's)
// gets the server's own messages.
func (m *Metrics) Serve(ctx context.Context, addr string, errLog *log.Logger) (<-chan error, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen %s: %w (pick a free address with --metrics-addr, or leave it empty to serve no metrics)", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, ErrorLog: errLog}
	done := make(chan error, 1)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	return done, nil
}

// Recover counts a migration this agent finished for a lost coordinator.
// Nil-safe.
func (m *Metrics) Recover(outcome string) {
	if m == nil {
		return
	}
	m.Recovered.WithLabelValues(outcome).Inc()
}
