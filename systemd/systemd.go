// Package systemd installs and controls systemd units over D-Bus (go-systemd)
// and explains failures with the unit's last journal lines.
package systemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
)

// ErrNoSystemd is returned by New on a host that was not booted with systemd.
var ErrNoSystemd = errors.New("systemd is not running on this host (no /run/systemd/system): SERVICE steps need systemd")

// JournalReader returns the last n journal lines of a unit.
type JournalReader func(ctx context.Context, unit string, n int) (string, error)

// Options say which systemd to talk to. The zero value is this host's.
type Options struct {
	// Root is the filesystem root of the host whose systemd is driven
	// ("" = /). Tests point it at a sandbox node's /proc/PID/root.
	Root string
	// BusSocket is the system bus socket (default Root/run/dbus/system_bus_socket).
	BusSocket string
	// UnitDir receives installed unit files (default Root/etc/systemd/system).
	UnitDir string
	// Journal reads a failed unit's journal (default: journalctl on this host).
	Journal JournalReader
	// JournalLines is how many lines a failure carries (default 20).
	JournalLines int
	// Settle is how long a unit must stay active before WaitActive trusts it,
	// so that a service that dies right after exec is reported (default 1s).
	Settle time.Duration
}

// Manager drives one host's systemd.
type Manager struct {
	conn *sd.Conn
	opts Options
}

// UnitError is a unit that did not reach (or left) the active state.
type UnitError struct {
	Unit        string
	ActiveState string
	SubState    string
	Result      string
	Journal     string // the unit's last journal lines
	Err         error
}

func (e *UnitError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "unit %s", e.Unit)
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	fmt.Fprintf(&b, " (state %s/%s", e.ActiveState, e.SubState)
	if e.Result != "" && e.Result != "success" {
		fmt.Fprintf(&b, ", result %s", e.Result)
	}
	b.WriteString(")")
	if j := strings.TrimSpace(e.Journal); j != "" {
		fmt.Fprintf(&b, "; last journal lines:\n%s", j)
	}
	return b.String()
}

func (e *UnitError) Unwrap() error { return e.Err }

// New connects to the system bus of the host that Options name.
func New(ctx context.Context, o Options) (*Manager, error) {
	root := o.Root
	if root == "" {
		root = "/"
	}
	if _, err := os.Stat(filepath.Join(root, "run/systemd/system")); err != nil {
		return nil, ErrNoSystemd
	}
	if o.BusSocket == "" {
		o.BusSocket = filepath.Join(root, "run/dbus/system_bus_socket")
	}
	if o.UnitDir == "" {
		o.UnitDir = filepath.Join(root, "etc/systemd/system")
	}
	if o.Journal == nil {
		o.Journal = HostJournal
	}
	if o.JournalLines == 0 {
		o.JournalLines = 20
	}
	if o.Settle == 0 {
		o.Settle = time.Second
	}
	addr := "unix:path=" + o.BusSocket
	conn, err := sd.NewConnection(func() (*godbus.Conn, error) {
		// No WithContext: it would close the connection when ctx ends.
		c, err := godbus.Dial(addr)
		if err != nil {
			return nil, err
		}
		if err := c.Auth([]godbus.Auth{godbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
			c.Close()
			return nil, err
		}
		if err := c.Hello(); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	})
	if err != nil {
		return nil, fmt.Errorf("connect to systemd over D-Bus at %s: %w (is dbus installed and running? apt-get install dbus)", o.BusSocket, err)
	}
	return &Manager{conn: conn, opts: o}, nil
}

// Close ends the D-Bus connection.
func (m *Manager) Close() { m.conn.Close() }

// HostJournal reads a unit's journal with journalctl on this host.
func HostJournal(ctx context.Context, unit string, n int) (string, error) {
	out, err := exec.CommandContext(ctx, "journalctl", "-u", unit, "-n", strconv.Itoa(n), "--no-pager", "-o", "short-iso").CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("journalctl -u %s: %w", unit, err)
	}
	return string(out), nil
}

