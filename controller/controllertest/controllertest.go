// Package controllertest starts real flotilla controller and agent processes on
// loopback (random ports, temporary dirs) for integration tests and benchmarks.
package controllertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

	"github.com/flotilla-dev/flotilla/internal/testbin"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

// HeartbeatInterval is what agents started here use.
const HeartbeatInterval = 500 * time.Millisecond

// Fleet is one controller and its agents, all processes of the test.
type Fleet struct {
	T        testing.TB
	Bin      string
	Dir      string
	NATSPort int
	HTTPPort int

	Controller *Proc
	// ControllerArgs are extra `flotilla controller` flags (StartWith).
	ControllerArgs []string
	mu             sync.Mutex
	Agents         map[string]*Proc
	token          string
	caHash         string
}

// Proc is one process started by the fleet.
type Proc struct {
	Name string
	Args []string
	Log  string // file with its stderr and stdout
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start builds (or finds) the binary and starts a controller, with
// controllerArgs added to its command line (on every start).
func Start(t testing.TB, controllerArgs ...string) *Fleet {
	t.Helper()
	return StartWith(t, controllerArgs...)
}

// StartWith starts a controller with extra `flotilla controller` flags.
func StartWith(t testing.TB, controllerArgs ...string) *Fleet {
	t.Helper()
	bin, err := testbin.Path()
	if err != nil {
		t.Fatalf("flotilla binary: %v", err)
	}
	f := &Fleet{T: t, Bin: bin, Dir: t.TempDir(), Agents: map[string]*Proc{}, NATSPort: freePort(t), HTTPPort: freePort(t), ControllerArgs: controllerArgs}
	t.Cleanup(f.stopAll)
	f.StartController()
	return f
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// ControllerDir is the controller's --data-dir.
func (f *Fleet) ControllerDir() string { return filepath.Join(f.Dir, "controller") }

// HTTPURL is the controller's join address.
func (f *Fleet) HTTPURL() string { return fmt.Sprintf("https://127.0.0.1:%d", f.HTTPPort) }

// NATSURL is the controller's NATS address.
func (f *Fleet) NATSURL() string { return fmt.Sprintf("tls://127.0.0.1:%d", f.NATSPort) }

// StartController (re)starts the controller on the same ports and data dir and
// waits until the CLI gets answers from it.
func (f *Fleet) StartController() {
	f.T.Helper()
	f.Controller = f.start("controller", append([]string{"controller",
		"--data-dir", f.ControllerDir(),
		"--listen", fmt.Sprintf("127.0.0.1:%d", f.NATSPort),
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", f.HTTPPort),
		"--advertise", "127.0.0.1", "--log-level", "debug"}, f.ControllerArgs...)...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, code := f.CLI(context.Background(), "nodes")
		if code == 0 {
			return
		}
		if time.Now().After(deadline) {
			f.T.Fatalf("controller not answering after 30s; log:\n%s", f.Controller.Tail())
		}
		select {
		case <-f.Controller.done:
			f.T.Fatalf("controller exited: %v; log:\n%s", f.Controller.err, f.Controller.Tail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// KillController sends SIGKILL to the controller and waits for it to exit.
func (f *Fleet) KillController() { f.Controller.Kill() }

// Token returns a join token (created once) and the CA hash.
func (f *Fleet) Token() (token, caHash string) {
	f.T.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.token == "" {
		f.token, f.caHash = f.NewToken("1h")
	}
	return f.token, f.caHash
}

// NewToken creates a token with the given --ttl.
func (f *Fleet) NewToken(ttl string) (token, caHash string) {
	f.T.Helper()
	out, errOut, code := f.CLI(context.Background(), "token", "create", "--ttl", ttl, "-o", "json")
	if code != 0 {
		f.T.Fatalf("token create: exit %d: %s", code, errOut)
	}
	var ti protocol.TokenInfo
	if err := json.Unmarshal([]byte(out), &ti); err != nil {
		f.T.Fatalf("token create output %q: %v", out, err)
	}
	return ti.Token, ti.CAHash
}

// AgentDataDir is the --data-dir of agent name.
func (f *Fleet) AgentDataDir(name string) string { return filepath.Join(f.Dir, "agents", name) }

// AgentArgs are the arguments StartAgent uses for name with a token.
func (f *Fleet) AgentArgs(name string, extra ...string) []string {
	tok, hash := f.Token()
	args := []string{"agent", "--controller", f.HTTPURL(), "--token", tok, "--ca-hash", hash, "--name", name,
		"--data-dir", f.AgentDataDir(name), "--root", filepath.Join(f.Dir, "roots", name),
		"--heartbeat-interval", HeartbeatInterval.String(), "--log-level", "debug"}
	return append(args, extra...)
}

// StartAgent starts an agent process with a token.
func (f *Fleet) StartAgent(name string, extra ...string) *Proc {
	f.T.Helper()
	p := f.start("agent-"+name, f.AgentArgs(name, extra...)...)
	f.mu.Lock()
	f.Agents[name] = p
	f.mu.Unlock()
	return p
}

// RestartAgent starts agent name again from its data dir, without a token.
func (f *Fleet) RestartAgent(name string) *Proc {
	f.T.Helper()
	p := f.start("agent-"+name, "agent", "--name", name, "--data-dir", f.AgentDataDir(name),
		"--root", filepath.Join(f.Dir, "roots", name), "--heartbeat-interval", HeartbeatInterval.String(), "--log-level", "debug")
	f.mu.Lock()
	f.Agents[name] = p
	f.mu.Unlock()
	return p
}

// RunAgentOnce runs an agent command to completion (for refused joins) and
// returns its combined output and exit code.
func (f *Fleet) RunAgentOnce(ctx context.Context, args ...string) (string, int) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.Bin, args...)
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return string(out), code
}

func (f *Fleet) start(name string, args ...string) *Proc {
	f.T.Helper()
	logPath := filepath.Join(f.Dir, "logs", name+"."+strconv.FormatInt(time.Now().UnixNano(), 36)+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		f.T.Fatal(err)
	}
	lf, err := os.Create(logPath)
	if err != nil {
		f.T.Fatal(err)
	}
	cmd := exec.Command(f.Bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), "FLOTILLA_CONTROLLER=", "FLOTILLA_CREDENTIALS=", "FLOTILLA_TOKEN=")
	if err := cmd.Start(); err != nil {
		lf.Close()
		f.T.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{Name: name, Args: args, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p
}

// Kill sends SIGKILL to the process (by its PID) and waits for it to exit.
func (p *Proc) Kill() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Output returns the whole process log so far.
func (p *Proc) Output() string {
	data, _ := os.ReadFile(p.Log)
	return string(data)
}

// Tail returns the last 4 KiB of the process log.
func (p *Proc) Tail() string {
	data, _ := os.ReadFile(p.Log)
	if len(data) > 4096 {
		data = data[len(data)-4096:]
	}
	return string(data)
}

func (f *Fleet) stopAll() {
	f.mu.Lock()
	agents := make([]*Proc, 0, len(f.Agents))
	for _, p := range f.Agents {
		agents = append(agents, p)
	}
	f.mu.Unlock()
	for _, p := range agents {
		p.Kill()
	}
	f.Controller.Kill()
	if f.T.Failed() {
		for _, p := range append(agents, f.Controller) {
			if p != nil {
				f.T.Logf("--- log of %s:\n%s", p.Name, p.Tail())
			}
		}
	}
}

// CLI runs a flotilla command against the controller (its data dir gives the
// credentials) and returns stdout, stderr and the exit code.
func (f *Fleet) CLI(ctx context.Context, args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// --data-dir goes before a "--" so it is not taken as part of the remote command.
	i := indexOf(args, "--")
	if i < 0 {
		i = len(args)
	}
	args = append(append(append([]string{}, args[:i]...), "--data-dir", f.ControllerDir()), args[i:]...)
	cmd := exec.CommandContext(ctx, f.Bin, args...)
	cmd.Env = append(os.Environ(), "FLOTILLA_CONTROLLER=", "FLOTILLA_CREDENTIALS=")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		code = -1
		e.WriteString(err.Error())
	}
	return o.String(), e.String(), code
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// Nodes lists the inventory through the CLI.
func (f *Fleet) Nodes(ctx context.Context) ([]protocol.NodeInfo, error) {
	out, errOut, code := f.CLI(ctx, "nodes", "-o", "json")
	if code != 0 {
		return nil, fmt.Errorf("nodes: exit %d: %s", code, errOut)
	}
	var nodes []protocol.NodeInfo
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		return nil, fmt.Errorf("nodes -o json: %w", err)
	}
	return nodes, nil
}

// WaitOnline waits until every named node is online (or offline when online is false).
func (f *Fleet) WaitOnline(timeout time.Duration, online bool, names ...string) {
	f.T.Helper()
	deadline := time.Now().Add(timeout)
	var last []protocol.NodeInfo
	for {
		nodes, err := f.Nodes(context.Background())
		if err == nil {
			last = nodes
			state := map[string]bool{}
			for _, n := range nodes {
				state[n.Name] = n.Online
			}
			ok := true
			for _, name := range names {
				if st, known := state[name]; !known || st != online {
					ok = false
				}
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			f.T.Fatalf("nodes %v not online=%t after %s; last listing: %+v (err %v)", names, online, timeout, summarize(last), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func summarize(nodes []protocol.NodeInfo) string {
	var parts []string
	for _, n := range nodes {
		parts = append(parts, fmt.Sprintf("%s=%t", n.Name, n.Online))
	}
	return strings.Join(parts, " ")
}

// NodeRequest sends a request on node's request subject name over nc with a
// reply subject inside node's inbox, as that node's agent does (the controller
// answers nowhere else), and waits for the answer.
func NodeRequest(ctx context.Context, nc *nats.Conn, node, name string, data []byte) (*nats.Msg, error) {
	inbox := protocol.InboxPrefix(node) + "." + strings.TrimPrefix(nats.NewInbox(), nats.InboxPrefix)
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(protocol.NodeRequestSubject(node, name), inbox, data); err != nil {
		return nil, err
	}
	return sub.NextMsgWithContext(ctx)
}
