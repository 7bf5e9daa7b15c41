// Package agent is the node daemon: it joins the controller with a token,
// registers its facts, heartbeats, verifies and runs signed tasks step by step
// through pluggable executors, streams their output back and remembers which
// step digests it already applied.
//
// Step kinds are pluggable: Options.Executors maps protocol.Step.Kind to an
// Executor, beside the built-in "exec" (ExecStep); agent/rollout builds the
// rollout kinds (rollout.Executors) and the command passes them in. Executors
// get what they may use of the running agent in their StepContext (its peer,
// its applied-steps state, its logger), report through it (Output,
// LineWriter, Progress) and signal exit codes with *ExitError. Nothing is
// shared through package state: two agents in one process are independent.
package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotilla-dev/flotilla/internal/natsconn"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure an Agent.
type Options struct {
	// Controller is the HTTPS join address (https://HOST:9443); only needed to join.
	Controller string
	// Token, CAHash or CAFile authenticate the first join; later starts use the
	// credentials kept in DataDir.
	Token, CAHash, CAFile string
	// NATSURLs, when set, replace the NATS URLs of the credentials: a site's
	// leaf node (nats://leaf:4222) instead of the hub's servers.
	NATSURLs []string
	// Credentials, when set, skip the join (an agent inside the controller process).
	Credentials *protocol.Credentials
	// Name defaults to the host name.
	Name   string
	Labels map[string]string
	// Root is where steps place files (default "/"); DataDir holds the agent's state
	// (default /var/lib/flotilla-agent).
	Root, DataDir string
	// HeartbeatInterval defaults to 5s.
	HeartbeatInterval time.Duration
	// MaxClockSkew is how far this host's clock may be from the controller's
	// before signed tasks are refused (0: protocol.DefaultMaxClockSkew).
	MaxClockSkew time.Duration
	// Now is the agent's clock for checking signed tasks (default time.Now; tests).
	Now func() time.Time
	// Executors by step kind, beside the built-in "exec" (ExecStep), which
	// an entry of that kind replaces; nil: "exec" alone. The map is copied.
	Executors map[string]Executor
	Version   string
	Logger    *slog.Logger
	// PeerURL is where this agent serves blobs to peers, reported at registration
	// (default: the piece server's, see PeerListen).
	PeerURL string
	// PeerListen is the address of the piece server other agents fetch layer
	// pieces from (mutual TLS with the cluster CA); "" serves none and only
	// fetches. PeerAdvertise is the host peers reach it at (default: the
	// listen host, or the address this host reaches the controller from).
	PeerListen, PeerAdvertise string
	// MaxUpload and MaxDownload cap layer distribution traffic in bytes per
	// second (0: none); a rollout's spec.bandwidth can only lower them.
	MaxUpload, MaxDownload int64
	// RegistryListen is where the node-local registry mirror serves the cached
	// container images (agent/mirror; the CLI's default is mirror.DefaultListen);
	// "" serves none.
	RegistryListen string
	// Metrics is the registry the agent's Prometheus metrics go on (default:
	// one of its own); MetricsListen serves them at /metrics over plain HTTP
	// ("": off; DefaultMetricsListen is the usual loopback address).
	Metrics       *prometheus.Registry
	MetricsListen string
}

// Agent is one node's daemon.
type Agent struct {
	opts    Options
	log     *slog.Logger
	creds   *protocol.Credentials
	facts   protocol.Facts
	applied *appliedState
	verify  *protocol.Verifier
	metrics *metrics

	nc *nats.Conn
	// jwt is the NATS user JWT logins use (existing NATS cluster): the
	// credentials' one, then each renewal's (natsjwt.go).
	jwtMu sync.Mutex
	jwt   string
	// peer is the running peer-to-peer part (nil until runPeer started it,
	// and again once ctx ended); steps get it in StepContext.Peer.
	peer atomic.Pointer[Peer]

	mu         sync.Mutex
	running    map[string]context.CancelFunc
	registered bool
	lastHB     time.Time
	connErr    string // why the last attempt to reach NATS failed; "" once connected
	connErrAt  time.Time
	// registryAddr is where the registry mirror listens ("" while it does
	// not), registryErr why it does not, registryCA the file of the CA its
	// certificate chains to. registryFirst closes after its first attempt to
	// listen (registryTried).
	registryAddr, registryErr, registryCA string
	registryFirst                         chan struct{}
	registryOnce                          sync.Once
	seqMu                                 sync.Mutex
	wg                                    sync.WaitGroup // running tasks
	// bg are the goroutines Run started besides tasks (peer, registry
	// mirror): Run returns once they ended, so nothing writes to the data
	// dir after it.
	bg      sync.WaitGroup
	regKick chan struct{}
	// clusterTail holds, per cluster, the channel the cluster's last queued
	// task closes when it ends: tasks of one cluster run one at a time.
	clusterMu   sync.Mutex
	clusterTail map[string]chan struct{}
}

