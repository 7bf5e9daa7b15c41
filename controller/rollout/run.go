package rollout

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/protocol"
)

// active is a rollout running in this engine; apply requests of the same Clusterfile
// attach to it.
type active struct {
	rec         *Record
	clusterfile []byte

	mu        sync.Mutex
	listeners map[int]func(protocol.RolloutEvent)
	nextID    int
	done      chan struct{}
	result    *protocol.ApplyResult
}

func (a *active) listen(f func(protocol.RolloutEvent)) (stop func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id := a.nextID
	a.nextID++
	a.listeners[id] = f
	return func() {
		a.mu.Lock()
		delete(a.listeners, id)
		a.mu.Unlock()
	}
}

func (a *active) emit(ev protocol.RolloutEvent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, f := range a.listeners {
		f(ev)
	}
}

// rolloutRun is one rollout being carried out.
type rolloutRun struct {
	e       *Engine
	act     *active
	rec     *Record // guarded by mu once running
	cf      *clusterfile.File
	plan    *planner.ClusterPlan
	applied map[string]planner.Applied // at plan time
	prev    map[string]protocol.NodeOutcome

	// memberMu makes membership changes of quorum roles, and members leaving, one
	// at a time (members.go).
	memberMu sync.Mutex

	mu        sync.Mutex
	halted    bool
	outcomes  map[string]protocol.NodeOutcome
	rw        recordWriter
	health    string
	unhealthy bool
}

// run carries out the plan, phase after phase, and returns its result; nil when the
// engine stopped in the middle (the record stays running, to be resumed).
func (r *rolloutRun) run(ctx context.Context) *protocol.ApplyResult {
	start := time.Now()
	r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventStart, Line: r.rec.Kind + " " + r.plan.Image})
	if err := r.recordFounders(ctx); err != nil {
		r.mu.Lock()
		r.halted, r.unhealthy = true, true
		r.health = err.Error()
		r.rec.Health = r.health
		r.mu.Unlock()
	}
	for _, ph := range r.plan.Phases {
		if r.isHalted() {
			r.notStarted(ph)
			continue
		}
		r.startPhase(ctx, ph)
		r.runPhase(ctx, ph)
		if ctx.Err() != nil {
			return nil
		}
		r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventPhaseDone, Phase: ph.Name})
		r.healthCheck(ctx, ph)
	}
	return r.finish(ctx, time.Since(start))
}

func (r *rolloutRun) startPhase(ctx context.Context, ph planner.Phase) {
	r.mu.Lock()
	r.rec.Phase = ph.Name
	r.mu.Unlock()
	r.writeRecord(ctx)
	r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventPhase, Phase: ph.Name})
}

// runPhase runs the phase's nodes, at most Parallelism at once, and returns when all
// that started are done (the barrier). After a failure under onFailure halt, nodes not
// started yet are not started.
func (r *rolloutRun) runPhase(ctx context.Context, ph planner.Phase) {
	slots := make(chan struct{}, max(ph.Parallelism, 1))
	var wg sync.WaitGroup
	for i := range ph.Nodes {
		np := &ph.Nodes[i]
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		if r.isHalted() {
			<-slots
			r.setOutcome(ctx, protocol.NodeOutcome{Node: np.Node, Phase: ph.Name, Action: string(np.Action), Status: protocol.NodeNotStarted})
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			out, interrupted := r.runNode(ctx, ph.Name, np)
			if interrupted {
				return
			}
			r.setOutcome(ctx, out)
			if r.haltsOn(ph.Name, out) {
				r.mu.Lock()
				r.halted = true
				r.mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// haltsOn reports whether an outcome stops the rollout: a failure under onFailure
// halt. An unreachable node that left the cluster is only reported.
func (r *rolloutRun) haltsOn(phase string, out protocol.NodeOutcome) bool {
	if r.plan.Rollout.OnFailure == clusterfile.OnFailureContinue {
		return false
	}
	switch out.Status {
	case protocol.NodeFailed:
		return true
	case protocol.NodeUnreachable:
		return phase != planner.PhaseRemove && phase != planner.PhaseEvict
	}
	return false
}

func (r *rolloutRun) isHalted() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.halted
}

func (r *rolloutRun) notStarted(ph planner.Phase) {
	for _, np := range ph.Nodes {
		r.setOutcome(context.Background(), protocol.NodeOutcome{Node: np.Node, Phase: ph.Name, Action: string(np.Action), Status: protocol.NodeNotStarted})
	}
}

// setOutcome records a node's outcome (in the rollout record too) and tells listeners.
func (r *rolloutRun) setOutcome(ctx context.Context, out protocol.NodeOutcome) {
	if prev, ok := r.prev[out.Node]; ok && out.Status == protocol.NodeNoop && prev.Status == protocol.NodeOK {
		out = prev // done before the controller restarted
	}
	r.mu.Lock()
	r.outcomes[out.Node] = out
	r.mu.Unlock()
	if out.Status != protocol.NodeNotStarted {
		r.saveRecord(ctx) // coalesced: see recordInterval
	}
	o := out
	r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventNodeDone, Phase: out.Phase, Node: out.Node, Outcome: &o, Steps: out.Steps})
}

// ordered returns the outcomes in plan order (r.mu held).
func (r *rolloutRun) ordered() []protocol.NodeOutcome {
	var out []protocol.NodeOutcome
	for _, np := range r.plan.Nodes() {
		if o, ok := r.outcomes[np.Node]; ok {
			out = append(out, o)
		}
	}
	return out
}

func (r *rolloutRun) emit(ev protocol.RolloutEvent) {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	ev.Cluster, ev.Rollout = r.rec.Cluster, r.rec.ID
	r.act.emit(ev)
}

// healthCheck runs the image's CMD after a phase that changed something (a quorum
// phase checked after each member already).
func (r *rolloutRun) healthCheck(ctx context.Context, ph planner.Phase) {
	if ph.Name == planner.PhaseRemove || ph.Name == planner.PhaseEvict || ph.Quorum {
		return
	}
	changed := false
	for _, np := range ph.Nodes {
		changed = changed || np.Action != planner.ActionNoop
	}
	if changed {
		r.checkHealth(ctx, ph.Name)
	}
}

// checkHealth runs the image's CMD on master0 (healthNode) now; a failure halts the
// rollout under onFailure halt.
func (r *rolloutRun) checkHealth(ctx context.Context, phase string) {
	hc := r.plan.HealthCheck
	if hc == nil || r.isHalted() {
		return
	}
	node := r.healthNode()
	if node == "" {
		return
	}
	task := &protocol.Task{Node: node, Cluster: r.plan.Cluster, Image: r.plan.ImageDigest, Steps: []protocol.Step{{
		Name: "health: " + oneLine(hc.Command, 60), Kind: protocol.KindRun, Shell: hc.Command, Env: hc.Env, Timeout: min(hc.Timeout, 5*time.Minute)}}}
	if task.Steps[0].Timeout <= 0 {
		task.Steps[0].Timeout = time.Minute
	}
	var lines tail
	res, err := r.e.dispatchWait(ctx, task, func(ev protocol.Event) {
		if ev.Type == protocol.EventOutput {
			lines.add(ev.Line)
		}
	})
	msg := lines.String()
	switch {
	case err != nil:
		msg = "health check on " + node + " did not run: " + err.Error()
	case !res.OK:
		msg = "health check on " + node + " failed (exit " + itoa(res.ExitCode) + "): " + msg
	}
	failed := err != nil || !res.OK
	r.mu.Lock()
	r.health = msg
	r.rec.Health = msg
	r.unhealthy = failed
	if failed && r.plan.Rollout.OnFailure != clusterfile.OnFailureContinue {
		r.halted = true
	}
	r.mu.Unlock()
	r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventHealth, Phase: phase, Node: node, Line: msg})
}

