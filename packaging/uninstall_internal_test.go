package packaging

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDataDirFromUnit(t *testing.T) {
	for _, tc := range []struct{ unit, want string }{
		{"[Service]\nExecStart=/usr/local/bin/flotilla agent --controller https://c:9443 --data-dir /srv/agent --name a\n", "/srv/agent"},
		{"[Service]\nExecStart=/usr/local/bin/flotilla agent --controller https://c:9443\n", DefaultDataDir},
		{"[Service]\nExecStart=/usr/local/bin/flotilla agent --data-dir /\n", DefaultDataDir},
		{"[Service]\nExecStart=/usr/local/bin/flotilla agent --data-dir relative/dir\n", DefaultDataDir},
		{"# --data-dir /etc in a comment\n[Service]\nExecStart=/usr/local/bin/flotilla agent\n", DefaultDataDir},
	} {
		p := filepath.Join(t.TempDir(), "unit")
		if err := os.WriteFile(p, []byte(tc.unit), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := dataDirFromUnit(p); got != tc.want {
			t.Errorf("%q: got %s, want %s", tc.unit, got, tc.want)
		}
	}
	if got := dataDirFromUnit("/nonexistent"); got != DefaultDataDir {
		t.Errorf("no unit: %s", got)
	}
}
