// Package controller builds flotilla's whole controller from its parts: the
// control plane (controller/plane: embedded NATS + JetStream, node inventory,
// join tokens, signed task dispatch, admin requests, event history), the
// rollout engine (controller/rollout) with its layer blob server, and the
// peer-to-peer seed and tracker (p2p/tracker). It also resumes the
// rollouts a stopped controller left running.
//
// New(Options) builds it, Start and Close (or Run) run it. `flotilla controller`
// only parses flags into Options; tests start a controller in-process through
// the same call.
//
// It must not import agent/ (nodes speak to it only through protocol/) nor
// client/ (admins do the same).
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/flotilla-dev/flotilla/controller/blobserver"

	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/controller/rollout"
	"github.com/flotilla-dev/flotilla/infra"
	"github.com/flotilla-dev/flotilla/p2p/tracker"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of the per-node event history (Options.NodeEvent…).
const (
	DefaultNodeEventRate    = plane.DefaultNodeEventRate
	DefaultNodeEventBurst   = plane.DefaultNodeEventBurst
	DefaultNodeEventHistory = plane.DefaultNodeEventHistory
)

// Options configure a Controller. Zero values take the documented defaults.
type Options struct {
	// DataDir holds the CA, keys, admin credentials, JetStream and the seed's
	// pieces (default plane.DefaultDataDir).
	DataDir string
	// Listen is the NATS (TLS) address (default 0.0.0.0:4222; port 0 picks one).
	Listen string
	// HTTPListen is the HTTPS address of joins, the CA, layer blobs and pieces
	// (default 0.0.0.0:9443; port 0 picks one).
	HTTPListen string
	// Advertise is the host agents reach this controller at (default: the first
	// global unicast IPv4 address, else 127.0.0.1).
	Advertise string
	// ImageStore is the image store directory rollouts resolve images in (default
	// store.DefaultDir()). When it cannot be opened the controller still serves
	// joins, exec and tokens, and rollout requests answer why.
	ImageStore string
	// UnreachableTimeout is how long a rollout retries an offline node before it
	// reports it unreachable and goes on (default 2m).
	UnreachableTimeout time.Duration
	// MaxBackupBytes bounds an uploaded backup (0: protocol.DefaultMaxBackupBytes).
	MaxBackupBytes int64
	// Handlers are more HTTPS handlers (pattern -> handler), such as the
	// bootstrap script and the agent binaries.
	Handlers map[string]http.Handler
	// NodeEventRate, NodeEventBurst and NodeEventHistory bound each node's event
	// history (see plane.Options).
	NodeEventRate, NodeEventBurst, NodeEventHistory int
	// JoinRate, JoinBurst, MaxJoinSources and MaxConcurrentJoins limit joins
	// (see plane.Options).
	JoinRate           float64
	JoinBurst          int
	MaxJoinSources     int
	MaxConcurrentJoins int
	// HTTPReadHeaderTimeout is the time an HTTPS client has for the TLS handshake
	// and its request headers (default httpserve.ReadHeaderTimeout).
	HTTPReadHeaderTimeout time.Duration
	// Metrics is the registry the controller's Prometheus metrics go on (default:
	// one of its own). MetricsListen serves /metrics over plain HTTP ("": off,
	// the default): bind it to loopback or a management network. MetricsPprof
	// adds /debug/pprof/ there.
	Metrics       *prometheus.Registry
	MetricsListen string
	MetricsPprof  bool
	// NATSURLs, NATSCreds, NATSAccountKey, NATSCA and Replicas run the
	// controller on an existing NATS cluster (see plane.Options).
	NATSURLs                  []string
	NATSCreds, NATSAccountKey string
	NATSCA                    string
	Replicas                  int
	// NATSOperatorKey, NATSAccountJWT, NATSSysCreds, NATSUserTTL and
	// NATSAdminTTL: user lifetimes and revocation there (see plane.Options).
	NATSOperatorKey, NATSAccountJWT, NATSSysCreds string
	NATSUserTTL, NATSAdminTTL                     time.Duration
	// HA (with NATSURLs) makes this controller one of two or three against
	// the same NATS cluster: it waits in Start until it holds the leader lease
	// (a KV key with LeaseTTL, default DefaultLeaseTTL, renewed with
	// revision-checked updates), then serves and resumes running rollouts.
	// A standby serves nothing meanwhile. Lost() closes when the lease is lost.
	HA       bool
	LeaseTTL time.Duration
	// Infra makes the machines a Clusterfile's spec.infra asks for, with the
	// providers it names (none: spec.infra is refused with the reason).
	Infra infra.Options
	// Version is this build's version, as `flotilla controller status` shows it.
	Version string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Controller is the whole controller. The control plane's methods (Dispatch,
// Nodes, LocalAgentCredentials, NATSURL, ...) are promoted from plane.Controller.
type Controller struct {
	*plane.Controller
	log      *slog.Logger
	opts     Options
	store    *store.Store       // nil: rollouts are off (storeErr says why)
	storeErr error              // why the image store could not be opened
	blobs    *blobserver.Server // nil with store
	seed     *tracker.Seed      // nil: peer-to-peer is off, layers come from blob URLs
	engine   *rollout.Engine    // set by Start
	cancel   context.CancelFunc // stops the seed's announcements
	lease    *lease             // with Options.HA
}

// New prepares a controller: the data dir, the CA, keys and admin credentials
// (created if missing), the image store, the blob server and the seed. Nothing
// listens before Start.
func New(opts Options) (*Controller, error) {
	if opts.DataDir == "" {
		opts.DataDir = plane.DefaultDataDir
	}
	if opts.ImageStore == "" {
		opts.ImageStore = store.DefaultDir()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.HA && len(opts.NATSURLs) == 0 {
		return nil, &plane.OptionError{Option: "HA", Err: errors.New("high availability needs an existing NATS cluster (NATS URLs) that the controllers share")}
	}
	log := opts.Logger
	// Before the seed creates its dir inside it (a data dir it created would
	// otherwise get its 0755).
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, &plane.OptionError{Option: "DataDir", Err: fmt.Errorf("controller data dir %s: %w", opts.DataDir, err)}
	}
	c := &Controller{log: log, opts: opts}
	handlers := maps.Clone(opts.Handlers)
	if handlers == nil {
		handlers = map[string]http.Handler{}
	}
	if c.store, c.storeErr = store.Open(opts.ImageStore); c.storeErr != nil {
		c.store = nil
		c.storeErr = fmt.Errorf("rollout engine unavailable: image store %s: %w (set %s to a store this user can write)", opts.ImageStore, c.storeErr, store.EnvStore)
		log.Error("rollout engine", "err", c.storeErr)
	} else {
		var err error
		// Like the tracker and the seed: the node's peer certificate and the
		// node in the inventory now, on every fetch, besides the token.
		// c.Controller is set below, before anything listens.
		if c.blobs, err = blobserver.New(opts.DataDir, c.store, blobserver.Options{
			Member: func(node string) bool { return c.Controller.IsMember(node) }, Logger: log}); err != nil {
			return nil, err
		}
		handlers["GET "+blobserver.Path+"{digest}"] = c.blobs
		handlers["PUT "+blobserver.UploadPath+"{id}"] = c.blobs.UploadHandler()
	}
	var agentHandlers map[string]http.Handler
	seedLog := log.With("component", "seed")
	if seed, err := tracker.NewSeed(filepath.Join(opts.DataDir, "seed"), tracker.New(0), seedLog); err != nil {
		log.Error("peer-to-peer distribution off: layers come from the controller alone", "err", err)
	} else {
		c.seed = seed
		// The tracker and the seed's pieces are for agents only: their peer
		// certificate (mutual TLS) and a node in the inventory now, asked on
		// every request. c.Controller is set below, before anything listens.
		agentHandlers = seed.Handlers(tracker.Access{
			Identify: plane.AgentFromRequest,
			Member:   func(node string) bool { return c.Controller.IsMember(node) },
			Log:      seedLog,
		})
	}
	p, err := plane.New(plane.Options{DataDir: opts.DataDir, Listen: opts.Listen, HTTPListen: opts.HTTPListen,
		Advertise: opts.Advertise, Handlers: handlers, AgentHandlers: agentHandlers, Logger: log,
		NodeEventRate: opts.NodeEventRate, NodeEventBurst: opts.NodeEventBurst, NodeEventHistory: opts.NodeEventHistory,
		JoinRate: opts.JoinRate, JoinBurst: opts.JoinBurst, MaxJoinSources: opts.MaxJoinSources,
		MaxConcurrentJoins: opts.MaxConcurrentJoins, HTTPReadHeaderTimeout: opts.HTTPReadHeaderTimeout,
		Metrics: opts.Metrics, MetricsListen: opts.MetricsListen, MetricsPprof: opts.MetricsPprof,
		NATSURLs: opts.NATSURLs, NATSCreds: opts.NATSCreds, NATSAccountKey: opts.NATSAccountKey, NATSCA: opts.NATSCA, Replicas: opts.Replicas,
		NATSOperatorKey: opts.NATSOperatorKey, NATSAccountJWT: opts.NATSAccountJWT, NATSSysCreds: opts.NATSSysCreds,
		NATSUserTTL: opts.NATSUserTTL, NATSAdminTTL: opts.NATSAdminTTL,
		// Admin requests are served once the rollout engine is ready (Start).
		ServeAdminLater: true})
	if err != nil {
		return nil, err
	}
	c.Controller = p
	return c, nil
}

// Start runs the control plane, then the seed and the rollout engine, and
// resumes the rollouts a stopped controller left running. Only then does it
// answer admin requests: a request never reaches a controller (a leader just
// elected, one starting) that cannot serve it yet; it waits for one instead.
// It returns once everything accepts connections.
func (c *Controller) Start(ctx context.Context) error {
	var bg context.Context
	bg, c.cancel = context.WithCancel(context.Background())
	if c.opts.HA {
		l, err := acquireLease(ctx, c.opts, c.log.With("component", "lease"))
		if err != nil {
			return fmt.Errorf("leader lease: %w", err)
		}
		c.lease = l
		// A controller that lost the lease stops answering at once, before
		// the lease can expire on the server and a standby take it.
		l.start(func() { c.Controller.StopAdmin() })
	}
	if err := c.Controller.Start(ctx); err != nil {
		c.Close()
		return err
	}
	c.HandleAdmin(protocol.AdminController, c.adminInfo)
	if c.seed != nil {
		c.seed.SetAddr(c.HTTPURL())
		go c.seed.Run(bg)
	}
	if err := c.startEngine(ctx); err != nil {
		c.Close()
		return err
	}
	if err := c.serveAdmin(); err != nil {
		c.Close()
		return err
	}
	return nil
}

// startEngine starts the rollout engine and resumes the rollouts left running;
// without an image store, the rollout requests answer why.
func (c *Controller) startEngine(ctx context.Context) error {
	if c.store == nil {
		for _, name := range []string{protocol.AdminPlan, protocol.AdminApply, protocol.AdminStatus, protocol.AdminDelete, protocol.AdminAttach,
			protocol.AdminBackup, protocol.AdminBackups, protocol.AdminRestore} {
			c.HandleAdmin(name, func(context.Context, *plane.AdminCall) (any, error) { return nil, c.storeErr })
		}
		return nil
	}
	var decorate func(context.Context, rollout.LayerRequest) error
	if c.seed != nil {
		decorate = rollout.PeerToPeer(c.store, c.seed, c.log.With("component", "seed"))
	}
	var inf rollout.Infra
	if len(c.opts.Infra.Providers) > 0 {
		io := c.opts.Infra
		if io.Logger == nil {
			io.Logger = c.log.With("component", "infra")
		}
		d, err := infra.New(ctx, c.JetStream(), c.Controller, io)
		if err != nil {
			return fmt.Errorf("infrastructure driver: %w", err)
		}
		inf = d
	}
	e, err := rollout.New(c.Controller, c.store, rollout.Options{Blobs: c.blobs, Logger: c.log,
		UnreachableTimeout: c.opts.UnreachableTimeout, DecorateLayer: decorate, Infra: inf, MaxBackupBytes: c.opts.MaxBackupBytes})
	if err != nil {
		return err
	}
	c.engine = e
	e.Register()
	c.log.Info("rollout engine ready", "component", "rollout", "store", c.store.Dir())
	if err := e.Resume(ctx); err != nil {
		c.log.Error("resume interrupted rollouts", "err", err)
	}
	e.StartBackupSchedule()
	return nil
}

// serveAdmin answers admin requests from now on, unless the lease was lost
// meanwhile.
func (c *Controller) serveAdmin() error {
	select {
	case <-c.Lost():
		return ErrLeaseLost
	default:
	}
	if err := c.Controller.ServeAdmin(); err != nil {
		return err
	}
	c.log.Info("serving admin requests", "id", c.id(), "ha", c.opts.HA)
	return nil
}

// id names this controller process in ControllerInfo and the lease.
func (c *Controller) id() string {
	if c.lease != nil {
		return c.lease.id
	}
	return processID(c.opts.Advertise)
}

func processID(advertise string) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), advertise)
}

