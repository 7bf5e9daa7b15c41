// Package bandwidth is flotilla's one notion of a transfer rate: the type, how
// operators write it (agent flags, Clusterfile spec.bandwidth, piece servers)
// and how it is printed. Every place that reads a rate calls Parse, so every
// form one accepts, all accept.
package bandwidth

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Rate is a transfer rate in bytes per second; 0 means no cap.
type Rate int64

// units maps a lower-case suffix to bytes per second; bit units divide by 8.
// Longer suffixes come first so "mib" is not read as "b".
func units() []struct {
	suffix string
	mult   float64
} {
	return []struct {
		suffix string
		mult   float64
	}{
		{"kbit", 1e3 / 8}, {"mbit", 1e6 / 8}, {"gbit", 1e9 / 8},
		{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
		{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"b", 1},
	}
}

// Parse reads a rate such as 100mbit, 1Gbit, 50MB/s, 12MiB or 2.5 GB/s:
// a number and a unit (B, KB, MB, GB decimal; KiB, MiB, GiB; kbit, mbit, gbit),
// case-insensitive, with an optional "/s". "" and "0" mean no cap. A number
// without a unit is refused: 100 could mean bits or bytes.
func Parse(s string) (Rate, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	if t == "" || t == "0" {
		return 0, nil
	}
	lower := strings.ToLower(t)
	for _, u := range units() {
		num, ok := strings.CutSuffix(lower, u.suffix)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) || v*u.mult > math.MaxInt64/2 {
			return 0, fmt.Errorf("rate %q: want a number and a unit, e.g. 100mbit, 1Gbit or 50MB/s", s)
		}
		return Rate(v * u.mult), nil
	}
	return 0, fmt.Errorf("rate %q: want a unit: B, KB, MB, GB, KiB, MiB, GiB, kbit, mbit or gbit (per second), e.g. 100mbit", s)
}

// String prints the rate in Mbit/s, the unit links are sold in.
func (r Rate) String() string {
	if r <= 0 {
		return "unlimited"
	}
	return strconv.FormatFloat(float64(r)*8/1e6, 'f', -1, 64) + "Mbit/s"
}
