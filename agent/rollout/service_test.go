package rollout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/flotilla-dev/flotilla/systemd"
)

// fakeUnits records what the service steps asked systemd to do.
type fakeUnits struct {
	mu       sync.Mutex
	calls    []string
	startErr error
}

func (f *fakeUnits) call(s string, err error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
	return err
}

func (f *fakeUnits) Reload(context.Context) error { return f.call("reload", nil) }
func (f *fakeUnits) Enable(_ context.Context, n ...string) error {
	return f.call("enable "+strings.Join(n, " "), nil)
}
func (f *fakeUnits) Disable(_ context.Context, n ...string) error {
	return f.call("disable "+strings.Join(n, " "), nil)
}
func (f *fakeUnits) Start(_ context.Context, n string, _ time.Duration) error {
	return f.call("start "+n, f.startErr)
}
func (f *fakeUnits) Restart(_ context.Context, n string, _ time.Duration) error {
	return f.call("restart "+n, f.startErr)
}
func (f *fakeUnits) Stop(_ context.Context, n string, _ time.Duration) error {
	return f.call("stop "+n, nil)
}
func (f *fakeUnits) Close() {}

func (f *fakeUnits) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

// withUnits points n's service steps at unit files in a temporary directory
// and at manager m (nil: keep the real systemd connection).
func withUnits(t *testing.T, n *node, m UnitManager) string {
	dir := t.TempDir()
	n.configure(func(o *Options) {
		o.UnitDirs = []string{dir}
		if m != nil {
			o.Units = func(context.Context) (UnitManager, error) { return m, nil }
		}
	})
	return dir
}

