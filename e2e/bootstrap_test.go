// Package e2e_test runs flotilla end to end on a sandbox fleet of systemd
// nodes: a real controller on the bridge, agents installed with the one-liner.
package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/e2e/fleet"
	"github.com/flotilla-dev/flotilla/e2e/fleet/fleettest"
	"github.com/flotilla-dev/flotilla/internal/testbin"
	"github.com/flotilla-dev/flotilla/packaging"
	"github.com/flotilla-dev/flotilla/protocol"
)

// controller is a `flotilla controller` process listening on the fleet's bridge.
type controller struct {
	t       *testing.T
	bin     string
	dataDir string
	host    string
	log     string
	cmd     *exec.Cmd
	done    chan struct{}
}

func startController(t *testing.T, f *fleet.Fleet) *controller {
	t.Helper()
	bin, err := testbin.Path()
	if err != nil {
		t.Fatalf("flotilla binary: %v", err)
	}
	dir := t.TempDir()
	c := &controller{t: t, bin: bin, dataDir: filepath.Join(dir, "controller"), host: f.HostIP().String(),
		log: filepath.Join(dir, "controller.log"), done: make(chan struct{})}
	lf, err := os.Create(c.log)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, "controller", "--data-dir", c.dataDir,
		"--listen", net.JoinHostPort(c.host, "4222"), "--http-listen", net.JoinHostPort(c.host, "9443"),
		"--advertise", c.host, "--log-level", "debug")
	c.cmd.Stdout, c.cmd.Stderr = lf, lf
	// Dies with the test binary even when a timeout kills it before Cleanup.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c.cmd.Env = append(os.Environ(), "FLOTILLA_CONTROLLER=", "FLOTILLA_CREDENTIALS=", "FLOTILLA_AGENT_DIR=")
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.cmd.Wait(); lf.Close(); close(c.done) }()
	t.Cleanup(func() {
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.done
		if t.Failed() {
			b, _ := os.ReadFile(c.log)
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("--- controller log (tail):\n%s", b)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, _, err := c.cli("nodes"); err == nil {
			return c
		}
		select {
		case <-c.done:
			t.Fatalf("controller exited; log in %s", c.log)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("controller not answering after 60s")
		}
	}
}

func (c *controller) cli(args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append(args, "--data-dir", c.dataDir)...)
	cmd.Env = append(os.Environ(), "FLOTILLA_CONTROLLER=", "FLOTILLA_CREDENTIALS=")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	return o.String(), e.String(), err
}

func (c *controller) token(ttl string) protocol.TokenInfo {
	c.t.Helper()
	out, errOut, err := c.cli("token", "create", "--ttl", ttl, "-o", "json")
	if err != nil {
		c.t.Fatalf("token create: %v: %s", err, errOut)
	}
	var ti protocol.TokenInfo
	if err := json.Unmarshal([]byte(out), &ti); err != nil {
		c.t.Fatalf("token create -o json: %v: %q", err, out)
	}
	if !strings.Contains(ti.Bootstrap, "/bootstrap.sh | sh -s -- --token") {
		c.t.Fatalf("token create printed no one-liner: %+v", ti)
	}
	return ti
}

func (c *controller) online(names ...string) (map[string]bool, error) {
	out, errOut, err := c.cli("nodes", "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("nodes: %v: %s", err, errOut)
	}
	var nodes []protocol.NodeInfo
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		return nil, err
	}
	st := map[string]bool{}
	for _, n := range nodes {
		st[n.Name] = n.Online
	}
	return st, nil
}

func (c *controller) waitOnline(timeout time.Duration, names ...string) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.online()
		ok := err == nil
		for _, n := range names {
			ok = ok && st[n]
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("nodes %v not all online after %s: %v %v", names, timeout, st, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func TestBootstrapOneLiner(t *testing.T) {
	f := fleettest.New(t, fleet.Options{Name: "flteb", Subnet: "10.77.10.192/27", N: 6})
	c := startController(t, f)
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
	ti := c.token("1h")
	joined := []string{"node1", "node2", "node3", "node4", "node5"}

	t.Run("FiveNodesJoin", func(t *testing.T) {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, len(joined))
		outs := make([]string, len(joined))
		for i, n := range joined {
			wg.Add(1)
			go func() {
				defer wg.Done()
				outs[i], errs[i] = run(n, ti.Bootstrap)
			}()
		}
		wg.Wait()
		for i, n := range joined {
			if errs[i] != nil || !strings.Contains(outs[i], "node registered") {
				t.Fatalf("%s: %v\n%s", n, errs[i], outs[i])
			}
		}
		c.waitOnline(30*time.Second, joined...)
		t.Logf("5 nodes bootstrapped with the one-liner and online in %s", time.Since(start).Round(time.Millisecond))
		if out, err := run("node1", ti.Bootstrap); err != nil || !strings.Contains(out, "nothing changed") {
			t.Errorf("second run on node1: %v\n%s", err, out)
		}
	})

	t.Run("ExpiredTokenLeavesNodeClean", func(t *testing.T) {
		short := c.token("1s")
		time.Sleep(1500 * time.Millisecond)
		out, err := run("node6", short.Bootstrap+" --timeout 60")
		if err == nil || !strings.Contains(out, "expired") || !strings.Contains(out, "undid the changes") {
			t.Fatalf("err=%v, output:\n%s", err, out)
		}
		t.Logf("bootstrap with an expired token:\n%s", out)
		assertClean(t, f, "node6")
		if st, _ := c.online(); st["node6"] {
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
		deadline := time.Now().Add(30 * time.Second)
		for {
			p := unit("node2", "MainPID")
			if p != pid && p != "0" {
				if _, err := run("node2", "flotilla agent status"); err == nil {
					break
				}
			}
			if time.Now().After(deadline) {
				out, _ := run("node2", "journalctl -u flotilla-agent -n 20 --no-pager")
				t.Fatalf("agent not back after SIGKILL (MainPID %s -> %s):\n%s", pid, p, out)
			}
			time.Sleep(250 * time.Millisecond)
		}
		c.waitOnline(30*time.Second, "node2")
	})

	t.Run("Uninstall", func(t *testing.T) {
		out, err := run("node3", "flotilla agent uninstall")
		if err != nil || !strings.Contains(out, "removed "+packaging.BinPath) {
			t.Fatalf("%v\n%s", err, out)
		}
		assertClean(t, f, "node3")
		if out, err := run("node3", "/bin/sh -c 'command -v flotilla || echo gone'"); err != nil || strings.TrimSpace(out) != "gone" {
			t.Errorf("flotilla still on PATH: %q %v", out, err)
		}
	})
}

// assertClean checks that nothing of the agent is left on a node.
func assertClean(t *testing.T, f *fleet.Fleet, node string) {
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
