package packaging

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/systemd"
)

// UninstallOptions describe what `flotilla agent uninstall` removes.
type UninstallOptions struct {
	// DataDir is the agent's data dir; empty means the one in the installed
	// unit's ExecStart, else DefaultDataDir.
	DataDir string
	// KeepData leaves the data dir (the agent's identity) in place.
	KeepData bool
	// Root is the node's filesystem root ("" = /); tests point it at a sandbox node.
	Root string
	// Systemd reaches the node's systemd (its Root is set from Root when empty).
	Systemd systemd.Options
	// Progress receives one line per thing removed (may be nil).
	Progress func(line string)
}

// Uninstall removes what bootstrap.sh installed: it stops and disables the
// agent unit, deletes the unit, the binary, /etc/flotilla and the data dir. It
// is idempotent, and refuses when the agent came from the .deb (use apt then).
func Uninstall(ctx context.Context, o UninstallOptions) ([]string, error) {
	root := o.Root
	if root == "" {
		root = "/"
	}
	at := func(p string) string { return filepath.Join(root, p) }
	say := func(format string, args ...any) {
		if o.Progress != nil {
			o.Progress(fmt.Sprintf(format, args...))
		}
	}
	if _, err := os.Stat(at("/var/lib/dpkg/info/flotilla-agent.list")); err == nil {
		return nil, errors.New("the agent was installed from the flotilla-agent package: remove it with apt-get purge flotilla-agent")
	}
	dataDir := o.DataDir
	if dataDir == "" {
		dataDir = dataDirFromUnit(at(UnitPath))
	}
	var removed []string
	if _, err := os.Stat(at(UnitPath)); err == nil {
		so := o.Systemd
		if so.Root == "" {
			so.Root = o.Root
		}
		m, err := systemd.New(ctx, so)
		switch {
		case errors.Is(err, systemd.ErrNoSystemd):
			say("systemd is not running: removing the unit file only")
		case err != nil:
			return nil, fmt.Errorf("uninstall: %w", err)
		default:
			defer m.Close()
			if err := m.Remove(ctx, UnitName, 60*time.Second); err != nil {
				return nil, fmt.Errorf("uninstall: %w", err)
			}
			removed = append(removed, UnitPath)
			say("stopped and disabled %s, removed %s", UnitName, UnitPath)
		}
	}
	paths := []string{UnitPath, BinPath, ConfigDir}
	if !o.KeepData {
		paths = append(paths, dataDir)
	}
	for _, p := range paths {
		if _, err := os.Lstat(at(p)); os.IsNotExist(err) {
			continue
		}
		if err := os.RemoveAll(at(p)); err != nil {
			return removed, fmt.Errorf("uninstall: remove %s: %w", p, err)
		}
		removed = append(removed, p)
		say("removed %s", p)
	}
	if len(removed) == 0 {
		say("nothing to remove: the agent is not installed here")
	}
	return removed, nil
}

// dataDirFromUnit reads --data-dir from the installed unit's ExecStart.
func dataDirFromUnit(unitPath string) string {
	b, err := os.ReadFile(unitPath)
	if err != nil {
		return DefaultDataDir
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "ExecStart=") {
			continue
		}
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "--data-dir" && filepath.IsAbs(f[i+1]) && filepath.Clean(f[i+1]) != "/" {
				return filepath.Clean(f[i+1])
			}
		}
	}
	return DefaultDataDir
}
