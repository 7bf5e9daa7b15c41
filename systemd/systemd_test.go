package systemd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/sandbox"
	"github.com/flotilla-dev/flotilla/systemd"
)

func TestNoSystemd(t *testing.T) {
	_, err := systemd.New(context.Background(), systemd.Options{Root: t.TempDir()})
	if !errors.Is(err, systemd.ErrNoSystemd) {
		t.Fatalf("got %v, want ErrNoSystemd", err)
	}
	if !strings.Contains(err.Error(), "SERVICE steps need systemd") {
		t.Errorf("error does not say what needs systemd: %v", err)
	}
}

func TestUnitErrorMessage(t *testing.T) {
	e := &systemd.UnitError{Unit: "etcd.service", ActiveState: "failed", SubState: "failed", Result: "exit-code",
		Journal: "line one\nline two\n", Err: errors.New("failed")}
	want := "unit etcd.service: failed (state failed/failed, result exit-code); last journal lines:\nline one\nline two"
	if e.Error() != want {
		t.Errorf("got %q\nwant %q", e.Error(), want)
	}
}

// node boots one sandbox node and connects a Manager to its systemd from the host.
func node(t *testing.T) (*sandbox.Fleet, *systemd.Manager) {
	f := fleettest.New(t, sandbox.Options{Name: "fltes", Subnet: "10.77.10.64/28", N: 1})
	pid, err := f.PID("node1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := systemd.New(ctx, systemd.Options{
		Root: fmt.Sprintf("/proc/%d/root", pid),
		Journal: func(ctx context.Context, unit string, n int) (string, error) {
			out, err := f.Exec(ctx, "node1", "journalctl", "-u", unit, "-n", strconv.Itoa(n), "--no-pager")
			return string(out), err
		},
		Settle: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return f, m
}

func TestUnitsOnNode(t *testing.T) {
	f, m := node(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	in := func(argv ...string) string {
		out, _ := f.Exec(ctx, "node1", argv...)
		return strings.TrimSpace(string(out))
	}
	const good = "[Unit]\nDescription=flotilla test\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"

	t.Run("InstallEnableStart", func(t *testing.T) {
		changed, err := m.Install(ctx, "good.service", []byte(good))
		if err != nil || !changed {
			t.Fatalf("Install: changed=%v err=%v", changed, err)
		}
		if changed, err := m.Install(ctx, "good.service", []byte(good)); err != nil || changed {
			t.Fatalf("second Install: changed=%v err=%v, want unchanged", changed, err)
		}
		if err := m.Enable(ctx, "good.service"); err != nil {
			t.Fatal(err)
		}
		if err := m.Start(ctx, "good.service", 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := in("systemctl", "is-active", "good.service"); got != "active" {
			t.Errorf("is-active = %q", got)
		}
		if got := in("systemctl", "is-enabled", "good.service"); got != "enabled" {
			t.Errorf("is-enabled = %q", got)
		}
		before := in("systemctl", "show", "-p", "MainPID", "--value", "good.service")
		if err := m.Restart(ctx, "good.service", 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if after := in("systemctl", "show", "-p", "MainPID", "--value", "good.service"); after == before || after == "0" {
			t.Errorf("MainPID %s -> %s: not restarted", before, after)
		}
	})

	t.Run("FailuresCarryJournal", func(t *testing.T) {
		for _, tc := range []struct{ name, unit, want string }{
			{"exit.service", "[Service]\nExecStart=/bin/sh -c 'echo boom-7f3a >&2; exit 3'\n", "boom-7f3a"},
			{"nobinary.service", "[Service]\nExecStart=/opt/missing/bin/daemon\n", "/opt/missing/bin/daemon"},
			{"dies.service", "[Service]\nExecStart=/bin/sh -c 'sleep 0.1; echo dying-c41d; exit 1'\n", "dying-c41d"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if _, err := m.Install(ctx, tc.name, []byte(tc.unit)); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = m.Remove(ctx, tc.name, 10*time.Second) })
				err := m.Start(ctx, tc.name, 20*time.Second)
				var ue *systemd.UnitError
				if !errors.As(err, &ue) {
					t.Fatalf("Start = %v, want a *UnitError", err)
				}
				t.Logf("%s: %v", tc.name, err)
				if !strings.Contains(err.Error(), tc.want) || ue.ActiveState != "failed" {
					t.Errorf("error lacks %q or state is %q:\n%v", tc.want, ue.ActiveState, err)
				}
			})
		}
	})

	t.Run("Oneshot", func(t *testing.T) {
		if _, err := m.Install(ctx, "once.service", []byte("[Service]\nType=oneshot\nExecStart=/bin/true\n")); err != nil {
			t.Fatal(err)
		}
		if err := m.Start(ctx, "once.service", 20*time.Second); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("StopDisableRemove", func(t *testing.T) {
		if err := m.Stop(ctx, "good.service", 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if got := in("systemctl", "is-active", "good.service"); got != "inactive" {
			t.Errorf("after Stop is-active = %q", got)
		}
		if err := m.Disable(ctx, "good.service"); err != nil {
			t.Fatal(err)
		}
		if got := in("systemctl", "is-enabled", "good.service"); got != "disabled" {
			t.Errorf("after Disable is-enabled = %q", got)
		}
		if err := m.Remove(ctx, "good.service", 20*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := m.Remove(ctx, "good.service", 20*time.Second); err != nil {
			t.Errorf("second Remove: %v", err)
		}
		if _, err := os.Stat(filepath.Join(f.Root("node1"), "etc/systemd/system/good.service")); !os.IsNotExist(err) {
			t.Errorf("unit file still there: %v", err)
		}
		s, err := m.State(ctx, "good.service")
		if err != nil || s.Load != "not-found" {
			t.Errorf("after Remove state = %+v, %v", s, err)
		}
		err = m.WaitActive(ctx, "good.service", 5*time.Second)
		if err == nil || !strings.Contains(err.Error(), "not found") {
			t.Errorf("WaitActive on a removed unit = %v", err)
		}
	})
}

func TestUnitNames(t *testing.T) {
	_, m := node(t)
	for _, name := range []string{"", "../x.service", "x", "a/b.service", ".hidden.service"} {
		if _, err := m.Install(context.Background(), name, []byte("[Service]\n")); err == nil {
			t.Errorf("Install(%q) accepted a bad name", name)
		}
	}
}