// Install writes a unit file (atomically) and reloads systemd when its content
// changed. It reports whether it changed.
func (m *Manager) Install(ctx context.Context, name string, content []byte) (bool, error) {
	if err := validName(name); err != nil {
		return false, err
	}
	path := filepath.Join(m.opts.UnitDir, name)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, content) {
		return false, nil
	}
	if err := os.MkdirAll(m.opts.UnitDir, 0o755); err != nil {
		return false, fmt.Errorf("install unit %s: %w", name, err)
	}
	if err := atomicfile.Write(path, content, 0o644); err != nil {
		return false, fmt.Errorf("install unit %s: %w", name, err)
	}
	return true, m.Reload(ctx)
}

// Reload is `systemctl daemon-reload`.
func (m *Manager) Reload(ctx context.Context) error {
	if err := m.conn.ReloadContext(ctx); err != nil {
		return fmt.Errorf("systemd daemon-reload: %w", err)
	}
	return nil
}

// Enable makes units start at boot (`systemctl enable`).
func (m *Manager) Enable(ctx context.Context, names ...string) error {
	if _, _, err := m.conn.EnableUnitFilesContext(ctx, names, false, true); err != nil {
		return fmt.Errorf("enable %s: %w", strings.Join(names, " "), err)
	}
	return m.Reload(ctx)
}

// Disable undoes Enable. Units that are not installed are ignored.
func (m *Manager) Disable(ctx context.Context, names ...string) error {
	if _, err := m.conn.DisableUnitFilesContext(ctx, names, false); err != nil && !isNoSuchUnit(err) {
		return fmt.Errorf("disable %s: %w", strings.Join(names, " "), err)
	}
	return m.Reload(ctx)
}

// Start starts a unit, waits for the start job, then until the unit is
// active (WaitActive with timeout). A failure carries the journal.
func (m *Manager) Start(ctx context.Context, name string, timeout time.Duration) error {
	return m.runJob(ctx, "start", name, timeout, m.conn.StartUnitContext)
}

// Restart restarts (or starts) a unit and waits until it is active again.
func (m *Manager) Restart(ctx context.Context, name string, timeout time.Duration) error {
	return m.runJob(ctx, "restart", name, timeout, m.conn.RestartUnitContext)
}

// Stop stops a unit and waits for the stop job. Stopping a unit that is not
// loaded is not an error.
func (m *Manager) Stop(ctx context.Context, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ch := make(chan string, 1)
	if _, err := m.conn.StopUnitContext(ctx, name, "replace", ch); err != nil {
		if isNoSuchUnit(err) {
			return nil
		}
		return fmt.Errorf("stop %s: %w", name, err)
	}
	select {
	case r := <-ch:
		if r != "done" && r != "skipped" {
			return m.unitError(ctx, name, fmt.Errorf("stop job %s", r))
		}
		return nil
	case <-ctx.Done():
		return m.unitError(context.Background(), name, fmt.Errorf("stop: %w after %s", ctx.Err(), timeout))
	}
}

// Remove stops and disables a unit, deletes its file and reloads systemd:
// the undo of Install+Enable+Start. A unit that is not there is not an error.
func (m *Manager) Remove(ctx context.Context, name string, timeout time.Duration) error {
	if err := validName(name); err != nil {
		return err
	}
	if err := m.Stop(ctx, name, timeout); err != nil {
		return err
	}
	if err := m.Disable(ctx, name); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(m.opts.UnitDir, name)); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remove unit %s: %w", name, err)
	}
	if err := m.Reload(ctx); err != nil {
		return err
	}
	// A unit that failed before stays listed as failed until reset.
	if err := m.conn.ResetFailedUnitContext(ctx, name); err != nil && !isNoSuchUnit(err) && !isNotFailed(err) {
		return fmt.Errorf("reset-failed %s: %w", name, err)
	}
	return nil
}

type jobFunc func(ctx context.Context, name, mode string, ch chan<- string) (int, error)

func (m *Manager) runJob(ctx context.Context, verb, name string, timeout time.Duration, job jobFunc) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ch := make(chan string, 1)
	if _, err := job(ctx, name, "replace", ch); err != nil {
		return m.unitError(ctx, name, fmt.Errorf("%s: %w", verb, err))
	}
	select {
	case r := <-ch:
		if r != "done" {
			return m.unitError(context.Background(), name, fmt.Errorf("%s job %s", verb, r))
		}
	case <-ctx.Done():
		return m.unitError(context.Background(), name, fmt.Errorf("%s: no result after %s: %w", verb, timeout, ctx.Err()))
	}
	return m.waitActive(ctx, name, timeout)
}
