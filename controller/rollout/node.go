package rollout

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/protocol"
)

// nodeState is what one node's run knows while its task runs.
type nodeState struct {
	mu      sync.Mutex
	applied planner.Applied
	out     *protocol.NodeOutcome
	output  tail
	// layer fetch accounting
	fetched  int64
	fetching time.Duration
}

// runNode carries out one node's plan: a single task, retried while the node is
// offline (up to UnreachableTimeout) or the task was lost (agent gone, task refused;
// up to the Clusterfile's retries). A failing step is not retried. interrupted is
// true when the engine stopped before the node ended.
func (r *rolloutRun) runNode(ctx context.Context, phase string, np *planner.NodePlan) (out protocol.NodeOutcome, interrupted bool) {
	if np.Membership != nil {
		return r.runMember(ctx, phase, np)
	}
	return r.runNodeTask(ctx, phase, np, r.applied[np.Node])
}

// runNodeTask runs the node's own task from its applied state base.
func (r *rolloutRun) runNodeTask(ctx context.Context, phase string, np *planner.NodePlan, base planner.Applied) (out protocol.NodeOutcome, interrupted bool) {
	start := time.Now()
	out = protocol.NodeOutcome{Node: np.Node, Phase: phase, Action: string(np.Action)}
	defer func() { out.Duration = time.Since(start) }()
	ns := &nodeState{applied: cloneApplied(base), out: &out}
	if np.Action != planner.ActionRemove {
		ns.applied.Roles = append([]string(nil), np.Roles...)
	}
	if np.Action == planner.ActionNoop {
		out.Status = protocol.NodeNoop
		r.completeNode(ctx, np, ns)
		return out, false
	}
	nt, err := r.buildTask(ctx, np, ns.applied)
	if err != nil {
		out.Status, out.Error = protocol.NodeFailed, err.Error()
		return out, false
	}
	out.Steps = len(nt.steps)
	r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventNodeStart, Phase: phase, Node: np.Node, Steps: len(nt.steps)})

	rt := r.e.newRetry(np.Node, r.retries())
	for attempt := 1; ; attempt++ {
		res, dispatched, err := r.attempt(ctx, phase, np, nt, ns)
		if dispatched {
			out.Attempts++ // tasks the node accepted
		}
		if ctx.Err() != nil {
			return out, true
		}
		var why string
		switch {
		case err == nil && res.OK:
			out.Status = protocol.NodeOK
			r.completeNode(ctx, np, ns)
			return out, false
		case err == nil && res.Canceled && !res.TimedOut:
			// Not canceled by us (ctx is live): the agent stopped the task itself, as it
			// does when its node shuts down or reboots. Retry it like a lost attempt.
			if !rt.lostAttempt() {
				r.stepFailed(&out, nt, ns, res)
				return out, false
			}
			why = fmt.Sprintf("attempt %d canceled on the node (agent stopped: shutdown or reboot?); retrying", attempt)
		case err == nil:
			r.stepFailed(&out, nt, ns, res)
			return out, false
		case !dispatched && errors.Is(err, plane.ErrNodeOffline):
			var gaveUp error
			if why, gaveUp = rt.offline(err); gaveUp != nil {
				out.Status, out.Error = protocol.NodeUnreachable, gaveUp.Error()
				return out, false
			}
		default:
			if !rt.lostAttempt() {
				out.Status = protocol.NodeFailed
				out.Error = fmt.Sprintf("gave up after %d attempts: %v", out.Attempts, err)
				return out, false
			}
			why = fmt.Sprintf("attempt %d lost: %v; retrying", attempt, err)
		}
		r.e.log.Info("node retry", "cluster", r.plan.Cluster, "node", np.Node, "attempt", attempt, "why", why)
		r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventRetry, Phase: phase, Node: np.Node, Line: why})
		if !rt.wait(ctx) {
			return out, true
		}
	}
}

func (r *rolloutRun) retries() int {
	if n := r.plan.Rollout.Retries; n > 0 {
		return n
	}
	return 0
}

