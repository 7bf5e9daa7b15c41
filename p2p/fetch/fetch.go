// Package p2p fetches blobs piece by piece from the other agents of the
// cluster (the controller is just the first peer, the seed), verifies every
// piece before it is stored, and keeps the tracker told what this agent
// holds so others fetch from it while it downloads.
package fetch

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/time/rate"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// Options tune a Fetcher. The zero value of every field has a sensible default.
type Options struct {
	// Self is this agent's identity and piece-server address, announced to
	// the tracker. With an empty ID the fetcher only downloads and is not
	// part of the pipeline.
	Self pieces.Peer
	// Client is the mTLS HTTP client for peers (see NewClient). Required.
	Client *http.Client
	// VerifyPeer, if set, checks that the server answering a piece request
	// is the peer the tracker named, before a byte of the piece is read; a
	// peer that fails it is dropped for the blob like one that served a
	// wrong piece.
	VerifyPeer func(peer pieces.Peer, cs *tls.ConnectionState) error
	// Concurrency is how many pieces of one blob are in flight (default 4).
	Concurrency int
	// WaitAhead is how long an upstream peer may hold a request for a piece
	// it has not received yet (default 5s).
	WaitAhead time.Duration
	// StallTimeout is how long a peer may send nothing before its request is
	// abandoned and the piece asked of another peer (default 5s).
	StallTimeout time.Duration
	// PieceTimeout bounds one piece request end to end (default 60s).
	PieceTimeout time.Duration
	// GiveUpAfter fails the fetch when no piece has landed for this long (default 2m).
	GiveUpAfter time.Duration
	// RefreshInterval is how often the tracker is asked for peers (default 1s).
	RefreshInterval time.Duration
	// AnnounceInterval spaces announcements while pieces land (default 250ms);
	// ReannounceInterval refreshes held blobs in Run (default 10s).
	AnnounceInterval, ReannounceInterval time.Duration
	// DownloadLimit caps the bytes per second fetched over all blobs; nil
	// means no cap (see pieces.NewLimiter).
	DownloadLimit *rate.Limiter
	// AllowPeer restricts which peers are asked (nil: all). Returning true only
	// for the seed turns peer-to-peer off.
	AllowPeer func(pieces.Peer) bool
	// Progress, if set, is called after every piece, one call at a time.
	Progress func(Progress)
	Logger   *slog.Logger
}

// Progress reports a fetch for `flotilla apply` to show.
type Progress struct {
	Digest  v1.Hash
	Held    int64   // bytes of the blob held, including pieces from before a restart
	Total   int64   // blob size
	Fetched int64   // bytes fetched by this call
	Rate    float64 // bytes per second fetched by this call, since it started
	Peers   int     // peers known for the blob
	Done    bool    // the blob is complete and verified
}

// Fetcher fetches blobs into a store. One per agent; safe for concurrent use.
type Fetcher struct {
	store   *pieces.Store
	tracker Tracker
	opts    Options
	log     *slog.Logger
	bufs    sync.Map // piece size -> *sync.Pool

	mu   sync.Mutex
	held map[v1.Hash]*pieces.Partial // blobs we announce
}

