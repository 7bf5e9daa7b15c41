package rollout

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/backup"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/protocol"
)

// RestoreRecord is what a restore's rollout record keeps so that a restarted
// controller resumes it: the backup, and how many stages completed (each
// stage's completion is stored before the next starts, so a resumed restore
// repeats at most the stage it was in).
type RestoreRecord struct {
	Backup   string `json:"backup"`   // its name
	Manifest string `json:"manifest"` // the artifact's digest
	Blob     string `json:"blob"`     // the backup file's digest
	Size     int64  `json:"size"`
	Stages   int    `json:"stages"`
	Done     int    `json:"done"` // stages completed
	Force    bool   `json:"force,omitempty"`
}

// EnvRestore is set for RESTORE commands to the restore's id.
const EnvRestore = "FLOTILLA_RESTORE"

// restoreInput is a checked restore request.
type restoreInput struct {
	cr     *ClusterRecord
	cf     *clusterfile.File
	img    *image
	plan   *planner.ClusterPlan
	backup *backup.Backup
}

func (e *Engine) runningRollout(cluster string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if a := e.active[cluster]; a != nil {
		return fmt.Errorf("cluster %s: %s rollout %s is running since %s: a restore would race it; wait for it to end (flotilla status %s) and restore again",
			cluster, a.rec.Kind, a.rec.ID, a.rec.Started.Format(time.RFC3339), cluster)
	}
	return nil
}

// checkRestore refuses what must not be restored: a backup of another cluster or
// image digest (unless forced), an image without RESTORE commands, a backup
// whose file does not verify, a cluster with a rollout running.
func (e *Engine) checkRestore(ctx context.Context, req protocol.RestoreRequest) (*restoreInput, error) {
	if req.Cluster == "" || req.From == "" {
		return nil, errors.New("restore: name the cluster and the backup (flotilla restore CLUSTER --from REF|DIGEST; flotilla backups lists them)")
	}
	if err := e.runningRollout(req.Cluster); err != nil {
		return nil, err
	}
	cr, cf, img, p, err := e.desired(ctx, req.Cluster)
	if err != nil {
		return nil, err
	}
	b, err := backup.Get(e.store, req.From)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w (flotilla backups %s lists its backups)", req.Cluster, err, req.Cluster)
	}
	if b.Meta.Cluster != req.Cluster && !req.Force {
		return nil, fmt.Errorf("restore %s: backup %s is of cluster %s, not %s: pass --force to restore it into %s anyway",
			req.Cluster, b.Ref, b.Meta.Cluster, req.Cluster, req.Cluster)
	}
	if b.Meta.ImageDigest != cr.ImageDigest && !req.Force {
		return nil, fmt.Errorf("restore %s: backup %s was made with image %s (%s) and the cluster runs %s (%s): its RESTORE commands may not read it; pass --force to restore it anyway",
			req.Cluster, b.Ref, b.Meta.Image, protocol.ShortDigest(b.Meta.ImageDigest), cr.Image, protocol.ShortDigest(cr.ImageDigest))
	}
	if len(img.plan.Restore) == 0 {
		return nil, fmt.Errorf("restore %s: its image %s has no RESTORE commands (ON <role> RESTORE cmd in its Kubefile): nothing knows how to restore it", req.Cluster, cr.Image)
	}
	for i, s := range img.plan.Restore {
		if len(restoreMembers(p, i)) == 0 {
			return nil, fmt.Errorf("restore %s: no host has the role %q of RESTORE stage %d (Kubefile line %d)", req.Cluster, s.Role, i+1, s.Line)
		}
	}
	if err := backup.Verify(e.store, b); err != nil {
		e.log.Error("restore refused: backup does not verify", "cluster", req.Cluster, "backup", b.Ref, "err", err)
		return nil, fmt.Errorf("restore %s: %w", req.Cluster, err)
	}
	return &restoreInput{cr: cr, cf: cf, img: img, plan: p, backup: b}, nil
}

