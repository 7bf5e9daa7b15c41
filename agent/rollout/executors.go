package rollout

import (
	"context"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/flotilla-dev/flotilla/systemd"
)

// Options configure the rollout executors of one agent. The zero value is
// what `flotilla agent` runs with.
type Options struct {
	// Fetch gets the blob of a layer or images step; nil: peer-to-peer through
	// the agent's peer (StepContext.Peer) when the payload has a piece list,
	// else, or when that fails, HTTPS from the controller (see FetchFunc).
	Fetch FetchFunc
	// Units connects to this host's systemd for service steps (nil: systemd.New).
	Units func(ctx context.Context) (UnitManager, error)
	// UnitDirs are where systemd looks for unit files, most specific first
	// (nil: systemd's own list, DefaultUnitDirs).
	UnitDirs []string
	// ProgressEvery is how often a fetch reports progress (0: 250ms).
	ProgressEvery time.Duration
	// StallTimeout ends an HTTPS download that received nothing for that long (0: 60s).
	StallTimeout time.Duration
}

// FetchFunc downloads the blob of a layer step to dst (<DataDir>/blobs/sha256/<hex>.part).
// It may resume from the bytes already at dst, reports sc.Progress(done, total, "fetch")
// and must leave the whole blob at dst when it returns nil. verified says the fetcher
// already checked the whole blob against p.Digest (the peer-to-peer fetch does);
// otherwise the layer executor checks size and sha256. Only then is dst moved into
// the cache (a mismatch deletes dst). Calls for one digest never run at the same time
// within one set of executors.
type FetchFunc func(ctx context.Context, sc *agent.StepContext, p protocol.LayerPayload, dst string) (verified bool, err error)

// UnitManager is what the service steps need of *systemd.Manager.
type UnitManager interface {
	Reload(ctx context.Context) error
	Enable(ctx context.Context, names ...string) error
	Disable(ctx context.Context, names ...string) error
	Start(ctx context.Context, name string, timeout time.Duration) error
	Restart(ctx context.Context, name string, timeout time.Duration) error
	Stop(ctx context.Context, name string, timeout time.Duration) error
	Close()
}

// DefaultUnitDirs are where systemd looks for unit files, most specific first.
func DefaultUnitDirs() []string {
	return []string{"/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"}
}

// Executors returns the executors of the rollout step kinds (layer, file,
// run, service, undo, images, backup, restore), for agent.Options.Executors. They share one
// value holding the options and the locks that keep two steps from fetching
// one blob or rewriting one cluster's records at once: give each agent one
// set (a second set on the same data dir would not see the first one's locks).
func Executors(o Options) map[string]agent.Executor {
	x := newSteps(o)
	return map[string]agent.Executor{
		protocol.KindLayer:   agent.ExecutorFunc(x.layer),
		protocol.KindFile:    agent.ExecutorFunc(x.file),
		protocol.KindRun:     agent.ExecutorFunc(run),
		protocol.KindService: agent.ExecutorFunc(x.service),
		protocol.KindUndo:    agent.ExecutorFunc(x.undo),
		protocol.KindImages:  agent.ExecutorFunc(x.images),
		protocol.KindBackup:  agent.ExecutorFunc(x.backup),
		protocol.KindRestore: agent.ExecutorFunc(x.restore),
	}
}

// steps is the state the rollout executors of one agent share.
type steps struct {
	opts Options
	// records serializes read-modify-write of the cluster records (files.json,
	// services.json, layer records); tasks of one cluster already run one at a time.
	records sync.Mutex
	// blobs keeps two steps (of different clusters) from fetching one blob at once.
	blobs keyedMutex
}

func newSteps(o Options) *steps {
	if o.Units == nil {
		o.Units = connectHostSystemd
	}
	if o.UnitDirs == nil {
		o.UnitDirs = DefaultUnitDirs()
	}
	if o.ProgressEvery <= 0 {
		o.ProgressEvery = 250 * time.Millisecond
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 60 * time.Second
	}
	x := &steps{opts: o}
	if x.opts.Fetch == nil {
		x.opts.Fetch = x.fetchBlob
	}
	return x
}

// connectHostSystemd connects to this host's systemd.
func connectHostSystemd(ctx context.Context) (UnitManager, error) {
	m, err := systemd.New(ctx, systemd.Options{})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// keyedMutex is one mutex per key, kept only while someone holds or waits for it.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*refMutex
}

type refMutex struct {
	sync.Mutex
	refs int
}

// lock locks key and returns its unlock.
func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*refMutex{}
	}
	e := k.m[key]
	if e == nil {
		e = &refMutex{}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.Lock()
	return func() {
		e.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