// New checks options, joins the controller when the data dir has no
// credentials yet, and loads local state. Run connects and serves.
func New(ctx context.Context, opts Options) (*Agent, error) {
	if opts.DataDir == "" {
		opts.DataDir = "/var/lib/flotilla-agent"
	}
	if opts.Root == "" {
		opts.Root = "/"
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = 5 * time.Second
	}
	if err := protocol.ValidateHeartbeatInterval(opts.HeartbeatInterval); err != nil {
		return nil, optionErr("HeartbeatInterval", fmt.Errorf("heartbeat interval: %w", err))
	}
	if opts.MaxClockSkew < 0 {
		return nil, optionErr("MaxClockSkew", fmt.Errorf("clock skew allowance %s: must not be negative", opts.MaxClockSkew))
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	executors := map[string]Executor{kindExec: ExecutorFunc(ExecStep)}
	maps.Copy(executors, opts.Executors)
	opts.Executors = executors
	if opts.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, optionErr("Name", fmt.Errorf("no node name given and no host name: %w", err))
		}
		opts.Name = h
	}
	if err := protocol.ValidateNodeName(opts.Name); err != nil {
		return nil, optionErr("Name", fmt.Errorf("node name: %w", err))
	}
	if err := protocol.ValidateLabels("labels", opts.Labels); err != nil {
		return nil, optionErr("Labels", err)
	}
	root, err := filepath.Abs(opts.Root)
	if err != nil {
		return nil, optionErr("Root", fmt.Errorf("root: %w", err))
	}
	opts.Root = root
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, optionErr("Root", fmt.Errorf("root %s: %w", root, err))
	}
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, optionErr("DataDir", fmt.Errorf("data dir %s: %w", opts.DataDir, err))
	}
	a := &Agent{opts: opts, log: opts.Logger.With("node", opts.Name), running: map[string]context.CancelFunc{}, regKick: make(chan struct{}, 1),
		clusterTail: map[string]chan struct{}{}, registryFirst: make(chan struct{})}
	reg := opts.Metrics
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if a.metrics, err = newMetrics(a, reg); err != nil {
		return nil, err
	}
	a.facts = CollectFacts(opts.Version, opts.Labels)
	if a.applied, err = loadApplied(opts.DataDir); err != nil {
		return nil, err
	}
	if err := a.loadOrJoin(ctx); err != nil {
		return nil, err
	}
	a.jwt = a.creds.JWT
	a.verify = protocol.NewVerifier(ed25519.PublicKey(a.creds.SigningKey), opts.Name, a.loadSeq())
	a.verify.MaxClockSkew, a.verify.Now = opts.MaxClockSkew, opts.Now
	return a, nil
}

func (a *Agent) loadOrJoin(ctx context.Context) error {
	if a.opts.Credentials != nil {
		a.creds = a.opts.Credentials
		return saveCredentials(a.opts.DataDir, a.creds)
	}
	cr, err := loadCredentials(a.opts.DataDir)
	if err == nil {
		if cr.Node != a.opts.Name {
			return optionErr("DataDir", fmt.Errorf("data dir %s belongs to node %q, not %q: use another data dir, or the name %s", a.opts.DataDir, cr.Node, a.opts.Name, cr.Node))
		}
		a.creds = cr
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	base, err := NormalizeControllerURL(a.opts.Controller)
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		cr, err = join(ctx, base, a.opts.Token, a.opts.CAHash, a.opts.CAFile, a.opts.Name, a.opts.DataDir, a.facts)
		if !errors.Is(err, errUnreachable) && !errors.Is(err, errBusy) {
			break
		}
		// The controller may still be starting or busy: retry those, not refusals.
		wait := backoff(attempt)
		a.log.Warn("join failed, retrying", "err", err, "in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return fmt.Errorf("join %s: %w (last error: %v)", base, ctx.Err(), err)
		case <-time.After(wait):
		}
	}
	if err != nil {
		return err
	}
	if err := saveCredentials(a.opts.DataDir, cr); err != nil {
		return err
	}
	a.log.Info("joined controller", "controller", base)
	a.creds = cr
	return nil
}