// restoreMembers are the nodes that run RESTORE stage i, in plan order.
func restoreMembers(p *planner.ClusterPlan, i int) []*planner.NodePlan {
	var out []*planner.NodePlan
	for _, np := range p.Nodes() {
		if np.Action != planner.ActionRemove && i < len(np.Restore) && np.Restore[i] != nil {
			out = append(out, np)
		}
	}
	return out
}

func (e *Engine) adminRestore(ctx context.Context, call *plane.AdminCall) (any, error) {
	var req protocol.RestoreRequest
	if err := call.Decode(&req); err != nil {
		return nil, err
	}
	var sendMu sync.Mutex
	send := func(ev protocol.RolloutEvent) {
		sendMu.Lock()
		defer sendMu.Unlock()
		if err := call.Send(ev); err != nil {
			e.log.Debug("stream restore event", "err", err)
		}
	}
	// The same restore sent again (a client that lost its controller) follows the running one.
	e.mu.Lock()
	if a := e.active[req.Cluster]; a != nil && a.rec.Kind == KindRestore && a.rec.Restore != nil {
		if b, err := backup.Get(e.store, req.From); err == nil && b.Manifest.Digest.String() == a.rec.Restore.Manifest {
			stop := a.listen(send)
			e.mu.Unlock()
			defer stop()
			return e.follow(ctx, a, req.Detach)
		}
	}
	e.mu.Unlock()
	in, err := e.checkRestore(ctx, req)
	if err != nil {
		return nil, err
	}
	b := in.backup
	rr := &RestoreRecord{Backup: b.Ref, Manifest: b.Manifest.Digest.String(), Blob: b.Blob.Digest.String(), Size: b.Blob.Size,
		Stages: len(in.img.plan.Restore), Force: req.Force}
	act, stop, err := e.startRestore(ctx, in, rr, nil, send)
	if err != nil {
		return nil, err
	}
	defer stop()
	return e.follow(ctx, act, req.Detach)
}

// follow waits for a rollout's result (or returns at once with detach).
func (e *Engine) follow(ctx context.Context, act *active, detach bool) (any, error) {
	if detach {
		return &protocol.ApplyResult{Rollout: act.rec.ID, Cluster: act.rec.Cluster, Image: act.rec.Image, ImageDigest: act.rec.ImageDigest}, nil
	}
	select {
	case <-act.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("controller stopping: %s %s of %s goes on when it starts again", act.rec.Kind, act.rec.ID, act.rec.Cluster)
	}
	if act.result == nil {
		return nil, fmt.Errorf("%s %s of %s was interrupted (controller stopping); it resumes when the controller starts again", act.rec.Kind, act.rec.ID, act.rec.Cluster)
	}
	return act.result, nil
}

// startRestore registers the restore as the cluster's running rollout (refused
// while another runs) and runs it in the background.
func (e *Engine) startRestore(ctx context.Context, in *restoreInput, rr *RestoreRecord, resumed *Record, listen func(protocol.RolloutEvent)) (*active, func(), error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ctx.Err() != nil {
		return nil, nil, errors.New("rollout engine is stopping")
	}
	cluster := in.cr.Cluster
	if a := e.active[cluster]; a != nil {
		return nil, nil, fmt.Errorf("cluster %s: %s rollout %s is running since %s: a restore would race it; wait for it to end (flotilla status %s) and restore again",
			cluster, a.rec.Kind, a.rec.ID, a.rec.Started.Format(time.RFC3339), cluster)
	}
	rec := resumed
	if rec == nil {
		rec = &Record{ID: plane.NewTaskID(), Cluster: cluster, Kind: KindRestore, State: StateRunning, Image: in.cr.Image,
			ImageDigest: in.cr.ImageDigest, Started: time.Now().UTC(), Restore: rr}
	} else {
		rec.Resumes++
	}
	if err := e.state.putRollout(ctx, rec); err != nil {
		return nil, nil, err
	}
	act := &active{rec: rec, listeners: map[int]func(protocol.RolloutEvent){}, done: make(chan struct{})}
	stop := func() {}
	if listen != nil {
		stop = act.listen(listen)
	}
	r := &restoreRun{e: e, act: act, rec: rec, in: in, outcomes: map[string]protocol.NodeOutcome{}}
	for _, o := range rec.Outcomes {
		r.outcomes[o.Node] = o
	}
	e.active[cluster] = act
	e.log.Info("restore started", "cluster", cluster, "rollout", rec.ID, "backup", rr.Backup, "resumed", resumed != nil, "fromStage", rr.Done+1)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		res := r.run(e.ctx)
		if res != nil {
			e.log.Info("restore finished", "cluster", cluster, "rollout", rec.ID, "backup", rec.Restore.Backup, "ok", res.OK, "duration", res.Duration)
		} else {
			e.log.Info("restore interrupted: it resumes when the controller starts again", "cluster", cluster, "rollout", rec.ID,
				"stagesDone", rec.Restore.Done)
		}
		e.mu.Lock()
		delete(e.active, cluster)
		e.mu.Unlock()
		act.result = res
		close(act.done)
	}()
	return act, stop, nil
}

