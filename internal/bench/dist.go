package bench

import (
	"fmt"
	"slices"
)

// Dist is a distribution of measurements (ms) summarised by nearest-rank
// percentiles, the project's one definition of a percentile (see
// nearest).
type Dist struct {
	N   int     `json:"n"`
	Min float64 `json:"min_ms"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	Max float64 `json:"max_ms"`
}

// Distribution summarises v (in any order; v is not changed).
func Distribution(v []float64) Dist {
	if len(v) == 0 {
		return Dist{}
	}
	s := slices.Sorted(slices.Values(v))
	return Dist{N: len(s), Min: s[0], P50: nearest(s, 50), P90: nearest(s, 90), Max: s[len(s)-1]}
}

// String is "p50 X ms, p90 Y ms, max Z ms (min W ms, N values)".
func (d Dist) String() string {
	if d.N == 0 {
		return "no values"
	}
	return fmt.Sprintf("p50 %.0f ms, p90 %.0f ms, max %.0f ms (min %.0f ms, %d values)", d.P50, d.P90, d.Max, d.Min, d.N)
}