func (a *Agent) loadSeq() uint64 {
	data, err := os.ReadFile(filepath.Join(a.opts.DataDir, fileSeq))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	return n
}

// CAPEM returns the controller CA that the agent of dataDir (StepContext.DataDir)
// trusts, as kept by its join: executors verify the controller's HTTPS with it.
func CAPEM(dataDir string) ([]byte, error) {
	cr, err := loadCredentials(dataDir)
	if err != nil {
		return nil, fmt.Errorf("controller CA of the agent in %s: %w (has this agent joined?)", dataDir, err)
	}
	if len(cr.CAPEM) == 0 {
		return nil, fmt.Errorf("controller CA of the agent in %s: %s has no caPEM", dataDir, filepath.Join(dataDir, fileCredentials))
	}
	return cr.CAPEM, nil
}

// NewStepContext builds a StepContext outside a running agent, for executor
// tests and tools: events go to emit (nil drops them), Request fails, there is
// no Peer (set it to use one), logs go to slog.Default, and ForgetSteps edits
// <dataDir>/applied.json (no agent may be running with that data dir: it
// would overwrite the file).
func NewStepContext(t *protocol.Task, s *protocol.Step, root, dataDir string, emit func(protocol.Event)) *StepContext {
	if emit == nil {
		emit = func(protocol.Event) {}
	}
	forget := func(digests ...string) error {
		a, err := loadApplied(dataDir)
		if err != nil {
			return err
		}
		return a.forget(digests...)
	}
	return &StepContext{Task: t, Step: s, Root: root, DataDir: dataDir, Env: stepEnv(root, dataDir, t, s),
		Logger: slog.Default(), emit: emit, forget: forget}
}

// Name is the node's name.
func (a *Agent) Name() string { return a.opts.Name }

// Peer is the agent's running peer-to-peer part, or nil while it has none
// (not started yet, or the agent stopped).
func (a *Agent) Peer() *Peer { return a.peer.Load() }

// Run connects to NATS (retrying with jittered backoff), registers, heartbeats
// and runs tasks until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	auth, err := natsconn.OptionsRenewed(a.creds, a.natsJWT)
	if err != nil {
		return err
	}
	if a.creds.JWT != "" {
		// An expired JWT is refused until the renewal gives a good one: keep
		// trying instead of giving up after two refusals.
		auth = append(auth, nats.IgnoreAuthErrorAbort())
	}
	urls := a.creds.NATSURLs
	if len(a.opts.NATSURLs) > 0 {
		urls = a.opts.NATSURLs
	}
	nc, err := nats.Connect(strings.Join(urls, ","), append(auth,
		nats.Name("flotilla-agent "+a.opts.Name),
		nats.CustomInboxPrefix(protocol.InboxPrefix(a.opts.Name)),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(backoff),
		nats.ReconnectBufSize(8<<20),
		nats.PingInterval(5*time.Second),
		nats.MaxPingsOutstanding(2),
		nats.ConnectHandler(func(nc *nats.Conn) {
			a.log.Info("connected", "url", nc.ConnectedUrlRedacted())
			a.setConnErr(nil)
			a.kickRegister()
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			a.log.Info("reconnected", "url", nc.ConnectedUrlRedacted())
			a.setConnErr(nil)
			a.kickRegister()
		}),
		// Called for every failed attempt, the first connect included
		// (RetryOnFailedConnect): an agent given an address nothing answers
		// on says so at each retry instead of waiting silently.
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			a.log.Warn("cannot reach the controller's NATS; retrying with backoff", "urls", urls, "err", err)
			a.setConnErr(err)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			a.log.Warn("disconnected from controller", "err", err)
			a.setRegistered(false)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { a.log.Warn("NATS error", "err", err) }),
	)...)
	if err != nil {
		return fmt.Errorf("connect to %v: %w", urls, err)
	}
	a.nc = nc
	defer nc.Close()
	defer a.bg.Wait()
	if _, err := nc.Subscribe(protocol.TaskSubject(a.opts.Name), a.onTask); err != nil {
		return fmt.Errorf("subscribe tasks: %w", err)
	}
	if _, err := nc.Subscribe(protocol.CancelSubject(a.opts.Name), a.onCancel); err != nil {
		return fmt.Errorf("subscribe cancels: %w", err)
	}
	if nc.IsConnected() {
		a.kickRegister()
	}
	if err := a.serveMetrics(ctx); err != nil {
		return err
	}
	if a.creds.JWT != "" {
		a.bg.Go(func() { a.runNATSRenewal(ctx) })
	}
	a.bg.Go(func() { a.runPeer(ctx) })
	a.bg.Go(func() { a.runRegistry(ctx) })
	a.writeStatus()
	tick := time.NewTicker(a.opts.HeartbeatInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			a.stopAll()
			a.writeStatus()
			return nil
		case <-a.regKick:
			a.register(ctx)
		case <-tick.C:
			if !a.isRegistered() && nc.IsConnected() {
				a.register(ctx)
			}
			a.heartbeat()
		}
	}
}

