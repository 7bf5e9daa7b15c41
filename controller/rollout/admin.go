package rollout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/protocol"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// image is a cluster image resolved in the controller's store.
type image struct {
	digest string
	plan   *recipe.Recipe
	byArch map[string]*recipe.Recipe
}

// resolveImage finds ref in the store: its digest (the index's for a multi-arch
// image), the host platform's plan and every platform's plan by architecture.
func (e *Engine) resolveImage(ref string) (*image, error) {
	notHere := func(err error) error {
		return fmt.Errorf("image %s is not in the controller's image store (%s): flotilla pull/load it on the controller host (%w)", ref, e.store.Dir(), err)
	}
	desc, err := e.store.Get(ref)
	if err != nil {
		return nil, notHere(err)
	}
	img := &image{digest: desc.Digest.String(), byArch: map[string]*recipe.Recipe{}}
	if desc.MediaType.IsIndex() {
		idx, err := e.store.Index(desc.Digest)
		if err != nil {
			return nil, notHere(err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", ref, err)
		}
		for _, m := range im.Manifests {
			if m.Platform == nil || m.MediaType.IsIndex() {
				continue
			}
			p, err := e.planOf(m.Digest)
			if err != nil {
				return nil, fmt.Errorf("image %s (%s): %w", ref, m.Platform, err)
			}
			img.byArch[m.Platform.Architecture] = p
		}
	}
	i, _, err := e.store.Resolve(ref)
	if err != nil {
		if len(img.byArch) == 0 {
			return nil, notHere(err)
		}
		for _, p := range img.byArch { // no variant for this host: any platform gives roles and phases
			img.plan = p
			break
		}
		return img, nil
	}
	if img.plan, err = store.Plan(i); err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	return img, nil
}

func (e *Engine) planOf(h v1.Hash) (*recipe.Recipe, error) {
	i, err := e.store.Image(h)
	if err != nil {
		return nil, err
	}
	return store.Plan(i)
}

// agents turns the inventory into the planner's view of it.
func (e *Engine) agents(ctx context.Context) ([]planner.Agent, error) {
	nodes, err := e.fleet.Nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("node inventory: %w", err)
	}
	out := make([]planner.Agent, 0, len(nodes))
	for _, n := range nodes {
		// Selectors match the admin-approved labels only: what a node reports
		// about itself (n.Facts.Labels) must not choose its role.
		a := planner.Agent{Name: n.Name, Arch: n.Facts.Arch, Online: n.Online, Labels: maps.Clone(n.Labels)}
		if a.Labels == nil {
			a.Labels = map[string]string{}
		}
		for _, s := range n.Facts.IPs {
			// Checked on arrival; checked again for records stored before that.
			if protocol.ValidateIP(s) != nil {
				continue
			}
			a.IPs = append(a.IPs, netip.MustParseAddr(s))
		}
		// Only these select the node by address: what it reports does not.
		for _, v := range n.VerifiedIPs {
			if protocol.ValidateIP(v.IP) == nil {
				a.VerifiedIPs = append(a.VerifiedIPs, netip.MustParseAddr(v.IP))
			}
		}
		out = append(out, a)
	}
	return out, nil
}

// prepared is a validated request: the Clusterfile, its image and the plan.
type prepared struct {
	req     protocol.ApplyRequest
	cf      *clusterfile.File
	img     *image
	applied map[string]planner.Applied
	plan    *planner.ClusterPlan
}

// prepare validates an apply request and plans it; every error comes back before
// anything runs (the Clusterfile's file:line and field path, the image, the hosts).
func (e *Engine) prepare(ctx context.Context, req protocol.ApplyRequest) (*prepared, error) {
	if len(req.Clusterfile) == 0 {
		return nil, errors.New("empty Clusterfile: pass its content (flotilla apply -f Clusterfile)")
	}
	if req.Path == "" {
		req.Path = "Clusterfile"
	}
	cf, err := clusterfile.Parse(req.Path, req.Clusterfile)
	if err != nil {
		return nil, err
	}
	if req.DryRun {
		if err := e.planOnlyMadeMachines(ctx, cf); err != nil {
			return nil, err
		}
	}
	img, err := e.resolveImage(cf.Cluster.Image)
	if err != nil {
		return nil, fmt.Errorf("%s: spec.image: %w", req.Path, err)
	}
	p := &prepared{req: req, cf: cf, img: img}
	if p.plan, p.applied, err = e.planFor(ctx, cf, img); err != nil {
		return nil, err
	}
	return p, nil
}

