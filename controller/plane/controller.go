// Package plane is the controller's control plane: the embedded NATS server with
// JetStream, the node inventory, joins and join tokens, the PKI, signed task
// dispatch, the event history and the admin request routing the CLI talks to.
//
// Use it as a library: New(opts), Start(ctx), then Dispatch tasks to nodes,
// read Nodes, register more admin handlers with HandleAdmin, keep state in your
// own JetStream buckets through JetStream(), and Close when done. Package
// controller assembles it with the rollout engine and the seed into the whole
// controller.
//
// It must not import agent/, client/, the rollout engine or anything that
// knows what a step does: it moves signed tasks and their events.
package plane

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"

	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/controller/natsauth"
	"github.com/flotilla-dev/flotilla/internal/httpserve"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultDataDir is the controller's data dir when Options.DataDir is empty.
const DefaultDataDir = "/var/lib/flotilla"

// Options configure a Controller. Zero values take the documented defaults.
type Options struct {
	// DataDir holds the CA, keys, admin credentials and JetStream (default DefaultDataDir).
	DataDir string
	// Listen is the NATS (TLS) address (default 0.0.0.0:4222; port 0 picks one).
	Listen string
	// HTTPListen is the HTTPS join/bootstrap address (default 0.0.0.0:9443; port 0 picks one).
	HTTPListen string
	// Advertise is the host agents and the one-liner use to reach this controller
	// (default: the first global unicast IPv4 address, else 127.0.0.1).
	Advertise string
	// Handlers are mounted on the HTTPS mux beside /v1/ca.crt and /v1/join (pattern -> handler).
	Handlers map[string]http.Handler
	// AgentHandlers are mounted like Handlers, for agents only: a valid peer
	// certificate of a node in the inventory now (RequireMember).
	AgentHandlers map[string]http.Handler
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// TaskTTL is how long a signed task stays valid for an agent to accept (default 5m).
	TaskTTL time.Duration
	// NodeEventRate and NodeEventBurst bound the events per second each node gets
	// into the event history (default DefaultNodeEventRate, DefaultNodeEventBurst);
	// NodeEventHistory is how many events per node it keeps (default DefaultNodeEventHistory).
	NodeEventRate, NodeEventBurst, NodeEventHistory int
	// NodeRegisterRate and NodeRegisterBurst bound the registrations per second
	// each node gets handled (default DefaultNodeRegisterRate,
	// DefaultNodeRegisterBurst); more are refused without being decoded.
	NodeRegisterRate  float64
	NodeRegisterBurst int
	// JoinRate and JoinBurst limit joins per source address (IPv6: per /64)
	// (default 5 per second, bursts of 20); MaxJoinSources bounds how many
	// source addresses are tracked (default 10000, least recently seen dropped).
	JoinRate       float64
	JoinBurst      int
	MaxJoinSources int
	// MaxConcurrentJoins caps joins in flight; more get 503 at once (default 32).
	MaxConcurrentJoins int
	// HTTPReadHeaderTimeout overrides httpserve.ReadHeaderTimeout (tests).
	HTTPReadHeaderTimeout time.Duration
	// Metrics is the registry the controller's Prometheus metrics go on
	// (default: a registry of its own, see MetricsRegistry).
	Metrics *prometheus.Registry
	// MetricsListen serves /metrics over plain HTTP ("": off, the default);
	// bind it to loopback or a management network. MetricsPprof adds
	// /debug/pprof/ there.
	MetricsListen string
	MetricsPprof  bool

	// NATSURLs, when set, make the controller use an existing NATS cluster
	// (JetStream enabled, decentralized JWT auth) instead of the embedded
	// server: Listen is then unused, and agents and the CLI get these URLs.
	NATSURLs []string
	// NATSCreds is the controller's own user (.creds file, full permissions in
	// flotilla's account); NATSAccountKey is that account's signing key (seed
	// file), with which the controller issues each node and the CLI a user JWT
	// with the same permissions the embedded server gives them. Both are
	// required with NATSURLs (see `flotilla nats-auth init`).
	NATSCreds, NATSAccountKey string
	// NATSCA is a PEM file with the CA of the cluster's TLS certificates, for
	// tls:// URLs (default: the system's roots).
	NATSCA string
	// NATSOperatorKey (an operator signing key's seed file), NATSAccountJWT
	// (flotilla's account JWT the servers preload) and NATSSysCreds (a
	// system account user) let the controller revoke a removed or re-joined
	// node's NATS user on every server at once (see natsusers.go); all three
	// or none. Without them a previous user works until its JWT expires.
	NATSOperatorKey, NATSAccountJWT, NATSSysCreds string
	// NATSUserTTL is the lifetime of node user JWTs, which agents renew at
	// half-life (default DefaultNATSUserTTL); NATSAdminTTL that of
	// admin.creds' JWT, which the controller renews (default DefaultNATSAdminTTL).
	NATSUserTTL, NATSAdminTTL time.Duration
	// Replicas is the JetStream replica count of every stream and KV bucket
	// the controller creates (0: 3 when the cluster has 3 or more servers, else 1).
	Replicas int
	// ServeAdminLater leaves the admin subjects unsubscribed after Start: the
	// owner registers its own handlers (the rollout engine) and then calls
	// ServeAdmin, so that no admin request ever reaches a controller that
	// cannot serve it yet. Without it Start serves them.
	ServeAdminLater bool
}

