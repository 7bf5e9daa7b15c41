package fetch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// run is one Fetch call in progress.
type run struct {
	f    *Fetcher
	p    *pieces.Partial
	list pieces.PieceList

	mu         sync.Mutex
	sw         *swarm
	wake       chan struct{} // closed and replaced when a worker may find work
	start      time.Time
	lastLanded time.Time
	held       int64
	fetched    int64

	progressMu sync.Mutex
	announceC  chan struct{}
}

func (r *run) wakeLocked() {
	close(r.wake)
	r.wake = make(chan struct{})
}

func (r *run) worker(ctx context.Context, cancel context.CancelCauseFunc) {
	for {
		r.mu.Lock()
		if r.sw.done() {
			r.mu.Unlock()
			cancel(errComplete)
			return
		}
		j, ok := r.sw.next(time.Now())
		wake := r.wake
		r.mu.Unlock()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-wake:
			case <-time.After(200 * time.Millisecond): // suspensions expire
			}
			continue
		}
		data, release, err := r.f.getPiece(ctx, j.from, r.list, j.piece, j.ahead)
		if err == nil {
			err = r.p.WritePiece(j.piece, data) // verifies before writing
			release()
			if err != nil && !errors.Is(err, pieces.ErrPieceMismatch) {
				cancel(err) // the disk, not the peer
			}
		}
		if ctx.Err() != nil && !errors.Is(err, pieces.ErrPieceMismatch) && err != nil {
			r.mu.Lock()
			r.sw.result(j, errCancelled, time.Now())
			r.mu.Unlock()
			return
		}
		now := time.Now()
		r.mu.Lock()
		dropped, report := r.sw.result(j, err, now)
		if err == nil {
			r.lastLanded = now
			r.held += r.list.Len(j.piece)
			r.fetched += r.list.Len(j.piece)
		}
		r.wakeLocked()
		r.mu.Unlock()
		if report != "" {
			r.f.report(ctx, j.from, r.list.Digest, report, err)
		}
		switch {
		case dropped:
			r.f.log.Warn("dropped peer for this blob: a wrong piece, or not the peer the tracker named", "digest", r.list.Digest, "peer", j.from.ID, "addr", j.from.Addr, "err", err)
		case err != nil:
			r.f.log.Debug("piece failed; asking another peer", "digest", r.list.Digest, "piece", j.piece, "peer", j.from.ID, "err", err)
		default:
			select {
			case r.announceC <- struct{}{}:
			default:
			}
			r.report(false)
		}
	}
}

var errCancelled = errors.New("fetch cancelled")

// refreshLoop asks the tracker for peers and fails the fetch when nothing
// has landed for GiveUpAfter.
func (r *run) refreshLoop(ctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(r.f.opts.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.refresh(ctx, cancel)
		r.mu.Lock()
		idle := time.Since(r.lastLanded)
		status := r.peerStatusLocked()
		r.mu.Unlock()
		if idle > r.f.opts.GiveUpAfter {
			cancel(fmt.Errorf("no piece landed for %v (%d of %d held); peers: %s", idle.Round(time.Second), r.p.Have().Count(), r.list.Count(), status))
			return
		}
	}
}

func (r *run) refresh(ctx context.Context, cancel context.CancelCauseFunc) {
	ctx, c := context.WithTimeout(ctx, 5*time.Second)
	defer c()
	states, err := r.f.tracker.Peers(ctx, r.list.Digest)
	if errors.Is(err, ErrNotTracker) {
		r.f.log.Error("refusing the tracker", "digest", r.list.Digest, "err", err)
		cancel(err)
		return
	}
	if err != nil {
		// The controller may be gone after seeding: carry on with the peers we know.
		r.f.log.Debug("tracker refresh failed; keeping the known peers", "digest", r.list.Digest, "err", err)
		return
	}
	r.mu.Lock()
	r.sw.setPeers(states)
	r.wakeLocked()
	r.mu.Unlock()
}

func (r *run) peerStatusLocked() string {
	if len(r.sw.peers) == 0 {
		return "none known (is the tracker reachable?)"
	}
	var b strings.Builder
	for i, p := range r.sw.peers {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s (%d pieces", p.ID, p.Have.Count())
		switch {
		case p.dropped:
			b.WriteString(", dropped")
		case p.failures > 0:
			fmt.Fprintf(&b, ", %d failures", p.failures)
		}
		if p.lastReason != "" {
			fmt.Fprintf(&b, ": %s", p.lastReason)
		}
		b.WriteString(")")
	}
	return b.String()
}

func (r *run) announceLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.announceC:
		}
		if err := r.f.announce(ctx, r.p); err != nil && ctx.Err() == nil {
			r.f.log.Debug("announce", "digest", r.list.Digest, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(r.f.opts.AnnounceInterval):
		}
	}
}

func (r *run) report(done bool) {
	if r.f.opts.Progress == nil {
		return
	}
	r.mu.Lock()
	pr := Progress{Digest: r.list.Digest, Held: r.held, Total: r.list.Size, Fetched: r.fetched, Peers: len(r.sw.peers), Done: done}
	if el := time.Since(r.start).Seconds(); el > 0 {
		pr.Rate = float64(r.fetched) / el
	}
	r.mu.Unlock()
	r.progressMu.Lock()
	defer r.progressMu.Unlock()
	r.f.opts.Progress(pr)
}
