package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// parseSample reads the sample client's JSON report and its timeline
// (cumulative bytes echoed every 10 ms).
func parseSample(r *Run, exitErr error, out []byte, logFile string, _ time.Time) error {
	var rep struct {
		Sent, Received, Errors int64
		MaxGapMS               float64 `json:"max_gap_ms"`
		ConnectionError        string  `json:"connection_error"`
	}
	line := lastLine(out)
	if err := json.Unmarshal(line, &rep); err != nil {
		return fmt.Errorf("sample report %q: %w", line, err)
	}
	r.StallMS = rep.MaxGapMS
	r.ClientError = rep.ConnectionError
	if rep.Errors > 0 && r.ClientError == "" {
		r.ClientError = fmt.Sprintf("%d bytes out of order", rep.Errors)
	}
	r.Survived = exitErr == nil && r.ClientError == "" && rep.Sent == rep.Received
	rows, err := readCSV(logFile)
	if err != nil {
		return err
	}
	var prev float64
	for _, row := range rows {
		if len(row) < 2 {
			continue
		}
		r.Timeline = append(r.Timeline, Point{T: row[0], V: row[1] - prev})
		prev = row[1]
	}
	return nil
}

// parseSockperf reads sockperf's full log (packet, txTime, rxTime,
// latency): the stall is the longest gap between two replies; latency
// before and after is split at that gap.
func parseSockperf(r *Run, exitErr error, out []byte, logFile string, _ time.Time) error {
	rows, err := readCSV(logFile)
	if err != nil {
		return err
	}
	if len(rows) < 2 {
		r.ClientError = "no replies logged: " + strings.TrimSpace(string(tail(out, 300)))
		return nil
	}
	gapAt, gap := 0, 0.0
	for i := 1; i < len(rows); i++ {
		if d := (rows[i][2] - rows[i-1][2]) * 1000; d > gap {
			gap, gapAt = d, i
		}
	}
	r.StallMS = gap
	var before, after []float64
	for i, row := range rows {
		if i < gapAt {
			before = append(before, row[3])
		} else if i > gapAt {
			after = append(after, row[3])
		}
	}
	r.LatBeforeP50, r.LatBeforeP99 = pct(before, 50), pct(before, 99)
	r.LatAfterP50, r.LatAfterP99 = pct(after, 50), pct(after, 99)
	// sockperf's clock counts from its own start, as ours does from the
	// client's start: its times serve as the timeline as they are.
	bin := map[int]float64{}
	first, last := int(rows[0][2]*100), 0
	for _, row := range rows {
		b := int(row[2] * 100)
		bin[b]++
		last = max(last, b)
	}
	for b := first; b <= last; b++ {
		r.Timeline = append(r.Timeline, Point{T: float64(b * 10), V: bin[b]})
	}
	text := string(out)
	r.Survived = exitErr == nil && !strings.Contains(text, "ERROR")
	if !r.Survived {
		r.ClientError = firstLine(tail(out, 400), exitErr)
	}
	// sockperf logs only the replies it got, and counts time from its
	// start as the migration's marks do: a run that ended before the
	// migration did saw no reply after it, so neither its stall nor its
	// connection's survival is known. Said so, never counted as kept.
	if last := rows[len(rows)-1][2] * 1000; r.MigEndMS > 0 && last < r.MigEndMS {
		r.StallMS = max(r.StallMS, r.MigEndMS-last)
		if r.Survived {
			r.Survived = false
			r.ClientError = fmt.Sprintf("no reply after the migration: the client's last reply came %.0f ms before the migration ended (its run was too short to tell whether the connection survived)", r.MigEndMS-last)
		}
	}
	return nil
}

// IperfResolutionMS is the resolution of iperf3's stall (its intervals).
const IperfResolutionMS = 100

// parseIperf reads iperf3's JSON (-J with 100 ms intervals, the client
// receiving: -R). The stall is the longest run of intervals that received
// almost nothing (under 5% of the median interval before the migration): a
// multiple of 100 ms, 0 for a stall that never covers a whole interval,
// and at most 200 ms short of the real one (the intervals at its edges
// received something).
func parseIperf(r *Run, exitErr error, out []byte, logFile string, _ time.Time) error {
	b, err := os.ReadFile(logFile)
	if err != nil {
		return err
	}
	var rep struct {
		Intervals []struct {
			Sum struct {
				Start, End    float64
				Bytes         float64
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum"`
		} `json:"intervals"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return fmt.Errorf("iperf3 json: %w", err)
	}
	// The rate to compare with is the one before the migration: a stall
	// over most of the run would make the whole run's median 0.
	var vals, pre []float64
	for _, iv := range rep.Intervals {
		vals = append(vals, iv.Sum.Bytes)
		if iv.Sum.End*1000 <= r.MigStartMS {
			pre = append(pre, iv.Sum.Bytes)
		}
		r.Timeline = append(r.Timeline, Point{T: iv.Sum.Start * 1000, V: iv.Sum.BitsPerSecond / 1e6})
	}
	if len(pre) >= 3 {
		vals = pre
	}
	median := pct(vals, 50)
	run, longest := 0.0, 0.0
	resumed := false
	var before, after []float64
	for _, iv := range rep.Intervals {
		s := iv.Sum
		if s.Bytes < median*0.05 {
			run += (s.End - s.Start) * 1000
			longest = max(longest, run)
		} else {
			run = 0
			if s.Start*1000 >= r.MigEndMS {
				resumed = true
			}
		}
		if s.End*1000 <= r.MigStartMS && s.End*1000 > r.MigStartMS-1000 {
			before = append(before, s.BitsPerSecond/1e6)
		}
		if s.Start*1000 >= r.MigEndMS && s.Start*1000 < r.MigEndMS+1000 {
			after = append(after, s.BitsPerSecond/1e6)
		}
	}
	r.StallMS = longest
	r.ThroughputBeforeMbps, r.ThroughputAfterMbps = mean(before), mean(after)
	r.ClientError = rep.Error
	r.Survived = exitErr == nil && rep.Error == ""
	if r.Survived && r.MigEndMS > 0 && !resumed {
		// Nothing arrived after the migration before the client ended:
		// whether the connection lives cannot be told (as for sockperf).
		r.Survived = false
		r.ClientError = "no data after the migration: the client's run ended first (too short to tell whether the connection survived)"
	}
	if !r.Survived && r.ClientError == "" {
		r.ClientError = firstLine(tail(out, 400), exitErr)
	}
	return nil
}

// readCSV reads the numeric rows of a CSV file, skipping anything else
// (sockperf surrounds its rows with text).
func readCSV(path string) ([][]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rows [][]float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ",")
		row := make([]float64, 0, len(fields))
		ok := true
		for _, fl := range fields {
			v, err := strconv.ParseFloat(strings.TrimSpace(fl), 64)
			if err != nil {
				ok = false
				break
			}
			row = append(row, v)
		}
		if ok && len(row) > 0 {
			rows = append(rows, row)
		}
	}
	return rows, sc.Err()
}

func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	t := 0.0
	for _, x := range v {
		t += x
	}
	return t / float64(len(v))
}

func lastLine(b []byte) []byte {
	b = bytes.TrimSpace(b)
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return b[i+1:]
	}
	return b
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func firstLine(b []byte, err error) string {
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "rror") || strings.Contains(l, "reset") {
			return strings.TrimSpace(l)
		}
	}
	if err != nil {
		return err.Error()
	}
	return "client failed"
}
