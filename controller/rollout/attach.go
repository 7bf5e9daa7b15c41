package rollout

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/protocol"
)

// attachResumeWait is how long an attach waits for a rollout that KV says is
// running but that this controller has not resumed yet (it just started).
const attachResumeWait = 30 * time.Second

// adminAttach streams the events of the cluster's running rollout to the caller
// and returns its result, like the apply that started it. A rollout that ended
// is answered with its stored outcome at once.
func (e *Engine) adminAttach(ctx context.Context, call *plane.AdminCall) (any, error) {
	var req protocol.AttachRequest
	if err := call.Decode(&req); err != nil {
		return nil, err
	}
	if req.Cluster == "" {
		return nil, fmt.Errorf("attach: no cluster named")
	}
	var sendMu sync.Mutex
	send := func(ev protocol.RolloutEvent) {
		sendMu.Lock()
		defer sendMu.Unlock()
		if err := call.Send(ev); err != nil {
			e.log.Debug("stream rollout event", "err", err)
		}
	}
	wait := time.NewTimer(attachResumeWait)
	defer wait.Stop()
	for {
		e.mu.Lock()
		act := e.active[req.Cluster]
		stop := func() {}
		if act != nil {
			stop = act.listen(send)
		}
		e.mu.Unlock()
		if act != nil {
			defer stop()
			select {
			case <-act.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("controller stopping: rollout %s of %s goes on when it starts again", act.rec.ID, req.Cluster)
			}
			if act.result == nil {
				return nil, fmt.Errorf("rollout %s of %s was interrupted (controller stopping); it resumes when the controller starts again", act.rec.ID, req.Cluster)
			}
			return act.result, nil
		}
		rec, err := e.state.rollout(ctx, req.Cluster)
		if err != nil {
			return nil, fmt.Errorf("attach to %s: %w", req.Cluster, err)
		}
		if rec == nil {
			return nil, fmt.Errorf("cluster %s has no rollout (flotilla status lists the clusters)", req.Cluster)
		}
		if rec.State != StateRunning {
			return recordResult(rec), nil
		}
		// Stored as running but not active here: this controller is resuming it.
		select {
		case <-wait.C:
			return nil, fmt.Errorf("rollout %s of %s is stored as running but this controller has not resumed it after %s: see its log", rec.ID, req.Cluster, attachResumeWait)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// recordResult is the result of a finished rollout as its record stored it.
func recordResult(rec *Record) *protocol.ApplyResult {
	res := &protocol.ApplyResult{Rollout: rec.ID, Cluster: rec.Cluster, Image: rec.Image, ImageDigest: rec.ImageDigest,
		OK: rec.State == StateDone, Halted: rec.State == StateHalted, Resumed: rec.Resumes > 0,
		Nodes: append([]protocol.NodeOutcome{}, rec.Outcomes...), Health: rec.Health}
	if !rec.Finished.IsZero() {
		res.Duration = rec.Finished.Sub(rec.Started)
	}
	return res
}