func (e *Engine) planFor(ctx context.Context, cf *clusterfile.File, img *image) (*planner.ClusterPlan, map[string]planner.Applied, error) {
	agents, err := e.agents(ctx)
	if err != nil {
		return nil, nil, err
	}
	applied, err := e.state.appliedOf(ctx, cf.Cluster.Name)
	if err != nil {
		return nil, nil, err
	}
	p, err := planner.Plan(planner.Input{File: cf, Image: img.plan, ImageDigest: img.digest, ImageByArch: img.byArch,
		Agents: agents, Applied: applied, Carried: e.carried()})
	if err != nil {
		return nil, nil, err
	}
	return p, applied, nil
}

// adminPlan is adminApply with DryRun: the plan, nothing changed.
func (e *Engine) adminPlan(ctx context.Context, call *plane.AdminCall) (any, error) {
	return e.apply(ctx, call, true)
}

func (e *Engine) adminApply(ctx context.Context, call *plane.AdminCall) (any, error) {
	return e.apply(ctx, call, false)
}

func (e *Engine) apply(ctx context.Context, call *plane.AdminCall, dryRun bool) (any, error) {
	var req protocol.ApplyRequest
	if err := call.Decode(&req); err != nil {
		return nil, err
	}
	req.DryRun = req.DryRun || dryRun
	if !req.DryRun {
		if err := e.provideInfra(ctx, call, req); err != nil {
			return nil, err
		}
	}
	p, err := e.prepare(ctx, req)
	if err != nil {
		return nil, err
	}
	if req.DryRun {
		return p.plan.Wire(), nil
	}
	rec := &ClusterRecord{Cluster: p.cf.Cluster.Name, Clusterfile: req.Clusterfile, Path: req.Path, Image: p.cf.Cluster.Image,
		ImageDigest: p.img.digest}
	return e.startAndFollow(ctx, call, KindApply, rec, p)
}

// startAndFollow starts a rollout (or attaches to the running one of the same
// Clusterfile), streams its events to the caller and returns its result.
func (e *Engine) startAndFollow(ctx context.Context, call *plane.AdminCall, kind string, cr *ClusterRecord, p *prepared) (any, error) {
	var sendMu sync.Mutex
	send := func(ev protocol.RolloutEvent) {
		sendMu.Lock()
		defer sendMu.Unlock()
		if err := call.Send(ev); err != nil {
			e.log.Debug("stream rollout event", "err", err)
		}
	}
	act, stop, err := e.start(ctx, kind, cr, p, nil, send)
	if err != nil {
		return nil, err
	}
	defer stop()
	if p.req.Detach {
		return &protocol.ApplyResult{Rollout: act.rec.ID, Cluster: cr.Cluster, Image: cr.Image, ImageDigest: cr.ImageDigest}, nil
	}
	select {
	case <-act.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("controller stopping: rollout %s of %s goes on when it starts again", act.rec.ID, cr.Cluster)
	}
	if act.result == nil {
		return nil, fmt.Errorf("rollout %s of %s was interrupted (controller stopping); it resumes when the controller starts again", act.rec.ID, cr.Cluster)
	}
	return act.result, nil
}