// resumeRestore continues a restore a stopped controller left running, from the
// first stage not recorded as completed. A restore that cannot go on (its
// backup or cluster gone) is recorded as failed.
func (e *Engine) resumeRestore(ctx context.Context, rec *Record) error {
	fail := func(err error) error {
		rec.State, rec.Finished, rec.Health = StateFailed, time.Now().UTC(), "restore could not resume: "+err.Error()
		if perr := e.state.putRollout(ctx, rec); perr != nil {
			return errors.Join(err, perr)
		}
		return err
	}
	if rec.Restore == nil {
		return fail(errors.New("the record has no restore"))
	}
	cr, cf, img, p, err := e.desired(ctx, rec.Cluster)
	if err != nil {
		return fail(err)
	}
	b, err := backup.Get(e.store, rec.Restore.Manifest)
	if err != nil {
		return fail(err)
	}
	if err := backup.Verify(e.store, b); err != nil {
		return fail(err)
	}
	if len(img.plan.Restore) != rec.Restore.Stages {
		return fail(fmt.Errorf("the image now has %d RESTORE stages, the restore started with %d", len(img.plan.Restore), rec.Restore.Stages))
	}
	_, _, err = e.startRestore(ctx, &restoreInput{cr: cr, cf: cf, img: img, plan: p, backup: b}, rec.Restore, rec, nil)
	return err
}

// restoreRun is one restore being carried out.
type restoreRun struct {
	e   *Engine
	act *active
	rec *Record // written by the run goroutine only
	in  *restoreInput

	mu       sync.Mutex
	outcomes map[string]protocol.NodeOutcome
}

func (r *restoreRun) emit(ev protocol.RolloutEvent) {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	ev.Cluster, ev.Rollout = r.rec.Cluster, r.rec.ID
	r.act.emit(ev)
}

func (r *restoreRun) put(ctx context.Context) {
	r.mu.Lock()
	r.rec.Outcomes = r.ordered()
	rec := *r.rec
	rr := *r.rec.Restore
	rec.Restore = &rr
	r.mu.Unlock()
	if err := r.e.state.putRollout(ctx, &rec); err != nil {
		r.e.log.Warn("record restore", "cluster", rec.Cluster, "phase", rec.Phase, "err", err)
	}
}

// ordered returns the outcomes in plan order (r.mu held).
func (r *restoreRun) ordered() []protocol.NodeOutcome {
	var out []protocol.NodeOutcome
	for _, np := range r.in.plan.Nodes() {
		if o, ok := r.outcomes[np.Node]; ok {
			out = append(out, o)
		}
	}
	return out
}