// Controller is a running control plane.
type Controller struct {
	opts Options
	log  *slog.Logger
	pki  *pki

	ns *server.Server // nil on an existing NATS cluster (Options.NATSURLs)
	nc *nats.Conn
	js jetstream.JetStream
	// issuer signs the users of an existing NATS cluster; natsCA is its CA (or nil).
	issuer   *natsauth.Issuer
	natsCA   []byte
	natsTLS  *tls.Config // for the cluster's tls:// URLs, nil: system roots
	nu       *natsUsers  // node and admin users of an existing cluster
	revoker  *natsauth.Revoker
	replicas int
	http     *httpserve.Server

	natsAddr, httpAddr net.Addr
	internalPass       string
	adminPass          string

	inv      *inventory
	tokens   *tokenStore
	seq      *sequencer
	auth     *authenticator
	conns    connAddrs // source address of each node's NATS connection
	offenses *offenses
	clockLog *offenses // clock-skew warnings, rarer
	events   *eventLog
	regRates *nodeRates // registrations per node
	runsMu   sync.Mutex
	runs     map[string]*TaskRun // in flight, by events subject
	joins    *joinGuard
	// registered tells watchers (the rollout engine) about accepted registrations.
	registered registrations
	joinMu     sync.Mutex // a name's existence check and its admission are one step

	adminMu sync.RWMutex
	admin   map[string]AdminHandler
	signMu  [signStripes]sync.Mutex // by stripe(node): per node order of sequence numbers
	seqMu   sync.Mutex
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closeMu sync.Mutex
	closed  bool
	subs    []*nats.Subscription
	acks    *ackMux
	// adminSub is the admin subjects' subscription while they are served.
	adminSubMu  sync.Mutex
	adminSub    *nats.Subscription
	leaderSince time.Time // when ServeAdmin subscribed; zero while not serving

	reg         *prometheus.Registry
	metrics     *Metrics
	metricsAddr net.Addr
	metricsSrv  *httpserve.Server
}