// start begins a rollout of cluster cr.Cluster, or attaches to the one running with
// the same Clusterfile; a different Clusterfile is refused while one runs. listen, if
// set, receives the rollout's events until stop is called.
func (e *Engine) start(ctx context.Context, kind string, cr *ClusterRecord, p *prepared, resumed *Record, listen func(protocol.RolloutEvent)) (*active, func(), error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ctx.Err() != nil {
		return nil, nil, errors.New("rollout engine is stopping")
	}
	if a := e.active[cr.Cluster]; a != nil {
		if resumed == nil && a.rec.Kind == kind && bytes.Equal(a.clusterfile, cr.Clusterfile) {
			stop := func() {}
			if listen != nil {
				stop = a.listen(listen)
			}
			return a, stop, nil // attach: same request, already running
		}
		why := "with another Clusterfile"
		if a.rec.Kind != kind {
			why = "(a " + a.rec.Kind + ", not a " + kind + ")"
		}
		return nil, nil, fmt.Errorf("cluster %s: %s rollout %s is running since %s %s: wait for it to end (flotilla status %s) and %s again",
			cr.Cluster, a.rec.Kind, a.rec.ID, a.rec.Started.Format(time.RFC3339), why, cr.Cluster, kind)
	}
	now := time.Now().UTC()
	rec := &Record{ID: plane.NewTaskID(), Cluster: cr.Cluster, Kind: kind, State: StateRunning, Image: cr.Image,
		ImageDigest: cr.ImageDigest, Started: now, KeepInfra: p.req.KeepInfra}
	prev := map[string]protocol.NodeOutcome{}
	if resumed != nil {
		rec = resumed
		rec.Resumes++
		for _, o := range rec.Outcomes {
			prev[o.Node] = o
		}
	}
	if kind == KindApply {
		cr.Updated = now
		if err := putJSON(ctx, e.state.clusters, cr.Cluster, cr); err != nil {
			return nil, nil, err
		}
	}
	if err := e.state.putRollout(ctx, rec); err != nil {
		return nil, nil, err
	}
	act := &active{rec: rec, clusterfile: cr.Clusterfile, listeners: map[int]func(protocol.RolloutEvent){}, done: make(chan struct{})}
	stop := func() {}
	if listen != nil {
		stop = act.listen(listen)
	}
	r := &rolloutRun{e: e, act: act, rec: rec, cf: p.cf, plan: p.plan, applied: p.applied, prev: prev,
		outcomes: map[string]protocol.NodeOutcome{}}
	e.active[cr.Cluster] = act
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		res := r.run(e.ctx)
		if res != nil {
			r.releaseInfra(e.ctx)
			e.log.Info("rollout finished", "cluster", cr.Cluster, "rollout", rec.ID, "kind", kind, "ok", res.OK, "halted", res.Halted,
				"duration", res.Duration, "summary", summary(rec.State, res))
		} else {
			e.log.Info("rollout interrupted: it resumes when the controller starts again", "cluster", cr.Cluster, "rollout", rec.ID)
		}
		e.mu.Lock()
		delete(e.active, cr.Cluster)
		e.mu.Unlock()
		act.result = res
		close(act.done)
	}()
	e.log.Info("rollout started", "cluster", cr.Cluster, "rollout", rec.ID, "kind", kind, "resumed", resumed != nil,
		"image", cr.Image, "nodes", len(p.plan.Nodes()))
	return act, stop, nil
}