// finish stores the final record and builds the result.
func (r *rolloutRun) finish(ctx context.Context, d time.Duration) *protocol.ApplyResult {
	r.closeRecord()
	r.mu.Lock()
	res := &protocol.ApplyResult{Rollout: r.rec.ID, Cluster: r.rec.Cluster, Image: r.plan.Image, ImageDigest: r.plan.ImageDigest,
		Halted: r.halted, Resumed: r.rec.Resumes > 0, Duration: d, Nodes: r.ordered(), Health: r.health, OK: true}
	for _, o := range res.Nodes {
		// A member evicted while its machine is offline left the membership as asked:
		// only its own cleanup waits for the machine, and that does not fail the apply.
		evicted := o.Phase == planner.PhaseEvict && o.Status == protocol.NodeUnreachable
		if o.Status != protocol.NodeOK && o.Status != protocol.NodeNoop && !evicted {
			res.OK = false
		}
	}
	if r.unhealthy {
		res.OK = false
	}
	r.rec.State = StateDone
	switch {
	case res.Halted:
		r.rec.State = StateHalted
	case !res.OK:
		r.rec.State = StateFailed
	}
	r.rec.Finished = time.Now().UTC()
	r.rec.Phase = ""
	r.rec.Outcomes = res.Nodes
	rec := *r.rec
	r.mu.Unlock()
	if rec.Kind == KindDelete && res.OK {
		if err := r.e.state.forgetCluster(ctx, rec.Cluster); err != nil {
			r.e.log.Warn("forget deleted cluster", "cluster", rec.Cluster, "err", err)
		}
	} else if err := r.e.state.putRollout(ctx, &rec); err != nil {
		r.e.log.Warn("record rollout end", "cluster", rec.Cluster, "err", err)
	}
	r.e.observeRollout(rec.Kind, rec.State, d, res.Nodes)
	r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventDone, Line: summary(rec.State, res)})
	return res
}

// summary says how a rollout ended and, when it did not end well, which node and step
// were the first to fail.
func summary(state string, res *protocol.ApplyResult) string {
	for _, o := range res.Nodes {
		if o.Status != protocol.NodeFailed && o.Status != protocol.NodeUnreachable {
			continue
		}
		s := state + ": node " + o.Node + " " + o.Status
		if o.FailedStep != "" {
			s += " at step " + strconv.Quote(o.FailedStep) + " (exit " + strconv.Itoa(o.ExitCode) + ")"
		} else if o.Error != "" {
			s += ": " + o.Error
		}
		return s
	}
	if state != StateDone && res.Health != "" {
		return state + ": " + res.Health
	}
	return state
}

// tail keeps the last lines of a step's output.
type tail struct{ lines []string }

const tailLines = 20

func (t *tail) add(line string) {
	t.lines = append(t.lines, line)
	if len(t.lines) > tailLines {
		t.lines = t.lines[len(t.lines)-tailLines:]
	}
}

func (t *tail) reset() { t.lines = nil }

func (t *tail) String() string {
	s := ""
	for i, l := range t.lines {
		if i > 0 {
			s += "\n"
		}
		s += l
	}
	return s
}
