// Package e2etest runs a real flotilla controller on a sandbox fleet's bridge
// and joins nodes to it with the bootstrap one-liner, as an operator would.
package e2etest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/client"
	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/internal/testbin"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/flotilla-dev/flotilla/sandbox"
)

// Controller is a `flotilla controller` process listening on the fleet's
// bridge (HTTPS :9443, NATS :4222 on the host IP).
type Controller struct {
	Bin     string // the flotilla binary (testbin.Path)
	DataDir string // its --data-dir; the CLI finds admin.creds there
	Host    string // the bridge IP it listens and advertises on
	Log     string // its combined output
	t       testing.TB
	cmd     *exec.Cmd
	done    chan struct{}
	extra   []string // more controller flags
}

// UnreachableTimeout is the controllers' --unreachable-timeout: short, so that a test
// with a node cut off does not wait the default two minutes.
const UnreachableTimeout = 20 * time.Second

// StartController starts a controller for the fleet, waits until it answers
// admin requests, and kills it in t.Cleanup (printing its log tail if the test failed).
func StartController(t testing.TB, f *sandbox.Fleet) *Controller {
	t.Helper()
	return StartControllerArgs(t, f)
}

// StartControllerArgs is StartController with more `flotilla controller` flags.
func StartControllerArgs(t testing.TB, f *sandbox.Fleet, extra ...string) *Controller {
	t.Helper()
	bin, err := testbin.Path()
	if err != nil {
		t.Fatalf("flotilla binary: %v", err)
	}
	dir := t.TempDir()
	c := &Controller{t: t, Bin: bin, DataDir: filepath.Join(dir, "controller"), Host: f.HostIP().String(),
		Log: filepath.Join(dir, "controller.log"), extra: extra}
	t.Cleanup(func() {
		c.Kill()
		if t.Failed() {
			t.Logf("--- controller log (tail):\n%s", tail(c.Log, 6000))
		}
	})
	c.Start()
	return c
}

// Start starts the controller process (again, after Kill: same data dir, its
// log appended) and waits until the CLI gets answers.
func (c *Controller) Start() {
	t := c.t
	t.Helper()
	lf, err := os.OpenFile(c.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"controller", "--data-dir", c.DataDir,
		"--listen", net.JoinHostPort(c.Host, "4222"), "--http-listen", net.JoinHostPort(c.Host, "9443"),
		"--advertise", c.Host, "--log-level", "debug", "--unreachable-timeout", UnreachableTimeout.String()}, c.extra...)
	cmd := exec.Command(c.Bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), "FLOTILLA_CONTROLLER=", "FLOTILLA_CREDENTIALS=", "FLOTILLA_AGENT_DIR=")
	// Dies with the test binary even when a timeout kills it before Cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); lf.Close(); close(done) }()
	c.cmd, c.done = cmd, done
	deadline := time.Now().Add(60 * time.Second)
	for {
		// Ready once the rollout engine answers too (its handlers are
		// registered after the control plane's).
		if _, err := c.Nodes(context.Background()); err == nil {
			if _, _, err := c.CLI(context.Background(), "status"); err == nil || !strings.Contains(err.Error(), "unknown admin request") {
				return
			}
		}
		select {
		case <-done:
			t.Fatalf("controller exited:\n%s", tail(c.Log, 4000))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("controller not answering after 60s:\n%s", tail(c.Log, 4000))
		}
	}
}

// Kill ends the controller process with SIGKILL (a crash) and waits for it.
func (c *Controller) Kill() {
	if c.cmd == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
	c.cmd = nil
}

// CLI runs a flotilla command against the controller and returns stdout and
// stderr; a non-zero exit is an error.
func (c *Controller) CLI(ctx context.Context, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	// --data-dir goes before a "--" so it is not taken as part of a remote command.
	i := len(args)
	for j, a := range args {
		if a == "--" {
			i = j
			break
		}
	}
	args = append(append(append([]string{}, args[:i]...), "--data-dir", c.DataDir), args[i:]...)
	cmd := exec.CommandContext(ctx, c.Bin, args...)
	cmd.Env = append(os.Environ(), "FLOTILLA_CONTROLLER=", "FLOTILLA_CREDENTIALS=")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		return o.String(), e.String(), fmt.Errorf("flotilla %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(e.String()))
	}
	return o.String(), e.String(), nil
}

// Token creates a join token; its Bootstrap field is the one-liner.
func (c *Controller) Token(ttl string) protocol.TokenInfo {
	c.t.Helper()
	out, _, err := c.CLI(context.Background(), "token", "create", "--ttl", ttl, "-o", "json")
	if err != nil {
		c.t.Fatal(err)
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

// Client connects to the controller with the admin credentials in its data
// dir; close it when done.
func (c *Controller) Client() (*client.Client, error) {
	return client.Connect(client.Config{DataDir: c.DataDir, Name: "e2etest"})
}

// Nodes lists the controller's inventory through the client.
func (c *Controller) Nodes(ctx context.Context) ([]protocol.NodeInfo, error) {
	cl, err := c.Client()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	return cl.Nodes(ctx)
}

// Online maps node name to online for every node the controller knows.
func (c *Controller) Online(ctx context.Context) (map[string]bool, error) {
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	st := map[string]bool{}
	for _, n := range nodes {
		st[n.Name] = n.Online
	}
	return st, nil
}

// WaitOnline waits until every named node is online.
func (c *Controller) WaitOnline(timeout time.Duration, names ...string) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.Online(context.Background())
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

// Bootstrap runs the one-liner inside the given nodes in parallel and returns
// each node's output; the error names every node where it failed.
func Bootstrap(ctx context.Context, f *sandbox.Fleet, oneLiner string, nodes ...string) (map[string]string, error) {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		outs = map[string]string{}
		errs []string
	)
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := f.Exec(ctx, n, "sh", "-c", oneLiner)
			mu.Lock()
			defer mu.Unlock()
			outs[n] = string(out)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", n, err))
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return outs, fmt.Errorf("bootstrap failed on %d node(s):\n%s", len(errs), strings.Join(errs, "\n"))
	}
	return outs, nil
}

// Env is a booted fleet with a controller and every node joined.
type Env struct {
	Fleet      *sandbox.Fleet
	Controller *Controller
	Token      protocol.TokenInfo
}

// Start boots a fleet, starts a controller on its bridge, bootstraps every
// node with the one-liner and waits until all are online.
func Start(t testing.TB, o sandbox.Options) *Env {
	t.Helper()
	f := fleettest.New(t, o)
	c := StartController(t, f)
	ti := c.Token("1h")
	var names []string
	for _, n := range f.Nodes() {
		names = append(names, n.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := Bootstrap(ctx, f, ti.Bootstrap, names...); err != nil {
		t.Fatal(err)
	}
	c.WaitOnline(60*time.Second, names...)
	return &Env{Fleet: f, Controller: c, Token: ti}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
