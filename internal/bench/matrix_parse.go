package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// parseRedisLoad reads redis-load's JSON report and its per-request
// timeline (t_ms since the load started, latency_ms, op, conn); offset is
// when the load started on the bench's clock (ms).
func parseRedisLoad(r *Run, exitErr error, out []byte, logFile string, offset float64) error {
	var rep struct {
		Requests        int64   `json:"requests"`
		Errors          int64   `json:"errors"`
		FirstError      string  `json:"first_error"`
		ConnectionError string  `json:"connection_error"`
		MaxStallMs      float64 `json:"max_stall_ms"`
	}
	line := lastLine(out)
	if err := json.Unmarshal(line, &rep); err != nil {
		return fmt.Errorf("redis-load report %q: %w", truncateBytes(line, 200), err)
	}
	r.Requests, r.ReqErrors, r.StallMS = rep.Requests, rep.Errors, rep.MaxStallMs
	r.ClientError = rep.ConnectionError
	if r.ClientError == "" && rep.Errors > 0 {
		r.ClientError = fmt.Sprintf("%d wrong answers, first: %s", rep.Errors, rep.FirstError)
	}
	if r.ClientError == "" && exitErr != nil {
		r.ClientError = exitErr.Error()
	}
	r.Survived = r.ClientError == ""
	rows, err := readLatencies(logFile)
	if err != nil {
		return err
	}
	var in []float64
	for _, row := range rows {
		t, lat := row[0]+offset, row[1]
		// In flight at some point of the migration.
		if t <= r.MigEndMS && t+lat >= r.MigStartMS {
			in = append(in, lat)
		}
		r.Timeline = append(r.Timeline, Point{T: t, V: lat})
	}
	slices.Sort(in)
	r.MigLatP50, r.MigLatP99 = nearest(in, 50), nearest(in, 99)
	if len(in) > 0 {
		r.MigLatMax = in[len(in)-1]
	}
	return nil
}

// readLatencies reads the first two numbers (t_ms, latency_ms) of each
// row of redis-load's timeline, skipping the header.
func readLatencies(path string) ([][2]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var rows [][2]float64
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.SplitN(sc.Text(), ",", 3)
		if len(fs) < 2 {
			continue
		}
		t, err1 := strconv.ParseFloat(fs[0], 64)
		l, err2 := strconv.ParseFloat(fs[1], 64)
		if err1 == nil && err2 == nil {
			rows = append(rows, [2]float64{t, l})
		}
	}
	return rows, sc.Err()
}

// parseConns reads the conns client's JSON report.
func parseConns(r *Run, exitErr error, out []byte, _ float64) error {
	var rep struct {
		Conns      int     `json:"conns"`
		Opened     int     `json:"opened"`
		Survived   int     `json:"survived"`
		Errors     int64   `json:"errors"`
		MaxStallMs float64 `json:"max_stall_ms"`
		StallP99Ms float64 `json:"stall_p99_ms"`
		FirstError string  `json:"first_error"`
	}
	line := lastLine(out)
	if err := json.Unmarshal(line, &rep); err != nil {
		return fmt.Errorf("conns report %q: %w", truncateBytes(line, 200), err)
	}
	r.Conns, r.ConnsSurvived = rep.Conns, rep.Survived
	r.StallMS, r.ConnStallP99 = rep.MaxStallMs, rep.StallP99Ms
	switch {
	case rep.FirstError != "":
		r.ClientError = fmt.Sprintf("%d of %d connections lost; first: %s", rep.Conns-rep.Survived, rep.Conns, rep.FirstError)
	case rep.Errors > 0:
		r.ClientError = fmt.Sprintf("%d echoed lines differ from what was sent", rep.Errors)
	case rep.Opened != rep.Conns || rep.Survived != rep.Conns:
		r.ClientError = fmt.Sprintf("%d of %d connections survived", rep.Survived, rep.Conns)
	case exitErr != nil:
		r.ClientError = exitErr.Error()
	}
	r.Survived = r.ClientError == ""
	return nil
}

// nearest is the nearest-rank p-th percentile of sorted v (0 for none).
func nearest(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	r := (int(p)*len(sorted) + 99) / 100
	return sorted[min(max(r, 1), len(sorted))-1]
}

func truncateBytes(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