func writeUnit(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestServiceStartsAndRestartsOnChange(t *testing.T) {
	f := &fakeUnits{}
	n := newNode(t, nil)
	units := withUnits(t, n, f)
	n.root = "/" // the service steps only read unit files (from units) and talk to f
	writeUnit(t, filepath.Join(units, "app.service"), "[Service]\nExecStart=/bin/app\n")
	writeUnit(t, filepath.Join(units, "db@.service"), "[Service]\nExecStart=/bin/db %i\n")
	svc := func(unit string, restart bool) protocol.ServicePayload {
		return protocol.ServicePayload{Cluster: "c1", Unit: unit, Restart: restart}
	}
	steps := []struct {
		name   string
		before func()
		p      protocol.ServicePayload
		want   []string
	}{
		{"first start", nil, svc("app.service", false), []string{"reload", "enable app.service", "start app.service"}},
		{"unchanged", nil, svc("app.service", false), []string{"reload", "enable app.service", "start app.service"}},
		{"unit file changed", func() { writeUnit(t, filepath.Join(units, "app.service"), "[Service]\nExecStart=/bin/app -v\n") },
			svc("app.service", false), []string{"reload", "enable app.service", "restart app.service"}},
		{"drop-in added", func() { writeUnit(t, filepath.Join(units, "app.service.d/limits.conf"), "[Service]\nLimitNOFILE=9\n") },
			svc("app.service", false), []string{"reload", "enable app.service", "restart app.service"}},
		{"restart asked", nil, svc("app.service", true), []string{"reload", "enable app.service", "restart app.service"}},
		{"template instance", nil, svc("db@one.service", false), []string{"reload", "enable db@one.service", "start db@one.service"}},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		if _, err := n.run(protocol.KindService, s.p); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := f.take(); !slices.Equal(got, s.want) {
			t.Errorf("%s: systemd calls %q, want %q", s.name, got, s.want)
		}
	}
	services, err := readServices(filepath.Join(n.dataDir, "clusters/c1"))
	if err != nil {
		t.Fatal(err)
	}
	if len(services) != 2 || services[0].Unit != "app.service" || services[1].Unit != "db@one.service" {
		t.Errorf("services.json %+v: want app.service then db@one.service", services)
	}

	// A failing start reports the unit's journal; a missing unit file names where it looked.
	f.startErr = &systemd.UnitError{Unit: "app.service", ActiveState: "failed", SubState: "failed", Journal: "app: bad config line 3", Err: errors.New("start job failed")}
	_, err = n.run(protocol.KindService, svc("app.service", true))
	if err == nil || !strings.Contains(err.Error(), "app: bad config line 3") || !strings.Contains(err.Error(), "service app.service") {
		t.Errorf("failing start: %v, want the unit's journal lines", err)
	}
	_, err = n.run(protocol.KindService, svc("missing.service", false))
	if err == nil || !strings.Contains(err.Error(), "no unit file missing.service in "+units) {
		t.Errorf("missing unit: %v", err)
	}
	f.take()

	// Undo stops and disables it and forgets it was started.
	if _, err := n.run(protocol.KindUndo, undo(protocol.UndoStopService, "app.service")); err != nil {
		t.Fatal(err)
	}
	if got, want := f.take(), []string{"stop app.service", "disable app.service"}; !slices.Equal(got, want) {
		t.Errorf("undo: systemd calls %q, want %q", got, want)
	}
	if services, _ := readServices(filepath.Join(n.dataDir, "clusters/c1")); len(services) != 1 || services[0].Unit != "db@one.service" {
		t.Errorf("services.json after undo: %+v", services)
	}
}

func TestServiceNeedsHostRootAndSystemd(t *testing.T) {
	n := newNode(t, nil)
	units := withUnits(t, n, nil)
	writeUnit(t, filepath.Join(units, "app.service"), "[Service]\nExecStart=/bin/app\n")
	p := protocol.ServicePayload{Cluster: "c1", Unit: "app.service"}

	_, err := n.run(protocol.KindService, p)
	if err == nil || !strings.Contains(err.Error(), "SERVICE needs --root /") || !strings.Contains(err.Error(), n.root) {
		t.Errorf("service with --root %s: %v, want the --root error naming it", n.root, err)
	}
	// Nothing was started under that root, so undo has nothing to stop.
	ev, err := n.run(protocol.KindUndo, undo(protocol.UndoStopService, "app.service"))
	if err != nil || !strings.Contains(strings.Join(ev.lines("stdout"), "\n"), "nothing to stop") {
		t.Errorf("undo with --root %s: %v %q", n.root, err, ev.lines(""))
	}

	if _, err := os.Stat("/run/systemd/system"); err == nil {
		// This host runs systemd: pretend it does not.
		n.configure(func(o *Options) {
			o.Units = func(context.Context) (UnitManager, error) { return nil, systemd.ErrNoSystemd }
		})
	}
	n.root = "/"
	_, err = n.run(protocol.KindService, p)
	if !errors.Is(err, systemd.ErrNoSystemd) || !strings.Contains(err.Error(), "service app.service") || !strings.Contains(err.Error(), "booted with systemd") {
		t.Errorf("service without systemd: %v", err)
	}
}

// TestServiceRealSystemd starts and stops a throwaway unit on this host's
// systemd, when the host runs one (this build machine does not: it runs in
// e2e's nspawn nodes instead).
func TestServiceRealSystemd(t *testing.T) {
	out, _ := exec.Command("systemctl", "is-system-running").Output()
	if state := strings.TrimSpace(string(out)); state != "running" && state != "degraded" {
		t.Skipf("systemd is not running on this host (systemctl is-system-running: %q); the e2e tests (TestApply in ./e2e) run real units inside systemd-nspawn nodes", state)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to install a unit")
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	unit := "flotilla-test-" + hex.EncodeToString(b[:]) + ".service"
	path := filepath.Join("/etc/systemd/system", unit)
	writeUnit(t, path, "[Unit]\nDescription=flotilla test\n[Service]\nExecStart=/bin/sleep 300\n[Install]\nWantedBy=multi-user.target\n")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if m, err := systemd.New(ctx, systemd.Options{}); err == nil {
			_ = m.Remove(ctx, unit, 20*time.Second)
			m.Close()
		}
		_ = os.Remove(path)
	})
	n := newNode(t, nil)
	n.root = "/"
	if _, err := n.run(protocol.KindService, protocol.ServicePayload{Cluster: "c1", Unit: unit}); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("systemctl", "is-active", unit).Output(); strings.TrimSpace(string(out)) != "active" {
		t.Errorf("%s is %q after the service step, want active", unit, out)
	}
	if _, err := n.run(protocol.KindUndo, undo(protocol.UndoStopService, unit)); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command("systemctl", "is-active", unit).Output()
	if s := strings.TrimSpace(string(out)); s == "active" {
		t.Errorf("%s still active after undo", unit)
	}
}

func TestServiceTimeoutLeavesRoomForTheJournal(t *testing.T) {
	for _, tc := range []struct {
		step, deadline time.Duration // 0: none
		min, max       time.Duration
	}{
		{0, 0, 90 * time.Second, 90 * time.Second},
		{5 * time.Second, 0, 5 * time.Second, 5 * time.Second},
		{0, 10 * time.Second, 8500 * time.Millisecond, 9100 * time.Millisecond},
		{60 * time.Second, 60 * time.Second, 56 * time.Second, 57100 * time.Millisecond},
	} {
		ctx := context.Background()
		if tc.deadline > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, tc.deadline)
			defer cancel()
		}
		sc := agent.NewStepContext(&protocol.Task{}, &protocol.Step{Timeout: tc.step}, "/", t.TempDir(), nil)
		if got := stepTimeout(ctx, sc); got < tc.min || got > tc.max {
			t.Errorf("step timeout %s, deadline in %s: systemd gets %s, want %s to %s", tc.step, tc.deadline, got, tc.min, tc.max)
		}
	}
}
