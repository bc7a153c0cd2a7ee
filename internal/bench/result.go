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
}

// Point is one sample of a timeline.
type Point struct {
	T float64 `json:"t"`
	V float64 `json:"v"`
}

// Machine describes where a benchmark ran.
type Machine struct {
	Host, Kernel, CPU, Cores, Memory, Date, Go, CRIU, Runc, Command string
}