// resume plans an interrupted rollout again from KV (desired Clusterfile, applied
// state) and runs it under the same id.
func (e *Engine) resume(ctx context.Context, rec *Record) (*active, error) {
	cr, err := e.state.cluster(ctx, rec.Cluster)
	if err != nil {
		return nil, err
	}
	if cr == nil {
		return nil, fmt.Errorf("no desired state stored for cluster %s", rec.Cluster)
	}
	req := protocol.ApplyRequest{Clusterfile: cr.Clusterfile, Path: cr.Path}
	var p *prepared
	if rec.Kind == KindDelete {
		p, err = e.prepareDelete(ctx, req)
	} else {
		p, err = e.prepare(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	act, _, err := e.start(ctx, rec.Kind, cr, p, rec, nil)
	return act, err
}

func (e *Engine) adminDelete(ctx context.Context, call *plane.AdminCall) (any, error) {
	var req protocol.ApplyRequest
	if err := call.Decode(&req); err != nil {
		return nil, err
	}
	p, err := e.prepareDelete(ctx, req)
	if err != nil {
		if res, ok := e.releaseForgotten(ctx, call, req); ok {
			return res, nil
		}
		return nil, err
	}
	cr, err := e.state.cluster(ctx, p.cf.Cluster.Name)
	if err != nil {
		return nil, err
	}
	if cr == nil { // applied state without a desired one: keep what resuming the delete needs
		cr = &ClusterRecord{Cluster: p.cf.Cluster.Name, Clusterfile: req.Clusterfile, Path: req.Path, Image: p.cf.Cluster.Image,
			ImageDigest: p.img.digest, Updated: time.Now().UTC()}
		if err := putJSON(ctx, e.state.clusters, cr.Cluster, cr); err != nil {
			return nil, err
		}
	}
	return e.startAndFollow(ctx, call, KindDelete, cr, p)
}

// prepareDelete plans the undo of everything on every node that applied the cluster:
// the Clusterfile with no hosts. The image is only needed for its roles, so a deleted
// image does not keep a cluster from being deleted.
func (e *Engine) prepareDelete(ctx context.Context, req protocol.ApplyRequest) (*prepared, error) {
	if req.Path == "" {
		req.Path = "Clusterfile"
	}
	cf, err := clusterfile.Parse(req.Path, req.Clusterfile)
	if err != nil {
		return nil, err
	}
	name := cf.Cluster.Name
	img, err := e.resolveImage(cf.Cluster.Image)
	if err != nil {
		img = &image{plan: &recipe.Recipe{}}
		if cr, _ := e.state.cluster(ctx, name); cr != nil {
			img.digest = cr.ImageDigest
		}
	}
	applied, err := e.state.appliedOf(ctx, name)
	if err != nil {
		return nil, err
	}
	if len(applied) == 0 {
		if cr, _ := e.state.cluster(ctx, name); cr == nil {
			return nil, fmt.Errorf("cluster %s is not known to this controller: nothing to delete (flotilla status lists clusters)", name)
		}
	}
	agents, err := e.agents(ctx)
	if err != nil {
		return nil, err
	}
	empty := *cf
	empty.Cluster.Hosts = nil
	empty.Configs = nil
	p, err := planner.Plan(planner.Input{File: &empty, Image: img.plan, ImageDigest: img.digest, Agents: agents, Applied: applied})
	if err != nil {
		return nil, err
	}
	return &prepared{req: req, cf: cf, img: img, applied: applied, plan: p}, nil
}

func (e *Engine) adminStatus(ctx context.Context, call *plane.AdminCall) (any, error) {
	var req protocol.StatusRequest
	if err := call.Decode(&req); err != nil {
		return nil, err
	}
	return e.Status(ctx, req.Cluster)
}

// Status reports one cluster (or every cluster when name is ""): desired image, the
// latest rollout and each node's applied image and drift.
func (e *Engine) Status(ctx context.Context, name string) ([]protocol.ClusterStatus, error) {
	names := []string{name}
	if name == "" {
		var err error
		if names, err = e.state.clusterNames(ctx); err != nil {
			return nil, err
		}
	}
	agents, err := e.agents(ctx)
	if err != nil {
		return nil, err
	}
	online := map[string]bool{}
	for _, a := range agents {
		online[a.Name] = a.Online
	}
	out := []protocol.ClusterStatus{}
	for _, n := range names {
		cr, err := e.state.cluster(ctx, n)
		if err != nil {
			return nil, err
		}
		if cr == nil {
			if name != "" {
				return nil, fmt.Errorf("cluster %s is not known to this controller (flotilla status lists clusters)", name)
			}
			continue
		}
		st, err := e.clusterStatus(ctx, cr, online)
		if err != nil {
			return nil, err
		}
		out = append(out, *st)
	}
	return out, nil
}

func (e *Engine) clusterStatus(ctx context.Context, cr *ClusterRecord, online map[string]bool) (*protocol.ClusterStatus, error) {
	st := &protocol.ClusterStatus{Cluster: cr.Cluster, Image: cr.Image, ImageDigest: cr.ImageDigest, Nodes: []protocol.NodeStatus{}}
	rec, err := e.state.rollout(ctx, cr.Cluster)
	if err != nil {
		return nil, err
	}
	lastErr := map[string]string{}
	if rec != nil {
		st.Rollout, st.State, st.Started, st.Finished = rec.ID, rec.State, rec.Started, rec.Finished
		st.Kind = rec.Kind
		e.mu.Lock()
		a := e.active[cr.Cluster]
		e.mu.Unlock()
		if rec.State == StateRunning && (a == nil || a.rec.ID != rec.ID) {
			st.State = StateInterrupted
		}
		for _, o := range rec.Outcomes {
			if o.Error != "" {
				msg := o.Error
				if o.FailedStep != "" {
					msg = o.FailedStep + ": " + msg
				}
				lastErr[o.Node] = msg
			}
		}
	}
	applied, err := e.state.appliedOf(ctx, cr.Cluster)
	if err != nil {
		return nil, err
	}
	// The planner says which nodes have work left; if it cannot plan (image gone, a host
	// no longer matches), drift falls back to the applied image.
	var p *planner.ClusterPlan
	if cf, err := clusterfile.Parse(cr.Path, cr.Clusterfile); err == nil {
		if img, err := e.resolveImage(cf.Cluster.Image); err == nil {
			p, _, _ = e.planFor(ctx, cf, img)
		}
	}
	seen := map[string]bool{}
	if p != nil {
		for _, np := range p.Nodes() {
			seen[np.Node] = true
			a := applied[np.Node]
			ns := protocol.NodeStatus{Node: np.Node, Roles: np.Roles, Online: online[np.Node], Applied: a.Image, LastError: lastErr[np.Node]}
			if np.Action == planner.ActionRemove {
				ns.Roles = a.Roles
			}
			ns.Drift = !ns.Online || a.Image != cr.ImageDigest || np.Action != planner.ActionNoop
			st.Nodes = append(st.Nodes, ns)
		}
	}
	var rest []string
	for n := range applied {
		if !seen[n] {
			rest = append(rest, n)
		}
	}
	sort.Strings(rest)
	for _, n := range rest {
		a := applied[n]
		st.Nodes = append(st.Nodes, protocol.NodeStatus{Node: n, Roles: a.Roles, Online: online[n], Applied: a.Image,
			Drift: !online[n] || a.Image != cr.ImageDigest, LastError: lastErr[n]})
	}
	return st, nil
}