// attempt dispatches the node's task once and waits for its result. dispatched tells
// whether the node accepted it (an error after that means the task was lost).
func (r *rolloutRun) attempt(ctx context.Context, phase string, np *planner.NodePlan, nt *nodeTask, ns *nodeState) (*protocol.TaskResult, bool, error) {
	// Blob tokens are minted for this attempt, to last as long as the node may
	// run it (a retry gets its own).
	expires := time.Now().Add(r.e.opts.TaskTTL)
	steps, err := r.e.mintTokens(np.Node, nt.steps, blobTokenExpiry(expires, nt.steps))
	if err != nil {
		return nil, false, err
	}
	task := &protocol.Task{Node: np.Node, Cluster: r.plan.Cluster, Image: r.plan.ImageDigest, Steps: steps, Expires: expires}
	n := len(nt.steps)
	onEvent := func(ev protocol.Event) {
		base := protocol.RolloutEvent{Phase: phase, Node: np.Node, Step: ev.Step + 1, Steps: n, StepName: ev.StepName}
		switch ev.Type {
		case protocol.EventStepStarted:
			ns.mu.Lock()
			ns.output.reset()
			ns.mu.Unlock()
			base.Type = protocol.RolloutEventStep
		case protocol.EventOutput:
			ns.mu.Lock()
			ns.output.add(ev.Line)
			ns.mu.Unlock()
			base.Type, base.Line = protocol.RolloutEventOutput, ev.Line
		case protocol.EventProgress:
			if ev.Progress == nil {
				return
			}
			base.Type, base.Done, base.Total, base.Line = protocol.RolloutEventProgress, ev.Progress.Done, ev.Progress.Total, ev.Progress.Message
		case protocol.EventStepResult:
			if ev.Result == nil || ev.Step < 0 || ev.Step >= n {
				return
			}
			base.Type = protocol.RolloutEventStepDone
			r.stepDone(ctx, np, nt, ns, ev.Step, ev.Result, &base)
		default:
			return
		}
		r.emit(base)
	}
	registered, stop := r.e.watchRegister(np.Node)
	defer stop()
	run, err := r.e.fleet.Dispatch(ctx, task, onEvent)
	if err != nil {
		return nil, false, err
	}
	res, err := r.e.wait(ctx, run, task, registered)
	return res, true, err
}

// stepDone records a successful (or already applied) step in the node's applied state
// in KV, as it arrives, so a restarted controller knows what was done.
func (r *rolloutRun) stepDone(ctx context.Context, np *planner.NodePlan, nt *nodeTask, ns *nodeState, i int, res *protocol.StepResult, ev *protocol.RolloutEvent) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	r.e.observeStep(nt.steps[i].Kind, res)
	if res.ExitCode != 0 || res.Error != "" {
		ev.Line = res.Error
		return
	}
	if res.Skipped {
		ns.out.Skipped++
		ev.Line = "already applied"
	} else {
		ns.out.Ran++
		if nt.sizes[i] > 0 {
			ns.fetched += nt.sizes[i]
			ns.fetching += res.Duration
		}
	}
	if rec := nt.record[i]; rec != nil {
		rec(&ns.applied)
	}
	if np.Action != planner.ActionRemove {
		// Some of this image's work is on the node now: so is its way out.
		ns.applied.Cleanup = np.Cleanup
		if ms := np.Membership; ms != nil && ms.Record != nil {
			ns.applied.Member = ms.Record
		}
	}
	if err := r.e.state.putApplied(ctx, r.plan.Cluster, np.Node, ns.applied); err != nil {
		r.e.log.Warn("record applied step", "cluster", r.plan.Cluster, "node", np.Node, "step", nt.steps[i].Name, "err", err)
	}
}

// stepFailed fills a failed outcome: which step, its exit code and last output lines.
func (r *rolloutRun) stepFailed(out *protocol.NodeOutcome, nt *nodeTask, ns *nodeState, res *protocol.TaskResult) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	out.Status = protocol.NodeFailed
	out.ExitCode = res.ExitCode
	out.Error = res.Error
	if res.FailedStep >= 0 && res.FailedStep < len(nt.steps) {
		out.FailedStep = nt.steps[res.FailedStep].Name
	}
	switch {
	case res.TimedOut && out.Error == "":
		out.Error = "timed out"
	case res.Canceled && out.Error == "":
		out.Error = "canceled"
	case out.Error == "":
		out.Error = "exit code " + strconv.Itoa(res.ExitCode)
	}
	out.LastOutput = append([]string(nil), ns.output.lines...)
}