// run carries out the stages from the first not completed, each on every member
// of its role at once with a barrier after it, then the image's health check.
// It returns nil when the engine stopped in the middle (the record stays
// running, to be resumed).
func (r *restoreRun) run(ctx context.Context) *protocol.ApplyResult {
	start := time.Now()
	rr := r.rec.Restore
	r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventStart, Line: fmt.Sprintf("restore %s from %s", r.rec.Cluster, rr.Backup)})
	ok := true
	var phase string
	for i := rr.Done; i < rr.Stages && r.isOK(&ok); i++ {
		phase = fmt.Sprintf("restore-%d", i+1)
		r.rec.Phase = phase
		r.put(ctx)
		r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventPhase, Phase: phase,
			Line: fmt.Sprintf("stage %d of %d: %s", i+1, rr.Stages, oneLine(r.in.img.plan.Restore[i].Command, 60))})
		members := restoreMembers(r.in.plan, i)
		var wg sync.WaitGroup
		for _, np := range members {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, interrupted := r.runNode(ctx, phase, np, np.Restore[i])
				if interrupted {
					return
				}
				r.mu.Lock()
				r.outcomes[np.Node] = out
				if out.Status != protocol.NodeOK {
					ok = false
				}
				r.mu.Unlock()
				o := out
				r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventNodeDone, Phase: phase, Node: np.Node, Outcome: &o, Steps: 1})
			}()
		}
		wg.Wait()
		if ctx.Err() != nil {
			return nil
		}
		r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventPhaseDone, Phase: phase})
		r.mu.Lock()
		stageOK := ok
		r.mu.Unlock()
		if stageOK {
			rr.Done = i + 1
			r.put(ctx) // before the next stage: a resumed restore does not repeat this one
		}
	}
	var health string
	if r.isOK(&ok) {
		// The image's CMD on master0, as after a phase of an apply.
		hr := &rolloutRun{e: r.e, act: r.act, rec: &Record{ID: r.rec.ID, Cluster: r.rec.Cluster}, plan: r.in.plan, outcomes: map[string]protocol.NodeOutcome{}}
		hr.healthCheck(ctx, planner.Phase{Name: phase, Nodes: []planner.NodePlan{{Action: planner.ActionUpdate}}})
		if ctx.Err() != nil {
			return nil
		}
		health = hr.health
		ok = !hr.unhealthy
	}
	r.mu.Lock()
	res := &protocol.ApplyResult{Rollout: r.rec.ID, Cluster: r.rec.Cluster, Image: r.rec.Image, ImageDigest: r.rec.ImageDigest,
		OK: ok, Resumed: r.rec.Resumes > 0, Duration: time.Since(start), Nodes: r.ordered(), Health: health}
	r.mu.Unlock()
	r.rec.State = StateDone
	if !ok {
		r.rec.State = StateFailed
	}
	r.rec.Finished, r.rec.Phase, r.rec.Health = time.Now().UTC(), "", health
	r.put(ctx)
	r.e.observeRollout(KindRestore, r.rec.State, res.Duration, res.Nodes)
	line := r.rec.State
	if s := summary(r.rec.State, res); s != "" {
		line = s
	}
	r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventDone, Line: line + fmt.Sprintf(" (%d of %d stages)", rr.Done, rr.Stages)})
	return res
}

func (r *restoreRun) isOK(ok *bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return *ok
}