// New prepares a controller: it creates the data dir, the CA, the server
// certificate, the signing key and the admin credentials if missing. Start runs it.
func New(opts Options) (*Controller, error) {
	if opts.DataDir == "" {
		opts.DataDir = DefaultDataDir
	}
	if opts.Listen == "" {
		opts.Listen = "0.0.0.0:4222"
	}
	if opts.HTTPListen == "" {
		opts.HTTPListen = "0.0.0.0:9443"
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := checkExternal(&opts); err != nil {
		return nil, err
	}
	adv, err := advertiseFor(opts.Listen, opts.HTTPListen, opts.Advertise)
	if err != nil {
		return nil, err
	}
	opts.Advertise = adv
	if opts.TaskTTL <= 0 {
		opts.TaskTTL = 5 * time.Minute
	}
	if opts.NodeEventRate <= 0 {
		opts.NodeEventRate = DefaultNodeEventRate
	}
	if opts.NodeEventBurst <= 0 {
		opts.NodeEventBurst = DefaultNodeEventBurst
	}
	if opts.NodeEventHistory <= 0 {
		opts.NodeEventHistory = DefaultNodeEventHistory
	}
	if opts.NodeRegisterRate <= 0 {
		opts.NodeRegisterRate = DefaultNodeRegisterRate
	}
	if opts.NodeRegisterBurst <= 0 {
		opts.NodeRegisterBurst = DefaultNodeRegisterBurst
	}
	if err := prepareDataDir(opts.DataDir, opts.Logger); err != nil {
		return nil, err
	}
	p, err := loadOrCreatePKI(opts.DataDir, localHosts(opts.Advertise))
	if err != nil {
		return nil, fmt.Errorf("controller PKI in %s: %w", opts.DataDir, err)
	}
	c := &Controller{opts: opts, log: opts.Logger, pki: p, admin: map[string]AdminHandler{}, internalPass: randomSecret(),
		offenses: newOffenses(opts.Logger, 10*time.Second), clockLog: newOffenses(opts.Logger, 10*time.Minute), runs: map[string]*TaskRun{},
		joins: newJoinGuard(opts.JoinRate, opts.JoinBurst, opts.MaxJoinSources, opts.MaxConcurrentJoins)}
	c.events = newEventLog(c)
	c.regRates = newNodeRates(opts.NodeRegisterRate, opts.NodeRegisterBurst)
	c.reg = opts.Metrics
	if c.reg == nil {
		c.reg = prometheus.NewRegistry()
	}
	if c.metrics, err = newMetrics(c, c.reg); err != nil {
		return nil, err
	}
	c.registerBuiltinAdmin()
	c.registerNodeAdmin()
	return c, nil
}

// Start runs the NATS server, opens the JetStream buckets, subscribes to agent
// traffic and serves HTTPS. It returns once everything accepts connections.
func (c *Controller) Start(ctx context.Context) error {
	c.ctx, c.cancel = context.WithCancel(context.Background())
	if err := c.startNATS(); err != nil {
		return err
	}
	if err := c.openState(ctx); err != nil {
		c.Close()
		return err
	}
	if err := c.writeAdminCreds(); err != nil {
		c.Close()
		return err
	}
	if err := c.subscribe(); err != nil {
		c.Close()
		return err
	}
	if err := c.startHTTP(); err != nil {
		c.Close()
		return err
	}
	if err := c.startMetrics(); err != nil {
		c.Close()
		return err
	}
	c.log.Info("controller ready", "nats", c.NATSURL(), "https", c.HTTPURL(), "dataDir", c.opts.DataDir, "caHash", c.CAHash())
	return nil
}

func checkExternal(opts *Options) error {
	if opts.Replicas < 0 || opts.Replicas > 5 {
		return &OptionError{Option: "Replicas", Err: fmt.Errorf("JetStream replicas %d: want 0 (automatic) to 5", opts.Replicas)}
	}
	if len(opts.NATSURLs) == 0 {
		if opts.NATSCreds != "" || opts.NATSAccountKey != "" || opts.NATSCA != "" || opts.NATSOperatorKey != "" || opts.NATSAccountJWT != "" || opts.NATSSysCreds != "" {
			return &OptionError{Option: "NATSURLs", Err: errors.New("NATS credentials, keys or CA given without the URLs of the NATS cluster")}
		}
		if opts.NATSUserTTL != 0 || opts.NATSAdminTTL != 0 {
			return &OptionError{Option: "NATSUserTTL", Err: errors.New("NATS user lifetimes apply to an existing NATS cluster only (give its URLs)")}
		}
		return nil
	}
	if err := checkNATSUsers(opts); err != nil {
		return err
	}
	for _, u := range opts.NATSURLs {
		pu, err := url.Parse(u)
		if err != nil || pu.Host == "" || (pu.Scheme != "nats" && pu.Scheme != "tls") {
			return &OptionError{Option: "NATSURLs", Err: fmt.Errorf("NATS URL %q: want nats://HOST:PORT or tls://HOST:PORT", u)}
		}
		if pu.User != nil {
			return &OptionError{Option: "NATSURLs", Err: fmt.Errorf("NATS URL %q: no user in the URL (give NATS credentials)", pu.Redacted())}
		}
	}
	if opts.NATSCreds == "" {
		return &OptionError{Option: "NATSCreds", Err: errors.New("an existing NATS cluster needs the controller's NATS credentials (.creds file)")}
	}
	if opts.NATSAccountKey == "" {
		return &OptionError{Option: "NATSAccountKey", Err: errors.New("an existing NATS cluster needs the account signing key the controller issues node users with")}
	}
	return nil
}

// connectExternal connects to an existing NATS cluster with the controller's
// credentials and loads the account signing key.
func (c *Controller) connectExternal() error {
	iss, err := natsauth.LoadIssuer(c.opts.NATSAccountKey, c.opts.NATSCreds)
	if err != nil {
		return &OptionError{Option: "NATSAccountKey", Err: err}
	}
	c.issuer = iss
	c.auth = &authenticator{c: c, agents: map[string][]byte{}}
	nopts := []nats.Option{nats.UserCredentials(c.opts.NATSCreds), nats.Name("flotilla-controller"), nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(false), nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { c.log.Warn("disconnected from NATS", "err", err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { c.log.Info("reconnected to NATS", "url", nc.ConnectedUrlRedacted()) })}
	if c.opts.NATSCA != "" {
		if c.natsCA, err = os.ReadFile(c.opts.NATSCA); err != nil {
			return &OptionError{Option: "NATSCA", Err: err}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(c.natsCA) {
			return &OptionError{Option: "NATSCA", Err: fmt.Errorf("%s: no PEM certificate", c.opts.NATSCA)}
		}
		c.natsTLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		nopts = append(nopts, nats.Secure(c.natsTLS))
	}
	nc, err := nats.Connect(strings.Join(c.opts.NATSURLs, ","), nopts...)
	if err != nil {
		return fmt.Errorf("connect to NATS %v: %w", c.opts.NATSURLs, err)
	}
	c.nc = nc
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	c.replicas = c.opts.Replicas
	if c.replicas == 0 {
		c.replicas = 1
		if len(nc.Servers()) >= 3 {
			c.replicas = 3
		}
	}
	c.js = js
	if c.replicas > 1 {
		c.js = replicated{JetStream: js, n: c.replicas}
	}
	c.nu = newNATSUsers(c)
	if c.revoker, err = c.openRevoker(); err != nil {
		return err
	}
	c.nu.revoker = c.revoker
	c.log.Info("using an existing NATS cluster", "url", nc.ConnectedUrlRedacted(), "servers", len(nc.Servers()), "replicas", c.replicas,
		"account", iss.Account(), "userTTL", c.nu.ttl, "adminTTL", c.nu.adminTTL, "revocation", c.revoker != nil)
	return nil
}

// Replicas is the JetStream replica count of the streams and buckets this
// controller creates (through JetStream()).
func (c *Controller) Replicas() int { return max(c.replicas, 1) }

// External reports whether the controller uses an existing NATS cluster.
func (c *Controller) External() bool { return c.issuer != nil }

func (c *Controller) startNATS() error {
	if len(c.opts.NATSURLs) > 0 {
		return c.connectExternal()
	}
	host, portS, err := net.SplitHostPort(c.opts.Listen)
	if err != nil {
		return &OptionError{Option: "Listen", Err: fmt.Errorf("NATS listen address %q: %w", c.opts.Listen, err)}
	}
	port, err := strconv.Atoi(portS)
	if err != nil {
		return &OptionError{Option: "Listen", Err: fmt.Errorf("NATS listen address %q: bad port", c.opts.Listen)}
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	adminCreds, err := c.loadAdminPassword()
	if err != nil {
		return err
	}
	c.adminPass = adminCreds
	c.auth = &authenticator{c: c, agents: map[string][]byte{}}
	sopts := &server.Options{
		ServerName:                 "flotilla",
		Host:                       host,
		Port:                       port,
		JetStream:                  true,
		StoreDir:                   filepath.Join(c.opts.DataDir, "jetstream"),
		TLSConfig:                  &tls.Config{Certificates: []tls.Certificate{c.pki.server}, MinVersion: tls.VersionTLS12},
		TLSTimeout:                 5,
		CustomClientAuthentication: c.auth,
		NoSigs:                     true,
		NoLog:                      true,
		MaxPayload:                 1 << 20,
		PingInterval:               10 * time.Second,
		MaxPingsOut:                3,
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		return fmt.Errorf("embedded NATS: %w", err)
	}
	c.auth.global = ns.GlobalAccount()
	ns.SetLoggerV2(&natsLogger{log: c.log.With("component", "nats")}, false, false, false)
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		ns.Shutdown()
		return fmt.Errorf("embedded NATS on %s did not become ready in 15s (port in use?)", c.opts.Listen)
	}
	c.ns = ns
	c.natsAddr = ns.Addr()
	nc, err := nats.Connect("", nats.InProcessServer(ns), nats.UserInfo(userController, c.internalPass),
		nats.Name("flotilla-controller"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("controller connection to embedded NATS: %w", err)
	}
	c.nc = nc
	if c.js, err = jetstream.New(nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	return nil
}

func (c *Controller) openState(ctx context.Context) error {
	// Long enough for an external cluster to settle (see settle).
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var err error
	if c.inv, err = openInventory(ctx, c.js, c.log); err != nil {
		return err
	}
	if c.tokens, err = openTokens(ctx, c.js); err != nil {
		return err
	}
	if c.seq, err = openSequencer(ctx, c.js); err != nil {
		return err
	}
	for name, hash := range c.inv.secretHashes() {
		c.auth.setAgent(name, hash)
	}
	if _, err = c.js.CreateOrUpdateStream(ctx, c.eventsStreamConfig()); err != nil {
		return fmt.Errorf("events stream: %w", err)
	}
	if c.nu != nil {
		return c.openNATSUsers(ctx)
	}
	return nil
}

func (c *Controller) subscribe() error {
	acks, err := newAckMux(c.nc)
	if err != nil {
		return fmt.Errorf("subscribe to acknowledgements: %w", err)
	}
	c.acks = acks
	// Every subject a node publishes on goes through fromNode (reply subjects
	// outside the node's inbox are dropped); admin subjects only admins reach.
	for subj, h := range map[string]nats.MsgHandler{
		protocol.AllRegister:  c.fromNode(c.onRegister),
		protocol.AllHeartbeat: c.fromNode(c.onHeartbeat),
		protocol.AllEvents:    c.fromNode(c.events.ingest),
	} {
		sub, err := c.nc.Subscribe(subj, h)
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", subj, err)
		}
		c.subs = append(c.subs, sub)
	}
	if !c.opts.ServeAdminLater {
		return c.ServeAdmin()
	}
	return c.nc.Flush()
}

// ServeAdmin subscribes to the admin subjects: from now on this controller
// answers admin requests. Call it once every handler is registered
// (Options.ServeAdminLater); until then a request finds no responder and the
// client waits for one, which is right during a start or a failover.
func (c *Controller) ServeAdmin() error {
	c.adminSubMu.Lock()
	defer c.adminSubMu.Unlock()
	if c.adminSub != nil {
		return nil
	}
	sub, err := c.nc.Subscribe(protocol.AllAdmin, c.onAdmin)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", protocol.AllAdmin, err)
	}
	c.adminSub = sub
	c.leaderSince = time.Now().UTC()
	c.metrics.Leader.Set(1)
	c.metrics.LeaderSince.Set(float64(c.leaderSince.UnixMilli()) / 1000)
	return c.nc.Flush()
}

// ServingSince is when this controller began to serve admin requests (to
// lead), zero while it does not.
func (c *Controller) ServingSince() time.Time {
	c.adminSubMu.Lock()
	defer c.adminSubMu.Unlock()
	return c.leaderSince
}

// StopAdmin unsubscribes from the admin subjects (requests then go to another
// controller, or wait for one); the requests being handled run on. Close
// calls it first; a controller that lost its leader lease calls it at once.
func (c *Controller) StopAdmin() {
	c.adminSubMu.Lock()
	defer c.adminSubMu.Unlock()
	if c.adminSub == nil {
		return
	}
	if err := c.adminSub.Unsubscribe(); err != nil {
		c.log.Warn("unsubscribe from admin requests", "err", err)
	}
	c.adminSub = nil
	c.leaderSince = time.Time{}
	c.metrics.Leader.Set(0)
	c.metrics.LeaderSince.Set(0)
	if c.nc != nil {
		_ = c.nc.Flush()
	}
}

// Close stops HTTPS, NATS and every background goroutine.
func (c *Controller) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	if c.nc != nil {
		c.StopAdmin()
	}
	if c.cancel != nil {
		c.cancel()
	}
	if c.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = c.http.Shutdown(ctx)
		cancel()
	}
	if c.metricsSrv != nil {
		_ = c.metricsSrv.Close()
	}
	if c.nc != nil {
		_ = c.nc.Drain()
		c.nc.Close()
	}
	c.wg.Wait()
	if c.revoker != nil {
		c.revoker.Close()
	}
	if c.ns != nil {
		c.ns.Shutdown()
		c.ns.WaitForShutdown()
	}
	return nil
}

// Conn is the controller's own NATS connection (full permissions).
func (c *Controller) Conn() *nats.Conn { return c.nc }

// JetStream is the controller's JetStream context; other components keep their
// state in their own buckets (name them flotilla_<component>_…).
func (c *Controller) JetStream() jetstream.JetStream { return c.js }

// NATSURL is the URL agents and the CLI use: tls://ADVERTISE:PORT.
func (c *Controller) NATSURL() string {
	if len(c.opts.NATSURLs) > 0 {
		return strings.Join(c.opts.NATSURLs, ",")
	}
	return "tls://" + net.JoinHostPort(c.opts.Advertise, strconv.Itoa(addrPort(c.natsAddr)))
}

// HTTPURL is the HTTPS base: https://ADVERTISE:PORT.
func (c *Controller) HTTPURL() string {
	return "https://" + net.JoinHostPort(c.opts.Advertise, strconv.Itoa(addrPort(c.httpAddr)))
}

// CAPEM is the CA certificate exactly as served at /v1/ca.crt.
func (c *Controller) CAPEM() []byte { return c.pki.caPEM }

// CAHash is protocol.CAHash(CAPEM()): the --ca-hash value of the one-liner.
func (c *Controller) CAHash() string { return protocol.CAHash(c.pki.caPEM) }

// SigningKey is the public half of the task-signing key.
func (c *Controller) SigningKey() ed25519.PublicKey {
	return c.pki.signing.Public().(ed25519.PublicKey)
}

// AdminCredsPath is where the admin credential file lives.
func (c *Controller) AdminCredsPath() string { return filepath.Join(c.opts.DataDir, FileAdminCreds) }

func addrPort(a net.Addr) int {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.Port
	}
	return 0
}

func randomSecret() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

var errClosed = errors.New("controller closed")

// OptionError says which Options field is wrong; the CLI names its flag.
type OptionError struct {
	Option string // the Options field, e.g. "Listen"
	Err    error
}

func (e *OptionError) Error() string { return e.Err.Error() }
func (e *OptionError) Unwrap() error { return e.Err }

// OptionName is the Options field the error is about.
func (e *OptionError) OptionName() string { return e.Option }

// natsLogger forwards the embedded server's warnings and errors to slog.
type natsLogger struct{ log *slog.Logger }

func (l *natsLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Errorf(format string, v ...any)  { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Tracef(format string, v ...any)  {}
