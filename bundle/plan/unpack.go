package plan

import (
	"fmt"
	"strconv"
	"strings"
)

// Image labels (Kubefile LABEL) that set how nodes unpack the image's
// layers. Without them the agent's defaults apply (agent/unpack: 2 GiB
// uncompressed and 200 000 entries per layer, setuid/setgid bits dropped).
const (
	// LabelUnpackMaxBytes bounds a layer's uncompressed size: bytes, or a
	// number with KiB, MiB, GiB or TiB ("8GiB").
	LabelUnpackMaxBytes = "dev.flotilla.unpack.max-bytes"
	// LabelUnpackMaxEntries bounds a layer's number of entries.
	LabelUnpackMaxEntries = "dev.flotilla.unpack.max-entries"
	// LabelUnpackSetuid "keep" places the layers' setuid and setgid bits as
	// they are; anything but "keep" or "drop" is an error.
	LabelUnpackSetuid = "dev.flotilla.unpack.setuid"
)

// UnpackPolicy is how nodes unpack an image's layers (zero fields: the
// agent's defaults).
type UnpackPolicy struct {
	MaxBytes   int64 `json:"maxBytes,omitempty"`
	MaxEntries int   `json:"maxEntries,omitempty"`
	KeepSetuid bool  `json:"keepSetuid,omitempty"`
}

// Unpack reads the image's unpack policy from its labels; a label with a
// value it cannot use is an error naming the label.
func (p *Plan) Unpack() (UnpackPolicy, error) {
	var u UnpackPolicy
	if v, ok := p.Labels[LabelUnpackMaxBytes]; ok {
		n, err := parseBytes(v)
		if err != nil {
			return u, fmt.Errorf("image label %s=%q: %w", LabelUnpackMaxBytes, v, err)
		}
		u.MaxBytes = n
	}
	if v, ok := p.Labels[LabelUnpackMaxEntries]; ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n <= 0 {
			return u, fmt.Errorf("image label %s=%q: want a positive number of entries", LabelUnpackMaxEntries, v)
		}
		u.MaxEntries = n
	}
	if v, ok := p.Labels[LabelUnpackSetuid]; ok {
		switch strings.TrimSpace(v) {
		case "keep":
			u.KeepSetuid = true
		case "drop":
		default:
			return u, fmt.Errorf("image label %s=%q: want keep or drop", LabelUnpackSetuid, v)
		}
	}
	return u, nil
}

func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("want a positive size in bytes, or with KiB, MiB, GiB or TiB")
	}
	return n * mult, nil
}