// New returns a fetcher that stores into store and finds peers through tracker.
func New(store *pieces.Store, tracker Tracker, opts Options) *Fetcher {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	def(&opts.WaitAhead, 5*time.Second)
	def(&opts.StallTimeout, 5*time.Second)
	def(&opts.PieceTimeout, time.Minute)
	def(&opts.GiveUpAfter, 2*time.Minute)
	def(&opts.RefreshInterval, time.Second)
	def(&opts.AnnounceInterval, 250*time.Millisecond)
	def(&opts.ReannounceInterval, 10*time.Second)
	if opts.Client == nil {
		opts.Client = http.DefaultClient
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Fetcher{store: store, tracker: tracker, opts: opts, log: log, held: map[v1.Hash]*pieces.Partial{}}
}

// Seed announces a blob already in the store (the controller's copy) and
// keeps announcing it from Run.
func (f *Fetcher) Seed(ctx context.Context, list pieces.PieceList) error {
	p, err := f.store.Open(list)
	if err != nil {
		return err
	}
	if !p.Complete() {
		return fmt.Errorf("seed %s: the store holds %d of %d pieces, want the whole blob", list.Digest, p.Have().Count(), list.Count())
	}
	f.keep(p)
	return f.announce(ctx, p)
}

// Run re-announces every held blob until ctx ends, so the tracker does not
// expire this agent while it serves.
func (f *Fetcher) Run(ctx context.Context) {
	t := time.NewTicker(f.opts.ReannounceInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f.mu.Lock()
		held := make([]*pieces.Partial, 0, len(f.held))
		for _, p := range f.held {
			held = append(held, p)
		}
		f.mu.Unlock()
		for _, p := range held {
			if err := f.announce(ctx, p); err != nil {
				f.log.Debug("re-announce", "digest", p.List().Digest, "err", err)
			}
		}
	}
}

func (f *Fetcher) keep(p *pieces.Partial) {
	f.mu.Lock()
	f.held[p.List().Digest] = p
	f.mu.Unlock()
}

func (f *Fetcher) announce(ctx context.Context, p *pieces.Partial) error {
	if f.opts.Self.ID == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return f.tracker.Announce(ctx, pieces.Announcement{Peer: f.opts.Self, Digest: p.List().Digest, Have: p.Have(), Complete: p.Complete()})
}

// report tells the tracker, if it takes reports (Reporter), that peer did
// not serve a piece of d it announced. It does not wait: the fetch goes on
// with other peers, and a report happens at most once per peer and fetch.
func (f *Fetcher) report(ctx context.Context, peer pieces.Peer, d v1.Hash, reason string, cause error) {
	rep, ok := f.tracker.(Reporter)
	if !ok {
		return
	}
	f.log.Info("reporting a peer that did not serve what it announced", "digest", d, "peer", peer.ID, "addr", peer.Addr, "reason", reason, "err", cause)
	go func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := rep.Report(ctx, pieces.FailureReport{Peer: peer.ID, Digest: d, Reason: reason}); err != nil {
			f.log.Debug("failure report", "digest", d, "peer", peer.ID, "err", err)
		}
	}()
}

// Fetch gets the blob described by list into the store and returns its
// path. Pieces already in the store (a restart) are kept; a complete blob
// is not fetched again. Every piece is checked against the list before it is
// written and the whole blob against its digest before it counts.
func (f *Fetcher) Fetch(ctx context.Context, list pieces.PieceList) (string, error) {
	p, err := f.store.Open(list)
	if err != nil {
		return "", err
	}
	f.keep(p)
	if p.Complete() {
		if err := f.announce(ctx, p); err != nil {
			f.log.Debug("announce", "digest", list.Digest, "err", err)
		}
		return p.Finish()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	r := &run{f: f, p: p, list: list, start: time.Now(), announceC: make(chan struct{}, 1), wake: make(chan struct{})}
	r.sw = newSwarm(list, p.Have(), f.opts.Self.ID, f.opts.AllowPeer, f.opts.Concurrency)
	r.held = heldBytes(list, r.sw.have)
	r.lastLanded = r.start
	if err := f.announce(ctx, p); err != nil {
		if errors.Is(err, ErrNotTracker) {
			f.log.Error("refusing the tracker", "digest", list.Digest, "err", err)
			return "", fmt.Errorf("fetch %s: %w", list.Digest, err)
		}
		f.log.Warn("announce to tracker failed; fetching without a place in the pipeline", "digest", list.Digest, "err", err)
	}
	r.refresh(ctx, cancel)

	var wg sync.WaitGroup
	wg.Add(2 + f.opts.Concurrency)
	go func() { defer wg.Done(); r.announceLoop(ctx) }()
	go func() { defer wg.Done(); r.refreshLoop(ctx, cancel) }()
	for range f.opts.Concurrency {
		go func() { defer wg.Done(); r.worker(ctx, cancel) }()
	}
	wg.Wait()
	if err := context.Cause(ctx); !errors.Is(err, errComplete) {
		return "", fmt.Errorf("fetch %s: %w", list.Digest, err)
	}
	path, err := p.Finish()
	if err != nil {
		return "", err
	}
	// A fresh context: the fetch's own is cancelled by now.
	actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer acancel()
	if err := f.announce(actx, p); err != nil {
		f.log.Debug("announce", "digest", list.Digest, "err", err)
	}
	r.report(true)
	return path, nil
}

var errComplete = errors.New("all pieces held")

func heldBytes(list pieces.PieceList, have pieces.Bitfield) int64 {
	var n int64
	for i := 0; i < list.Count(); i++ {
		if have.Has(i) {
			n += list.Len(i)
		}
	}
	return n
}
