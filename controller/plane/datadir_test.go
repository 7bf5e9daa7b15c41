package plane

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDataDirModes: a new data dir is 0700 with its secrets 0600; a looser
// dir or secret file is reported at start, naming the path and the fix.
func TestDataDirModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "flotilla")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	c, err := New(Options{DataDir: dir, Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Advertise: "127.0.0.1", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	for path, want := range map[string]os.FileMode{
		dir: 0o700, filepath.Join(dir, fileCAKey): 0o600, filepath.Join(dir, fileSigningKey): 0o600, filepath.Join(dir, FileAdminCreds): 0o600,
	} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %04o", path, st.Mode().Perm(), err, want)
		}
	}
	if strings.Contains(logs.String(), "open to other users") {
		t.Errorf("warnings on a fresh data dir:\n%s", logs.String())
	}

	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, fileCAKey), 0o644); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	if _, err := New(Options{DataDir: dir, Advertise: "127.0.0.1", Logger: log}); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	for _, want := range []string{"controller data dir is open to other users", "dir=" + dir, "mode=0755", `"chmod 700 ` + dir,
		"controller secret file is open to other users", "file=" + filepath.Join(dir, fileCAKey), "mode=0644"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, fileCACert+" ") {
		t.Errorf("the public CA certificate is reported:\n%s", out)
	}
}