// runNode runs one RESTORE stage on one member: a task of one restore step
// (fetch the backup peer to peer, then the command), sent again while the node
// is offline (up to UnreachableTimeout) or the task was lost (the Clusterfile's
// retries). interrupted is true when the engine stopped.
func (r *restoreRun) runNode(ctx context.Context, phase string, np *planner.NodePlan, st *planner.Step) (out protocol.NodeOutcome, interrupted bool) {
	start := time.Now()
	out = protocol.NodeOutcome{Node: np.Node, Phase: phase, Action: KindRestore, Steps: 1}
	defer func() { out.Duration = time.Since(start) }()
	rr := r.rec.Restore
	blob := protocol.LayerPayload{Cluster: r.rec.Cluster, Digest: rr.Blob, Size: rr.Size, URL: r.e.blobURL(rr.Blob)}
	if d := r.e.opts.DecorateLayer; d != nil {
		if err := d(ctx, LayerRequest{Cluster: &r.in.cf.Cluster, Node: np.Node, Payload: &blob}); err != nil {
			out.Status, out.Error = protocol.NodeFailed, fmt.Sprintf("backup %s: %v", protocol.ShortDigest(rr.Blob), err)
			return out, false
		}
	}
	timeout := st.Timeout
	if timeout <= 0 {
		timeout = clusterfile.DefaultStepTimeout
	}
	name := fmt.Sprintf("%s: %s", phase, oneLine(st.Command, 60))
	r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventNodeStart, Phase: phase, Node: np.Node, Steps: 1})
	var lines tail
	onEvent := func(ev protocol.Event) {
		base := protocol.RolloutEvent{Phase: phase, Node: np.Node, Step: 1, Steps: 1, StepName: name}
		switch ev.Type {
		case protocol.EventStepStarted:
			base.Type = protocol.RolloutEventStep
		case protocol.EventOutput:
			lines.add(ev.Line)
			base.Type, base.Line = protocol.RolloutEventOutput, ev.Line
		case protocol.EventProgress:
			if ev.Progress == nil {
				return
			}
			base.Type, base.Done, base.Total, base.Line = protocol.RolloutEventProgress, ev.Progress.Done, ev.Progress.Total, ev.Progress.Message
		case protocol.EventStepResult:
			if ev.Result == nil {
				return
			}
			base.Type, base.Line = protocol.RolloutEventStepDone, ev.Result.Error
		default:
			return
		}
		r.emit(base)
	}
	// FLOTILLA_RESTORE names this restore: the same on every member and in a
	// repeated stage, another for the next restore (etcd: a new cluster token).
	env := maps.Clone(st.Env)
	if env == nil {
		env = map[string]string{}
	}
	env[EnvRestore] = r.rec.ID
	rt := r.e.newRetry(np.Node, r.in.plan.Rollout.Retries)
	for attempt := 1; ; attempt++ {
		expires := time.Now().Add(r.e.opts.TaskTTL)
		step := protocol.Step{Name: name, Kind: protocol.KindRestore, Shell: st.Command, Env: env, Timeout: timeout}
		p := protocol.RestorePayload{Cluster: r.rec.Cluster, Blob: blob}
		p.Blob.Token = r.e.blobs.Token(np.Node, rr.Blob, blobTokenExpiry(expires, []protocol.Step{step}))
		step.Payload = mustJSON(p)
		task := &protocol.Task{Node: np.Node, Cluster: r.rec.Cluster, Image: r.rec.ImageDigest, Steps: []protocol.Step{step}, Expires: expires}
		res, err := r.e.dispatchWait(ctx, task, onEvent)
		if ctx.Err() != nil {
			return out, true
		}
		out.Attempts = attempt
		var why string
		switch {
		case err == nil && res.OK:
			out.Status, out.Ran = protocol.NodeOK, 1
			return out, false
		case err == nil:
			out.Status, out.ExitCode, out.Error, out.FailedStep = protocol.NodeFailed, res.ExitCode, res.Error, name
			if out.Error == "" {
				out.Error = fmt.Sprintf("exit code %d", res.ExitCode)
			}
			out.LastOutput = append([]string(nil), lines.lines...)
			return out, false
		case errors.Is(err, plane.ErrNodeOffline):
			var gaveUp error
			if why, gaveUp = rt.offline(err); gaveUp != nil {
				out.Status, out.Error = protocol.NodeUnreachable, gaveUp.Error()
				return out, false
			}
		default:
			if !rt.lostAttempt() {
				out.Status, out.Error = protocol.NodeFailed, fmt.Sprintf("gave up after %d attempts: %v", attempt, err)
				return out, false
			}
			why = fmt.Sprintf("attempt %d lost: %v; retrying", attempt, err)
		}
		r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventRetry, Phase: phase, Node: np.Node, Line: why})
		if !rt.wait(ctx) {
			return out, true
		}
	}
}
