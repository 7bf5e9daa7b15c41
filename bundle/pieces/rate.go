package pieces

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseRate parses a bandwidth cap (the agent's --rate-limit flag and the
// Clusterfile option) as bytes per second. "" or "0" means no cap. Units: B,
// KB, MB, GB (decimal), KiB, MiB, GiB, or kbit, mbit, gbit, case-insensitive,
// with an optional "/s".
func ParseRate(s string) (int64, error) {
	s = strings.TrimSuffix(strings.TrimSpace(s), "/s")
	if s == "" || s == "0" {
		return 0, nil
	}
	units := []struct {
		suffix string
		mult   float64
	}{
		{"kbit", 1e3 / 8}, {"mbit", 1e6 / 8}, {"gbit", 1e9 / 8},
		{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
		{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"b", 1},
	}
	lower := strings.ToLower(s)
	for _, u := range units {
		if num, ok := strings.CutSuffix(lower, u.suffix); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err != nil || v < 0 {
				return 0, fmt.Errorf("rate %q: want a number and a unit, e.g. 50MB/s or 100mbit", s)
			}
			return int64(v * u.mult), nil
		}
	}
	return 0, fmt.Errorf("rate %q: want a unit: B, KB, MB, GB, KiB, MiB, GiB, kbit, mbit or gbit", s)
}
