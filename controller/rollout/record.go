package rollout

import (
	"context"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
)

// recordInterval bounds how often node outcomes rewrite the rollout record in
// KV. The record holds every node's outcome: rewritten for each node as it
// ended, a rollout to N nodes wrote N records of up to N outcomes (O(N²):
// 2,000 nodes meant 2,000 writes of up to 400 KiB, and a record past NATS's
// 1 MiB payload at about 5,000 nodes). What resume relies on so that no step
// runs twice, the applied state, is still written per step as results arrive;
// a controller killed between two record writes only lacks the outcomes of
// the last recordInterval, and resuming finds those nodes' steps applied.
const recordInterval = 250 * time.Millisecond

// recordWriter serialises and coalesces one rollout's record writes.
type recordWriter struct {
	mu     sync.Mutex
	last   time.Time
	timer  *time.Timer
	closed bool
}

// saveRecord writes the rollout record now, or within recordInterval of the
// last write when one was that recent.
func (r *rolloutRun) saveRecord(ctx context.Context) {
	w := &r.rw
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	if wait := recordInterval - time.Since(w.last); wait > 0 {
		if w.timer == nil {
			w.timer = time.AfterFunc(wait, func() {
				w.mu.Lock()
				defer w.mu.Unlock()
				w.timer = nil
				if !w.closed {
					r.writeRecordLocked(ctx)
				}
			})
		}
		return
	}
	r.writeRecordLocked(ctx)
}

// writeRecord writes the rollout record now (a phase starts).
func (r *rolloutRun) writeRecord(ctx context.Context) {
	r.rw.mu.Lock()
	defer r.rw.mu.Unlock()
	if !r.rw.closed {
		r.writeRecordLocked(ctx)
	}
}

func (r *rolloutRun) writeRecordLocked(ctx context.Context) {
	r.rw.last = time.Now()
	r.mu.Lock()
	r.rec.Outcomes = r.ordered()
	rec := *r.rec
	r.mu.Unlock()
	if err := r.e.state.putRollout(ctx, &rec); err != nil {
		r.e.log.Warn("record rollout", "cluster", rec.Cluster, "phase", rec.Phase, "err", err)
	}
}

// closeRecord stops coalesced writes (waiting for one in flight) before the
// final record is written.
func (r *rolloutRun) closeRecord() {
	r.rw.mu.Lock()
	defer r.rw.mu.Unlock()
	r.rw.closed = true
	if r.rw.timer != nil {
		r.rw.timer.Stop()
		r.rw.timer = nil
	}
}

// observeRollout counts a finished rollout and its nodes in the controller's metrics.
func (e *Engine) observeRollout(kind, state string, d time.Duration, nodes []protocol.NodeOutcome) {
	m := e.ctrl.Metrics()
	if m == nil {
		return
	}
	m.Rollouts.WithLabelValues(kind, state).Inc()
	m.RolloutDuration.WithLabelValues(kind, state).Observe(d.Seconds())
	for _, o := range nodes {
		m.NodeOutcomes.WithLabelValues(o.Status).Inc()
	}
}

// observeStep counts one step result by kind and outcome.
func (e *Engine) observeStep(kind string, res *protocol.StepResult) {
	m := e.ctrl.Metrics()
	if m == nil {
		return
	}
	outcome := "ok"
	switch {
	case res.ExitCode != 0 || res.Error != "":
		outcome = "failed"
	case res.Skipped:
		outcome = "skipped"
	}
	m.Steps.WithLabelValues(kind, outcome).Inc()
	m.StepDuration.WithLabelValues(kind, outcome).Observe(res.Duration.Seconds())
}
