// Package e2e_test runs flotilla end to end on a sandbox fleet of systemd
// nodes: a real controller on the bridge, agents installed with the one-liner.
package e2e_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/e2e/e2etest"
	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/packaging"
	"github.com/flotilla-dev/flotilla/sandbox"
)

func TestBootstrapOneLiner(t *testing.T) {
	f := fleettest.New(t, sandbox.Options{Name: "flteb", Subnet: "10.77.10.192/27", N: 6})
	c := e2etest.StartController(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	run := func(node, cmd string) (string, error) {
		out, err := f.Exec(ctx, node, "sh", "-c", cmd)
		return string(out), err
	}
	unit := func(node, prop string) string {
		out, _ := f.Exec(ctx, node, "systemctl", "show", "-p", prop, "--value", packaging.UnitName)
		return strings.TrimSpace(string(out))
	}
	ti := c.Token("1h")
	joined := []string{"node1", "node2", "node3", "node4", "node5"}

	t.Run("FiveNodesJoin", func(t *testing.T) {
		start := time.Now()
		outs, err := e2etest.Bootstrap(ctx, f, ti.Bootstrap, joined...)
		if err != nil {
			t.Fatalf("%v\n%v", err, outs)
		}
		for _, n := range joined {
			if !strings.Contains(outs[n], "node registered") {
				t.Errorf("%s: no success message:\n%s", n, outs[n])
			}
		}
		c.WaitOnline(30*time.Second, joined...)
		t.Logf("5 nodes bootstrapped with the one-liner and online in %s", time.Since(start).Round(time.Millisecond))
		if out, err := run("node1", ti.Bootstrap); err != nil || !strings.Contains(out, "nothing changed") {
			t.Errorf("second run on node1: %v\n%s", err, out)
		}
	})

	t.Run("ExpiredTokenLeavesNodeClean", func(t *testing.T) {
		short := c.Token("1s")
		time.Sleep(1500 * time.Millisecond) // the token must really have expired: only time passing does that
		out, err := run("node6", short.Bootstrap+" --timeout 60")
		if err == nil || !strings.Contains(out, "expired") || !strings.Contains(out, "undid the changes") {
			t.Fatalf("err=%v, output:\n%s", err, out)
		}
		t.Logf("bootstrap with an expired token:\n%s", out)
		assertClean(t, f, "node6")
		if st, _ := c.Online(ctx); st["node6"] {
			t.Error("node6 joined with an expired token")
		}
	})

	t.Run("SIGKILLedAgentRejoins", func(t *testing.T) {
		pid := unit("node2", "MainPID")
		if n, err := strconv.Atoi(pid); err != nil || n <= 1 {
			t.Fatalf("agent on node2 has no main PID: %q", pid)
		}
		if _, err := run("node2", "kill -9 "+pid); err != nil {
			t.Fatal(err)
		}
		back := func() bool {
			if p := unit("node2", "MainPID"); p == pid || p == "0" {
				return false
			}
			_, err := run("node2", "flotilla agent status")
			return err == nil
		}
		if err := poll.Until(context.Background(), 30*time.Second, 250*time.Millisecond, back); err != nil {
			out, _ := run("node2", "journalctl -u flotilla-agent -n 20 --no-pager")
			t.Fatalf("agent not back after SIGKILL (MainPID %s -> %s): %v\n%s", pid, unit("node2", "MainPID"), err, out)
		}
		c.WaitOnline(30*time.Second, "node2")
	})

	t.Run("Uninstall", func(t *testing.T) {
		out, err := run("node3", "flotilla agent uninstall")
		if err != nil || !strings.Contains(out, "removed "+packaging.BinPath) {
			t.Fatalf("%v\n%s", err, out)
		}
		assertClean(t, f, "node3")
		if out, err := run("node3", "command -v flotilla || echo gone"); err != nil || strings.TrimSpace(out) != "gone" {
			t.Errorf("flotilla still on PATH: %q %v", out, err)
		}
	})
}

// assertClean checks that nothing of the agent is left on a node.
func assertClean(t *testing.T, f *sandbox.Fleet, node string) {
	t.Helper()
	for _, p := range []string{packaging.BinPath, packaging.ConfigDir, packaging.UnitPath, packaging.DefaultDataDir,
		"/etc/systemd/system/multi-user.target.wants/" + packaging.UnitName} {
		if _, err := os.Lstat(filepath.Join(f.Root(node), p)); err == nil {
			t.Errorf("%s: %s left behind", node, p)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := f.Exec(ctx, node, "systemctl", "show", "-p", "LoadState,ActiveState", packaging.UnitName)
	if !strings.Contains(string(out), "LoadState=not-found") || !strings.Contains(string(out), "ActiveState=inactive") {
		t.Errorf("%s: unit still known to systemd: %s", node, out)
	}
}

// The harness the other e2e scenarios build on: fleet, controller, every node
// joined; a command then runs on every node through the controller.
func TestEnvExecOnNodes(t *testing.T) {
	env := e2etest.Start(t, sandbox.Options{Name: "fltee", Subnet: "10.77.10.224/28", N: 2})
	out, _, err := env.Controller.CLI(context.Background(), "exec", "--all", "--", "cat", "/etc/machine-id")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"node1", "node2"} {
		id, err := os.ReadFile(filepath.Join(env.Fleet.Root(n), "etc/machine-id"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, strings.TrimSpace(string(id))) {
			t.Errorf("exec --all did not run on %s (machine-id %s):\n%s", n, id, out)
		}
	}
}
