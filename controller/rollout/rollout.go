// Package rollout is the controller's rollout engine: it turns an applied Clusterfile
// into per-node tasks run phase by phase (master0, masters, nodes, custom roles, then
// the removal of nodes that left), keeps the desired and applied state in JetStream
// KV so a restarted controller resumes an interrupted rollout, serves layer blobs to
// agents over HTTPS, and answers the rollout.plan/apply/status/delete admin requests.
//
// It builds on controller/plane (dispatch, admin routing, JetStream) and is built by
// package controller; it must not import controller (the assembly), agent/ or client/.
package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/controller/blobserver"

	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Fleet is what the engine needs from the control plane: the inventory and task
// dispatch. The controller is the real one; unit tests give a fake.
type Fleet interface {
	Nodes(ctx context.Context) ([]protocol.NodeInfo, error)
	// Dispatch sends a task; an error wrapping plane.ErrNodeOffline means the
	// node is not connected (retried until Options.UnreachableTimeout).
	Dispatch(ctx context.Context, t *protocol.Task, onEvent func(protocol.Event)) (TaskRun, error)
}

// TaskRun follows one dispatched task (plane.TaskRun).
type TaskRun interface {
	// Wait returns the task's result, or an error when the node went away before it.
	Wait(ctx context.Context) (*protocol.TaskResult, error)
}

// LayerRequest is a layer step being built, for Options.DecorateLayer.
type LayerRequest struct {
	Cluster *clusterfile.Cluster
	Node    string
	Payload *protocol.LayerPayload
}

// DefaultTaskTTL is Options.TaskTTL's default, the control plane's default
// task expiry: the time a node has to accept a task it was sent.
const DefaultTaskTTL = 5 * time.Minute

// Options tune an Engine. Zero values take the documented defaults.
type Options struct {
	// DataDir holds the blob token key (default: the controller's data dir); unused
	// when Blobs is set.
	DataDir string
	// Blobs is the layer blob server mounted on the controller's HTTPS server; the
	// engine signs the tokens it checks (default: one made from DataDir's key).
	Blobs *blobserver.Server
	// Fleet defaults to the controller.
	Fleet Fleet
	// UnreachableTimeout is how long a node may stay offline before it is reported
	// unreachable (default 2m).
	UnreachableTimeout time.Duration
	// RetryBackoff is the first wait before a retry; it doubles up to MaxBackoff
	// (defaults 1s and 10s).
	RetryBackoff, MaxBackoff time.Duration
	// TaskSlack is added to the sum of a task's step timeouts to bound the wait for its
	// result (default 2m).
	TaskSlack time.Duration
	// TaskTTL is how long a node has to accept a rollout task: the task's
	// signed expiry (default DefaultTaskTTL). The blob tokens in a task are
	// minted for each attempt and last only as long as the node may run it
	// (see blobTokenExpiry).
	TaskTTL time.Duration
	// BaseURL is the controller's HTTPS address in blob URLs (default ctrl.HTTPURL()).
	BaseURL string
	// DecorateLayer, if set, completes each layer step's payload before dispatch (for
	// peer-to-peer: Pieces, MaxDownload, MaxUpload). An error fails the rollout's start.
	DecorateLayer func(ctx context.Context, req LayerRequest) error
	// MaxImagePieceBytes bounds the piece lists of one images step (default
	// DefaultMaxImagePieceBytes); blobs past it are fetched from the controller alone.
	MaxImagePieceBytes int
	// Infra, if set, makes the machines of spec.infra before an apply is planned
	// and destroys those no longer wanted after a rollout (see Infra).
	Infra Infra
	// MaxBackupBytes bounds a backup's size (default protocol.DefaultMaxBackupBytes).
	MaxBackupBytes int64
	// BackupTick is how often scheduled backups (spec.backup) are checked (default 1m);
	// Now is the clock of their schedule and of backup times (default time.Now).
	BackupTick time.Duration
	Now        func() time.Time
	Logger     *slog.Logger
}

// Engine runs rollouts. Create it after the controller started.
type Engine struct {
	ctrl  *plane.Controller
	store *store.Store
	opts  Options
	fleet Fleet
	state *state
	blobs *blobserver.Server
	log   *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	active map[string]*active // by cluster

	// watchers are told when a node registers again while one of its tasks runs: an
	// agent that restarted lost the task (it may come back before its heartbeats are
	// missed, so Wait alone would not notice).
	watchMu      sync.Mutex
	watchers     map[string]map[int]chan struct{}
	watchNext    int
	stopRegWatch func()

	// schedMu guards failures: the last failed scheduled backup per cluster (schedule.go).
	schedMu  sync.Mutex
	failures map[string]protocol.BackupFailure
	// backupFn makes a scheduled backup (nil: Backup); unit tests set it.
	backupFn func(ctx context.Context, req protocol.BackupRequest, send func(protocol.RolloutEvent)) (*protocol.BackupResult, error)
}

