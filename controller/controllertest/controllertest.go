// Package controllertest starts real flotilla controller and agent processes on
// loopback (random ports, temporary dirs) for integration tests and benchmarks.
package controllertest

import (
	"bytes"
	"context"
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

	"github.com/flotilla-dev/flotilla/client"
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
	// External: the controller uses an existing NATS cluster (StartExternal);
	// clients take the URLs from the admin credentials.
	External bool
	mu       sync.Mutex
	Agents   map[string]*Proc
	token    string
	caHash   string
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

// StartExternal starts a controller on an existing NATS cluster: controllerArgs
// carry its --nats-url, --nats-creds and --nats-account-key.
func StartExternal(t testing.TB, controllerArgs ...string) *Fleet {
	t.Helper()
	bin, err := testbin.Path()
	if err != nil {
		t.Fatalf("flotilla binary: %v", err)
	}
	f := &Fleet{T: t, Bin: bin, Dir: t.TempDir(), Agents: map[string]*Proc{}, NATSPort: freePort(t), HTTPPort: freePort(t),
		ControllerArgs: controllerArgs, External: true}
	t.Cleanup(f.stopAll)
	f.StartController()
	return f
}

// StartStandby starts another controller (its own data dir and ports) with
// from's flags, sharing from's CA, signing key and admin credentials (what
// the controllers of one HA group share), and waits until admin requests
// answer (the leader answers them while this one stands by).
func StartStandby(from *Fleet) *Fleet {
	t := from.T
	t.Helper()
	f := &Fleet{T: t, Bin: from.Bin, Dir: t.TempDir(), Agents: map[string]*Proc{}, NATSPort: freePort(t), HTTPPort: freePort(t),
		ControllerArgs: from.ControllerArgs, External: from.External}
	if err := os.MkdirAll(f.ControllerDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ca.crt", "ca.key", "signing.key", protocol.AdminCredsFile} {
		data, err := os.ReadFile(filepath.Join(from.ControllerDir(), name))
		if err != nil {
			t.Fatalf("standby: %v", err)
		}
		if err := os.WriteFile(filepath.Join(f.ControllerDir(), name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
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
// waits until it answers admin requests.
func (f *Fleet) StartController() {
	f.T.Helper()
	f.Controller = f.start("controller", append([]string{"controller",
		"--data-dir", f.ControllerDir(),
		"--listen", fmt.Sprintf("127.0.0.1:%d", f.NATSPort),
		"--http-listen", fmt.Sprintf("127.0.0.1:%d", f.HTTPPort),
		"--advertise", "127.0.0.1", "--log-level", "debug"}, f.ControllerArgs...)...)
	// A controller on a NATS cluster that just started waits for it to settle
	// (minutes at worst on a busy host); one that fails exits, seen at once.
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if _, err := f.Nodes(context.Background()); err == nil {
			return
		}
		if time.Now().After(deadline) {
			f.T.Fatalf("controller not answering after 3m; log:\n%s", f.Controller.Tail())
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

// NewToken creates a token valid for ttl (a time.Duration string).
func (f *Fleet) NewToken(ttl string) (token, caHash string) {
	f.T.Helper()
	d, err := time.ParseDuration(ttl)
	if err != nil {
		f.T.Fatalf("token ttl %q: %v", ttl, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := f.Client()
	if err != nil {
		f.T.Fatal(err)
	}
	defer c.Close()
	ti, err := c.CreateToken(ctx, protocol.TokenCreate{TTL: d})
	if err != nil {
		f.T.Fatalf("token create: %v", err)
	}
	return ti.Token, ti.CAHash
}

// Client connects to the controller with its admin credentials (the data dir's
// admin.creds); close it when done. A restarted controller needs a new one.
func (f *Fleet) Client() (*client.Client, error) {
	if f.External {
		return client.Connect(client.Config{DataDir: f.ControllerDir(), Name: "controllertest"})
	}
	return client.Connect(client.Config{DataDir: f.ControllerDir(), Controller: f.NATSURL(), Name: "controllertest"})
}

// AgentDataDir is the --data-dir of agent name.
func (f *Fleet) AgentDataDir(name string) string { return filepath.Join(f.Dir, "agents", name) }

// TestRegistryListen is the --registry-listen of the agents StartAgent and
// RestartAgent start (extra arguments may name another): a free loopback
// port each (the agent's status says which), never the host's real mirror
// port, which the host's own agent or another test may hold.
const TestRegistryListen = "127.0.0.1:0"

// AgentArgs are the arguments StartAgent uses for name with a token.
func (f *Fleet) AgentArgs(name string, extra ...string) []string {
	tok, hash := f.Token()
	args := []string{"agent", "--controller", f.HTTPURL(), "--token", tok, "--ca-hash", hash, "--name", name,
		"--data-dir", f.AgentDataDir(name), "--root", filepath.Join(f.Dir, "roots", name),
		"--heartbeat-interval", HeartbeatInterval.String(), "--log-level", "debug", "--registry-listen", TestRegistryListen}
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
		"--root", filepath.Join(f.Dir, "roots", name), "--heartbeat-interval", HeartbeatInterval.String(), "--log-level", "debug",
		"--registry-listen", TestRegistryListen)
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

// Nodes lists the inventory through the client.
func (f *Fleet) Nodes(ctx context.Context) ([]protocol.NodeInfo, error) {
	c, err := f.Client()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Nodes(ctx)
}

// Status returns the controller's status of cluster through the client.
func (f *Fleet) Status(ctx context.Context, cluster string) ([]protocol.ClusterStatus, error) {
	c, err := f.Client()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Status(ctx, cluster)
}

// WaitNodes lists the inventory every 100 ms over one client connection until
// done returns true for a listing, and returns that listing; after timeout it
// fails the test with the last listing.
func (f *Fleet) WaitNodes(timeout time.Duration, what string, done func([]protocol.NodeInfo) bool) []protocol.NodeInfo {
	f.T.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var (
		c    *client.Client
		last []protocol.NodeInfo
		err  error
	)
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if c == nil {
			c, err = f.Client()
		}
		if c != nil {
			var nodes []protocol.NodeInfo
			if nodes, err = c.Nodes(ctx); err == nil {
				last = nodes
				if done(nodes) {
					return nodes
				}
			} else {
				c.Close() // the controller may have restarted: connect again
				c = nil
			}
		}
		select {
		case <-ctx.Done():
			f.T.Fatalf("%s: not after %s; last listing: %s (err %v)", what, timeout, summarize(last), err)
			return nil
		case <-tick.C:
		}
	}
}

// WaitOnline waits until every named node is online (or offline when online is false).
func (f *Fleet) WaitOnline(timeout time.Duration, online bool, names ...string) {
	f.T.Helper()
	f.WaitNodes(timeout, fmt.Sprintf("nodes %v online=%t", names, online), func(nodes []protocol.NodeInfo) bool {
		state := map[string]bool{}
		for _, n := range nodes {
			state[n.Name] = n.Online
		}
		for _, name := range names {
			if st, known := state[name]; !known || st != online {
				return false
			}
		}
		return true
	})
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
