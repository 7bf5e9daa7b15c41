package plan

import (
	"strings"
	"testing"
)

func TestUnpackPolicyFromLabels(t *testing.T) {
	for _, tc := range []struct {
		labels map[string]string
		want   UnpackPolicy
		err    string
	}{
		{nil, UnpackPolicy{}, ""},
		{map[string]string{LabelUnpackMaxBytes: "8GiB", LabelUnpackMaxEntries: "500000", LabelUnpackSetuid: "keep"},
			UnpackPolicy{MaxBytes: 8 << 30, MaxEntries: 500000, KeepSetuid: true}, ""},
		{map[string]string{LabelUnpackMaxBytes: "1048576", LabelUnpackSetuid: "drop"}, UnpackPolicy{MaxBytes: 1 << 20}, ""},
		{map[string]string{LabelUnpackMaxBytes: "lots"}, UnpackPolicy{}, LabelUnpackMaxBytes},
		{map[string]string{LabelUnpackMaxBytes: "-1"}, UnpackPolicy{}, LabelUnpackMaxBytes},
		{map[string]string{LabelUnpackMaxBytes: "99999999999TiB"}, UnpackPolicy{}, LabelUnpackMaxBytes},
		{map[string]string{LabelUnpackMaxEntries: "0"}, UnpackPolicy{}, LabelUnpackMaxEntries},
		{map[string]string{LabelUnpackSetuid: "yes"}, UnpackPolicy{}, LabelUnpackSetuid},
	} {
		got, err := (&Plan{Labels: tc.labels}).Unpack()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: err = %v, want one naming %s", tc.labels, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%v: %+v, %v; want %+v", tc.labels, got, err, tc.want)
		}
	}
}
