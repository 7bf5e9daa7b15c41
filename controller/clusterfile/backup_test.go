package clusterfile

import (
	"strings"
	"testing"
	"time"
)

func TestParseBackup(t *testing.T) {
	hosts := "  hosts: [{names: [a], roles: [master]}]\n"
	tests := []struct {
		name, spec string
		want       *Backup
		errs       []string // substrings of the error, file:line first
	}{
		{"absent", "", nil, nil},
		{"every and keep", "  backup: {every: 6h, keep: 10}\n", &Backup{Every: 6 * time.Hour, Keep: 10}, nil},
		{"smallest", "  backup: {every: 1m, keep: 1}\n", &Backup{Every: time.Minute, Keep: 1}, nil},
		{"too often", "  backup: {every: 59s, keep: 1}\n", nil, []string{`Clusterfile:7: spec.backup.every: "59s" is not a duration of at least 1m0s`}},
		{"keep zero", "  backup: {every: 1h, keep: 0}\n", nil, []string{"Clusterfile:7: spec.backup.keep: must be at least 1, not 0"}},
		{"keep too many", "  backup: {every: 1h, keep: 10001}\n", nil, []string{"spec.backup.keep: 10001: at most 10000"}},
		{"no every", "  backup: {keep: 3}\n", nil, []string{"Clusterfile:7: spec.backup.every: missing"}},
		{"no keep", "  backup: {every: 1h}\n", nil, []string{"spec.backup.keep: missing"}},
		{"not a duration", "  backup: {every: often, keep: 3}\n", nil, []string{`spec.backup.every: "often"`}},
		{"unknown field", "  backup: {every: 1h, keep: 3, at: 2am}\n", nil, []string{"spec.backup.at: unknown field"}},
		{"not a mapping", "  backup: daily\n", nil, []string{"spec.backup: must be a mapping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse("Clusterfile", []byte(head+hosts+tt.spec))
			if len(tt.errs) > 0 {
				if err == nil {
					t.Fatalf("accepted, want %q", tt.errs)
				}
				for _, w := range tt.errs {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := f.Cluster.Backup
			if (got == nil) != (tt.want == nil) || got != nil && (got.Every != tt.want.Every || got.Keep != tt.want.Keep) {
				t.Errorf("backup = %+v, want %+v", got, tt.want)
			}
		})
	}
}