// backoff is exponential from 100ms to 5s with ±50% jitter.
func backoff(attempts int) time.Duration {
	d := 100 * time.Millisecond << min(attempts, 6)
	if d > 5*time.Second {
		d = 5 * time.Second
	}
	return d/2 + rand.N(d)
}

func (a *Agent) kickRegister() {
	select {
	case a.regKick <- struct{}{}:
	default:
	}
}

func (a *Agent) register(ctx context.Context) {
	data, _ := protocol.Encode(protocol.Register{Name: a.opts.Name, Facts: a.facts, HeartbeatInterval: a.opts.HeartbeatInterval, PeerURL: a.peerURL()})
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := a.nc.RequestWithContext(rctx, protocol.RegisterSubject(a.opts.Name), data)
	if err != nil {
		a.log.Warn("register", "err", err)
		return
	}
	var r protocol.RegisterReply
	if err := protocol.Decode(m.Data, &r); err != nil || !r.OK {
		a.log.Error("controller refused registration", "err", err, "reason", r.Error)
		return
	}
	a.setRegistered(true)
	a.log.Info("registered")
	a.heartbeat()
}

func (a *Agent) heartbeat() {
	a.mu.Lock()
	running := len(a.running)
	a.mu.Unlock()
	data, _ := protocol.Encode(protocol.Heartbeat{Name: a.opts.Name, Time: time.Now().UTC(), Interval: a.opts.HeartbeatInterval, Running: running})
	if a.nc.IsConnected() {
		if err := a.nc.Publish(protocol.HeartbeatSubject(a.opts.Name), data); err == nil {
			a.metrics.heartbeats.Inc()
			a.mu.Lock()
			a.lastHB = time.Now().UTC()
			a.mu.Unlock()
		}
	}
	a.writeStatus()
}

func (a *Agent) setRegistered(v bool) {
	a.mu.Lock()
	a.registered = v
	a.mu.Unlock()
	a.writeStatus()
}

// setConnErr records why the last connection attempt failed (nil once
// connected), for status.json and `flotilla agent status`.
func (a *Agent) setConnErr(err error) {
	a.mu.Lock()
	if err == nil {
		a.connErr = ""
	} else {
		a.connErr = err.Error()
		a.connErrAt = time.Now().UTC()
	}
	a.mu.Unlock()
	a.writeStatus()
}

func (a *Agent) isRegistered() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.registered
}

func (a *Agent) writeStatus() {
	a.mu.Lock()
	st := Status{Name: a.opts.Name, Registered: a.registered, Controller: strings.Join(a.creds.NATSURLs, ","),
		LastHeartbeat: a.lastHB, Running: len(a.running), HeartbeatInterval: a.opts.HeartbeatInterval, PID: os.Getpid(), Updated: time.Now().UTC(),
		LastError: a.connErr, LastErrorAt: a.connErrAt,
		RegistryListen: a.opts.RegistryListen, Registry: a.registryAddr, RegistryError: a.registryErr, RegistryCA: a.registryCA}
	a.mu.Unlock()
	st.Connected = a.nc != nil && a.nc.IsConnected()
	st.Registered = st.Registered && st.Connected
	data, _ := protocolJSON(st)
	if err := atomicfile.Write(filepath.Join(a.opts.DataDir, fileStatus), data, 0o644); err != nil {
		a.log.Warn("write status", "err", err)
	}
}

func (a *Agent) stopAll() {
	a.mu.Lock()
	for _, cancel := range a.running {
		cancel()
	}
	a.mu.Unlock()
	done := make(chan struct{})
	go func() { a.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		a.log.Warn("tasks still running at shutdown")
	}
}
