package bench

// Run is one measured migration of one workload in one mode.
type Run struct {
	Workload string `json:"workload"` // sample | sockperf | iperf3
	Mode     string `json:"mode"`     // coat | traditional | reference | coat-nohold
	Index    int    `json:"index"`    // 0-based run number within (workload, mode)

	// From the migration (coat migrate --json), or measured around the
	// hand-run reference path.
	CheckpointMS float64 `json:"checkpoint_ms"`
	TransferMS   float64 `json:"transfer_ms"`
	RestoreMS    float64 `json:"restore_ms"`
	TotalMS      float64 `json:"total_ms"`
	DowntimeMS   float64 `json:"downtime_ms"`
	Bytes        int64   `json:"bytes"`

	// From the client's side.
	StallMS     float64 `json:"stall_ms"`     // longest gap between replies around the migration
	Survived    bool    `json:"survived"`     // same TCP connection completed without error
	ClientError string  `json:"client_error"` // empty if none

	// sockperf ping-pong latency (usec) before and after the migration;
	// zero for other workloads.
	LatBeforeP50 float64 `json:"lat_before_p50_us"`
	LatBeforeP99 float64 `json:"lat_before_p99_us"`
	LatAfterP50  float64 `json:"lat_after_p50_us"`
	LatAfterP99  float64 `json:"lat_after_p99_us"`

	// iperf3 throughput (Mbit/s) in the second before and the second after
	// the migration window; zero for other workloads.
	ThroughputBeforeMbps float64 `json:"tput_before_mbps"`
	ThroughputAfterMbps  float64 `json:"tput_after_mbps"`

	// Timeline is the client's view over time, for the representative
	// plot: T in ms since the client started; V is bytes echoed per 10 ms
	// bin (sample), replies per 10 ms bin (sockperf) or Mbit/s per
	// interval (iperf3). MigStartMS/MigEndMS mark the migration.
	Timeline   []Point `json:"timeline,omitempty"`
	MigStartMS float64 `json:"mig_start_ms"`
	MigEndMS   float64 `json:"mig_end_ms"`

	// The matrix workloads (memory, conns): the link profile, the
	// strategy asked for (Mode) and the one used (Strategy), the data set
	// size in bytes (memory) or the connection count (conns).
	Profile  string `json:"profile,omitempty"`
	Strategy string `json:"strategy,omitempty"`
	Param    int64  `json:"param,omitempty"`
	// From the migration: memory at the freeze, post-copy's time until
	// the last page arrived and pages served on demand.
	MemoryBytes   int64   `json:"memory_bytes,omitempty"`
	LazyMS        float64 `json:"lazy_ms,omitempty"`
	PagesOnDemand int     `json:"pages_on_demand,omitempty"`
	// memory: the redis client's requests and wrong answers, and the
	// latency (ms) of the requests in flight during the migration.
	Requests  int64   `json:"requests,omitempty"`
	ReqErrors int64   `json:"req_errors,omitempty"`
	MigLatP50 float64 `json:"mig_lat_p50_ms,omitempty"`
	MigLatP99 float64 `json:"mig_lat_p99_ms,omitempty"`
	MigLatMax float64 `json:"mig_lat_max_ms,omitempty"`
	// conns: connections opened and surviving, and the 99th percentile
	// of the connections' longest waits (StallMS is the longest).
	Conns         int     `json:"conns,omitempty"`
	ConnsSurvived int     `json:"conns_survived,omitempty"`
	ConnStallP99  float64 `json:"conn_stall_p99_ms,omitempty"`
	// storm: the time from the client's roam until every service of the
	// storm ran next to it (the same for each service of one roam).
	StormMS float64 `json:"storm_ms,omitempty"`
}

// Point is one sample of a timeline.
type Point struct {
	T float64 `json:"t"`
	V float64 `json:"v"`
}

// Machine describes where a benchmark ran.
type Machine struct {
	Host, Kernel, CPU, Cores, Memory, Date, Go, CRIU, Runc, Command string
	// Podman is its version, or why the podman mode did not run.
	Podman string
}