// New opens the engine's state in the controller's JetStream and its blob token key.
// st is the image store images are resolved in.
func New(ctrl *plane.Controller, st *store.Store, opts Options) (*Engine, error) {
	if ctrl == nil || st == nil {
		return nil, errors.New("rollout engine: needs a started controller and an image store")
	}
	if opts.DataDir == "" {
		opts.DataDir = filepath.Dir(ctrl.AdminCredsPath())
	}
	if opts.Fleet == nil {
		opts.Fleet = controllerFleet{ctrl}
	}
	if opts.UnreachableTimeout <= 0 {
		opts.UnreachableTimeout = 2 * time.Minute
	}
	if opts.RetryBackoff <= 0 {
		opts.RetryBackoff = time.Second
	}
	if opts.MaxBackoff < opts.RetryBackoff {
		opts.MaxBackoff = max(10*time.Second, opts.RetryBackoff)
	}
	if opts.TaskSlack <= 0 {
		opts.TaskSlack = 2 * time.Minute
	}
	if opts.TaskTTL <= 0 {
		opts.TaskTTL = DefaultTaskTTL
	}
	if opts.MaxImagePieceBytes <= 0 {
		opts.MaxImagePieceBytes = DefaultMaxImagePieceBytes
	}
	if opts.MaxBackupBytes <= 0 {
		opts.MaxBackupBytes = protocol.DefaultMaxBackupBytes
	}
	if opts.BackupTick <= 0 {
		opts.BackupTick = time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	js := ctrl.JetStream()
	if js == nil {
		return nil, errors.New("rollout engine: the controller is not started")
	}
	e := &Engine{ctrl: ctrl, store: st, opts: opts, fleet: opts.Fleet, log: opts.Logger.With("component", "rollout"),
		active: map[string]*active{}, watchers: map[string]map[int]chan struct{}{}, failures: map[string]protocol.BackupFailure{}}
	var err error
	if e.blobs = opts.Blobs; e.blobs == nil {
		if e.blobs, err = blobserver.New(opts.DataDir, st, blobserver.Options{Member: ctrl.IsMember, Logger: opts.Logger}); err != nil {
			return nil, err
		}
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	if e.state, err = openState(e.ctx, js); err != nil {
		e.cancel()
		return nil, err
	}
	// Registrations the controller accepted (validated, stored), never the raw
	// subject: a refused or spoofed registration does not wake a rollout.
	e.stopRegWatch = ctrl.OnRegistered(e.nodeRegistered)
	return e, nil
}

// watchRegister returns a channel closed when node registers again.
func (e *Engine) watchRegister(node string) (<-chan struct{}, func()) {
	e.watchMu.Lock()
	defer e.watchMu.Unlock()
	ch := make(chan struct{})
	id := e.watchNext
	e.watchNext++
	if e.watchers[node] == nil {
		e.watchers[node] = map[int]chan struct{}{}
	}
	e.watchers[node][id] = ch
	return ch, func() {
		e.watchMu.Lock()
		defer e.watchMu.Unlock()
		delete(e.watchers[node], id)
	}
}

func (e *Engine) nodeRegistered(node string) {
	e.watchMu.Lock()
	defer e.watchMu.Unlock()
	for id, ch := range e.watchers[node] {
		close(ch)
		delete(e.watchers[node], id)
	}
}

// Register adds the rollout admin handlers (rollout.plan, apply, status, delete).
func (e *Engine) Register() {
	e.ctrl.HandleAdmin(protocol.AdminPlan, e.adminPlan)
	e.ctrl.HandleAdmin(protocol.AdminApply, e.adminApply)
	e.ctrl.HandleAdmin(protocol.AdminStatus, e.adminStatus)
	e.ctrl.HandleAdmin(protocol.AdminDelete, e.adminDelete)
	e.ctrl.HandleAdmin(protocol.AdminAttach, e.adminAttach)
	e.ctrl.HandleAdmin(protocol.AdminBackup, e.adminBackup)
	e.ctrl.HandleAdmin(protocol.AdminBackups, e.adminBackups)
	e.ctrl.HandleAdmin(protocol.AdminRestore, e.adminRestore)
}

// BlobHandler serves GET /v1/blobs/{digest}: Options.Blobs, or the server New made.
func (e *Engine) BlobHandler() http.Handler { return e.blobs }

// Close stops running rollouts without recording an end: they stay "running" in KV
// and the next engine's Resume continues them.
func (e *Engine) Close() {
	e.cancel()
	if e.stopRegWatch != nil {
		e.stopRegWatch()
	}
	e.wg.Wait()
}

// Resume restarts every rollout recorded as running (a controller that stopped in the
// middle of one). It returns once they started.
func (e *Engine) Resume(ctx context.Context) error {
	names, err := e.state.clusterNames(ctx)
	if err != nil {
		return err
	}
	rnames, err := keys(ctx, e.state.rollouts)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	var errs []error
	for _, name := range append(names, rnames...) {
		if seen[name] {
			continue
		}
		seen[name] = true
		rec, err := e.state.rollout(ctx, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if rec == nil || rec.State != StateRunning {
			continue
		}
		if rec.Kind == KindRestore {
			if err := e.resumeRestore(ctx, rec); err != nil {
				e.log.Error("resume restore", "cluster", name, "rollout", rec.ID, "err", err)
				errs = append(errs, fmt.Errorf("resume restore %s of cluster %s: %w", rec.ID, name, err))
			}
			continue
		}
		if _, err := e.resume(ctx, rec); err != nil {
			e.log.Error("resume rollout", "cluster", name, "rollout", rec.ID, "err", err)
			errs = append(errs, fmt.Errorf("resume rollout %s of cluster %s: %w", rec.ID, name, err))
		}
	}
	return errors.Join(errs...)
}

// controllerFleet is the real Fleet.
type controllerFleet struct{ c *plane.Controller }

func (f controllerFleet) Nodes(ctx context.Context) ([]protocol.NodeInfo, error) {
	return f.c.Nodes(ctx)
}

func (f controllerFleet) Dispatch(ctx context.Context, t *protocol.Task, onEvent func(protocol.Event)) (TaskRun, error) {
	if n, ok := f.c.Node(t.Node); ok && !n.Online {
		return nil, fmt.Errorf("%w: %s (no heartbeat)", plane.ErrNodeOffline, t.Node)
	}
	r, err := f.c.Dispatch(ctx, t, onEvent)
	if err != nil {
		return nil, err
	}
	return r, nil
}