// adminInfo answers protocol.AdminController: which controller serves, since when.
func (c *Controller) adminInfo(context.Context, *plane.AdminCall) (any, error) {
	info := protocol.ControllerInfo{ID: c.id(), Version: c.opts.Version, HA: c.opts.HA, LeaderSince: c.ServingSince(),
		NATS: c.NATSURL(), HTTPS: c.HTTPURL()}
	if c.lease != nil {
		info.LeaseTTL = c.lease.ttl
	}
	return info, nil
}

// Lost is closed when this controller (Options.HA) lost its leader lease:
// stop it then (a standby leads). Without HA it never closes.
func (c *Controller) Lost() <-chan struct{} {
	if c.lease == nil {
		return nil
	}
	return c.lease.lost
}

// ErrLeaseLost is what Run returns when the leader lease was lost.
var ErrLeaseLost = errors.New("leader lease lost: another controller leads")

// Run starts the controller, serves until ctx ends (or the lease is lost),
// then closes it.
func (c *Controller) Run(ctx context.Context) error {
	if err := c.Start(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return c.Close()
	case <-c.Lost():
		c.Close()
		return ErrLeaseLost
	}
}

// Close stops the rollout engine (running rollouts stay recorded as running and
// resume at the next Start), the seed and the control plane.
func (c *Controller) Close() error {
	if c.Controller != nil {
		c.Controller.StopAdmin()
	}
	if c.engine != nil {
		c.engine.Close()
	}
	err := c.Controller.Close()
	if c.lease != nil {
		c.lease.release()
	}
	if c.cancel != nil {
		c.cancel()
	}
	return err
}