// completeNode stores the node's applied state once its plan is done: the image it now
// runs, its roles and only the step digests of this plan; a removed node's is deleted.
func (r *rolloutRun) completeNode(ctx context.Context, np *planner.NodePlan, ns *nodeState) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.fetched > 0 {
		ns.out.Downloaded = ns.fetched
		if ns.fetching > 0 {
			ns.out.Rate = float64(ns.fetched) / ns.fetching.Seconds()
		}
	}
	if np.Action == planner.ActionRemove {
		if ms := np.Membership; ms != nil && len(ms.Leave) > 0 {
			return // forgotten once it left the membership (runMember)
		}
		if err := r.e.state.deleteApplied(ctx, r.plan.Cluster, np.Node); err != nil {
			r.e.log.Warn("forget removed node", "cluster", r.plan.Cluster, "node", np.Node, "err", err)
		}
		return
	}
	prev, known := r.applied[np.Node]
	a := &ns.applied
	a.Image = r.plan.ImageDigest
	keep := a.Steps[:0:0]
	for _, d := range a.Steps {
		if stepInPlan(np, d) {
			keep = append(keep, d)
		}
	}
	a.Steps = keep
	a.Cleanup = np.Cleanup
	if ms := np.Membership; ms != nil && ms.Record != nil {
		a.Member = ms.Record
	}
	if np.Action == planner.ActionNoop && known && prev.Image == a.Image && equalStrings(prev.Roles, a.Roles) && sameCleanup(prev.Cleanup, a.Cleanup) &&
		sameMember(prev.Member, a.Member) {
		return // nothing changed: no write, so a no-op apply stays fast
	}
	if err := r.e.state.putApplied(ctx, r.plan.Cluster, np.Node, *a); err != nil {
		r.e.log.Warn("record applied node", "cluster", r.plan.Cluster, "node", np.Node, "err", err)
	}
}

func stepInPlan(np *planner.NodePlan, digest string) bool {
	for _, s := range np.Steps {
		if s.Digest == digest {
			return true
		}
	}
	return false
}

// dispatchWait sends one task and waits for its result (health checks).
func (e *Engine) dispatchWait(ctx context.Context, t *protocol.Task, onEvent func(protocol.Event)) (*protocol.TaskResult, error) {
	registered, stop := e.watchRegister(t.Node)
	defer stop()
	run, err := e.fleet.Dispatch(ctx, t, onEvent)
	if err != nil {
		return nil, err
	}
	return e.wait(ctx, run, t, registered)
}

// errTaskLost means the node's agent registered again while the task ran: a restarted
// agent forgets the tasks it had, so the task is sent again (the agent skips the steps
// it finished; if it only reconnected, the new task waits for the old one).
var errTaskLost = errors.New("the agent registered again while the task ran (restarted?): the task is lost")

// wait waits for a task's result for at most the sum of its step timeouts plus
// TaskSlack, or until the node registers again. When ctx ends (the engine stops) it
// returns at once and leaves the task running on the node: the resumed rollout's
// agent skips what it finished.
func (e *Engine) wait(ctx context.Context, run TaskRun, t *protocol.Task, registered <-chan struct{}) (*protocol.TaskResult, error) {
	budget := e.opts.TaskSlack
	for _, s := range t.Steps {
		budget += s.Timeout
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), budget)
	type result struct {
		res *protocol.TaskResult
		err error
	}
	ch := make(chan result, 1)
	go func() {
		defer cancel()
		res, err := run.Wait(wctx)
		ch <- result{res, err}
	}()
	select {
	case x := <-ch:
		if x.err == nil && x.res == nil {
			x.err = errors.New("no task result")
		}
		return x.res, x.err
	case <-registered:
		return nil, fmt.Errorf("task %s on %s: %w", t.ID, t.Node, errTaskLost)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func cloneApplied(a planner.Applied) planner.Applied {
	return planner.Applied{Image: a.Image, Roles: append([]string(nil), a.Roles...), Layers: append([]string(nil), a.Layers...),
		Steps: append([]string(nil), a.Steps...), Files: append([]planner.AppliedFile(nil), a.Files...),
		Services: append([]string(nil), a.Services...), Images: append([]planner.AppliedImage(nil), a.Images...), ImagesDigest: a.ImagesDigest,
		Cleanup: append([]planner.Step(nil), a.Cleanup...), Member: cloneMember(a.Member)}
}

func cloneMember(m *planner.MemberRecord) *planner.MemberRecord {
	if m == nil {
		return nil
	}
	c := *m
	c.Peers = slices.Clone(m.Peers)
	c.Leave = slices.Clone(m.Leave)
	return &c
}

// sameMember tells whether two membership records say the same.
func sameMember(a, b *planner.MemberRecord) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Role == b.Role && a.IP == b.IP && a.State == b.State && slices.Equal(a.Peers, b.Peers) &&
		a.Joined == b.Joined && a.Left == b.Left && sameCleanup(a.Leave, b.Leave)
}

// sameCleanup tells whether two recorded CLEANUP lists run the same commands
// with the same env and timeouts.
func sameCleanup(a, b []planner.Step) bool {
	return slices.EqualFunc(a, b, func(x, y planner.Step) bool {
		return x.Command == y.Command && x.Timeout == y.Timeout && maps.Equal(x.Env, y.Env)
	})
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func itoa(n int) string { return strconv.Itoa(n) }
