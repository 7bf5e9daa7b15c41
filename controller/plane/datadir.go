package plane

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
)

// prepareDataDir creates the controller's data dir with mode 0700 (parents
// too) if it is missing, and warns when it, or a file in it other than the
// public CA certificate, is open to other users: the dir holds the CA key, the
// task-signing key and the admin credentials. It changes no existing mode: the
// warning names the command that fixes it. Call it before anything writes
// into the dir.
func prepareDataDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("controller data dir %s: %w", dir, err)
	}
	checkDataDirModes(dir, log)
	return nil
}

// checkDataDirModes warns about a data dir or secret file readable, writable
// or searchable by group or others.
func checkDataDirModes(dir string, log *slog.Logger) {
	st, err := os.Stat(dir)
	if err != nil {
		return
	}
	if m := st.Mode().Perm(); m&0o077 != 0 {
		log.Warn("controller data dir is open to other users; it holds the CA key and the admin credentials",
			"dir", dir, "mode", fmt.Sprintf("%04o", m), "fix", "chmod 700 "+dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || e.Name() == fileCACert {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if m := info.Mode().Perm(); m&0o077 != 0 {
			path := filepath.Join(dir, e.Name())
			log.Warn("controller secret file is open to other users", "file", path, "mode", fmt.Sprintf("%04o", m), "fix", "chmod 600 "+path)
		}
	}
}
