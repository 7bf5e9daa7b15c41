package systemd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	godbus "github.com/godbus/dbus/v5"
)

// State is a unit's state as `systemctl show` reports it.
type State struct {
	Load   string // loaded, not-found, masked, …
	Active string // active, activating, failed, inactive, …
	Sub    string // running, exited, auto-restart, dead, …
	Result string // services only: success, exit-code, signal, …
	Type   string // services only: simple, exec, notify, oneshot, …
}

// State reads a unit's current state.
func (m *Manager) State(ctx context.Context, unit string) (State, error) {
	props, err := m.conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return State{}, fmt.Errorf("state of %s: %w", unit, err)
	}
	s := State{Load: str(props["LoadState"]), Active: str(props["ActiveState"]), Sub: str(props["SubState"])}
	if strings.HasSuffix(unit, ".service") && s.Load == "loaded" {
		if sp, err := m.conn.GetUnitTypePropertiesContext(ctx, unit, "Service"); err == nil {
			s.Result, s.Type = str(sp["Result"]), str(sp["Type"])
		}
	}
	return s, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// WaitActive waits until the unit is active and has stayed active for the
// settle time (Options.Settle), or has finished as a successful oneshot. A
// unit that fails, is not found, or is not active within timeout gives a
// *UnitError with the unit's last journal lines.
func (m *Manager) WaitActive(ctx context.Context, unit string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return m.waitActive(ctx, unit, timeout)
}

func (m *Manager) waitActive(ctx context.Context, unit string, timeout time.Duration) error {
	var (
		since     time.Time
		restarted bool
	)
	for {
		s, err := m.State(ctx, unit)
		if err != nil && ctx.Err() == nil {
			return err
		}
		if err == nil {
			switch {
			case s.Load == "not-found":
				return m.unitError(ctx, unit, errors.New("unit not found (not installed?)"))
			case s.Load == "masked":
				return m.unitError(ctx, unit, errors.New("unit is masked"))
			case s.Active == "failed":
				return m.unitError(ctx, unit, errors.New("failed"))
			case s.Active == "inactive" && s.Type == "oneshot" && s.Result == "success":
				return nil
			case s.Active == "active":
				if since.IsZero() {
					since = time.Now()
				}
				if time.Since(since) >= m.opts.Settle {
					return nil
				}
			default:
				since = time.Time{}
				if s.Sub == "auto-restart" {
					restarted = true
				}
			}
		}
		select {
		case <-ctx.Done():
			why := fmt.Sprintf("not active after %s", timeout)
			if restarted {
				why += " (it keeps crashing and being restarted)"
			}
			return m.unitError(context.Background(), unit, errors.New(why))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// unitError builds a *UnitError with the unit's state and last journal lines.
func (m *Manager) unitError(ctx context.Context, unit string, cause error) error {
	if ctx.Err() != nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	e := &UnitError{Unit: unit, Err: cause}
	if s, err := m.State(ctx, unit); err == nil {
		e.ActiveState, e.SubState, e.Result = s.Active, s.Sub, s.Result
	}
	e.Journal = m.settledJournal(ctx, unit)
	return e
}

// settledJournal reads a unit's last journal lines once journald has them
// all. Right after a unit dies, systemd's own lines ("status=203/EXEC") may be
// in while the lines its processes wrote on their own streams ("Failed to
// execute …") are still queued, so it reads until two reads journalSettle
// apart agree, for at most journalSettleMax.
func (m *Manager) settledJournal(ctx context.Context, unit string) string {
	var prev string
	var j string
	var err error
	deadline := time.Now().Add(journalSettleMax)
	for {
		select {
		case <-ctx.Done():
			return fmt.Sprintf("(journal unavailable: %v)\n%s", ctx.Err(), prev)
		case <-time.After(journalSettle):
		}
		j, err = m.opts.Journal(ctx, unit, m.opts.JournalLines)
		if err != nil {
			return fmt.Sprintf("(journal unavailable: %v)\n%s", err, j)
		}
		if (j == prev && strings.TrimSpace(j) != "") || time.Now().After(deadline) {
			return j
		}
		prev = j
	}
}

// journalSettle and journalSettleMax bound settledJournal's wait.
const (
	journalSettle    = 150 * time.Millisecond
	journalSettleMax = 3 * time.Second
)

func isNoSuchUnit(err error) bool {
	var de godbus.Error
	if errors.As(err, &de) {
		return de.Name == "org.freedesktop.systemd1.NoSuchUnit" || de.Name == "org.freedesktop.DBus.Error.FileNotFound" ||
			strings.Contains(fmt.Sprint(de.Body...), "No such file")
	}
	return strings.Contains(err.Error(), "not loaded") || strings.Contains(err.Error(), "No such file")
}

func isNotFailed(err error) bool {
	return strings.Contains(err.Error(), "not failed")
}

func validName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("unit name %q: want a plain file name like etcd.service", name)
	}
	for _, suf := range []string{".service", ".socket", ".timer", ".target", ".mount", ".path", ".slice"} {
		if strings.HasSuffix(name, suf) {
			return nil
		}
	}
	return fmt.Errorf("unit name %q: want a unit suffix (.service, .socket, .timer, .target, .mount, .path, .slice)", name)
}
