package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestStartCPUProfile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		path    string
		wantErr bool
		want    bool // a profile file is written
	}{
		{"unset: no profile", "", false, false},
		{"a file", filepath.Join(dir, "cpu.pprof"), false, true},
		{"a directory that does not exist", filepath.Join(dir, "missing", "cpu.pprof"), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop, err := startCPUProfile(tc.path)
			if (err != nil) != tc.wantErr {
				t.Fatalf("startCPUProfile(%q) error = %v, want error %v", tc.path, err, tc.wantErr)
			}
			if err != nil {
				return
			}
			stop()
			if !tc.want {
				return
			}
			st, err := os.Stat(tc.path)
			if err != nil || st.Size() == 0 || st.Mode().Perm() != 0o600 {
				t.Fatalf("profile %s: %v, want a non-empty file of mode 0600", tc.path, err)
			}
		})
	}
}
