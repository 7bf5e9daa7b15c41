package rollout

import (
	"context"
	"fmt"
	"time"

	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Infra makes and destroys the machines of a Clusterfile's spec.infra
// (infra.Driver is the real one). The engine calls Provide before it plans an
// apply, and Release when a rollout ended, so that a machine leaves only
// after the image was undone on it.
type Infra interface {
	// Provide returns once every machine c asks for exists and its agent is online.
	Provide(ctx context.Context, c *clusterfile.Cluster, progress func(string)) error
	// Release destroys the cluster's machines for which keep returns false.
	Release(ctx context.Context, cluster string, keep func(name string) bool, progress func(string)) error
	// MachineNames lists the machines the cluster has.
	MachineNames(ctx context.Context, cluster string) ([]string, error)
}

// provideInfra makes the machines of req's spec.infra before planning. A
// Clusterfile that does not parse is left to prepare, which reports it.
func (e *Engine) provideInfra(ctx context.Context, call *plane.AdminCall, req protocol.ApplyRequest) error {
	path := req.Path
	if path == "" {
		path = "Clusterfile"
	}
	cf, err := clusterfile.Parse(path, req.Clusterfile)
	if err != nil || cf.Cluster.Infra == nil {
		return nil
	}
	if e.opts.Infra == nil {
		return &clusterfile.FieldError{File: path, Line: cf.Cluster.Infra.Line, Field: "spec.infra",
			Msg: "this controller creates no machines: start it with an infrastructure provider (flotilla controller --infra-sandbox FLEET), or list hosts in spec.hosts"}
	}
	// What would fail the plan anyway fails before any machine is made.
	img, err := e.resolveImage(cf.Cluster.Image)
	if err != nil {
		return fmt.Errorf("%s: spec.image: %w", path, err)
	}
	if err := cf.Cluster.ValidateRoles(img.plan.Roles); err != nil {
		return err
	}
	name := cf.Cluster.Name
	return e.opts.Infra.Provide(ctx, &cf.Cluster, func(line string) {
		if err := call.Send(protocol.RolloutEvent{Time: time.Now().UTC(), Cluster: name, Type: protocol.RolloutEventInfra, Line: line}); err != nil {
			e.log.Debug("stream infra event", "err", err)
		}
	})
}

// releaseInfra destroys, after a rollout ended, the machines the cluster no
// longer wants: beyond the counts (apply) or all (delete, unless KeepInfra).
// A machine the image is still applied on (its undo failed) is kept, so the
// next apply or delete tries the undo again first.
func (r *rolloutRun) releaseInfra(ctx context.Context) {
	e := r.e
	if e.opts.Infra == nil || (r.rec.Kind == KindDelete && r.rec.KeepInfra) {
		return
	}
	want := map[string]bool{}
	if r.rec.Kind == KindApply {
		for _, m := range r.cf.Cluster.Machines() {
			want[m.Name] = true
		}
	}
	applied, err := e.state.appliedOf(ctx, r.rec.Cluster)
	if err != nil {
		e.log.Warn("infra: read applied state; no machine destroyed", "cluster", r.rec.Cluster, "err", err)
		return
	}
	keep := func(name string) bool {
		_, still := applied[name]
		return want[name] || still
	}
	progress := func(line string) {
		r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventInfra, Line: line})
	}
	if err := e.opts.Infra.Release(ctx, r.rec.Cluster, keep, progress); err != nil {
		e.log.Error("infra: destroy machines", "cluster", r.rec.Cluster, "err", err)
		progress("destroying machines failed: " + err.Error())
	}
}

// planOnlyMadeMachines drops, for a plan (dry run), the machines of spec.infra
// that do not exist yet: apply makes them before it plans.
func (e *Engine) planOnlyMadeMachines(ctx context.Context, cf *clusterfile.File) error {
	if cf.Cluster.Infra == nil {
		return nil
	}
	agents, err := e.agents(ctx)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, a := range agents {
		have[a.Name] = true
	}
	var hosts []clusterfile.Host
	for _, h := range cf.Cluster.Hosts {
		if h.Infra {
			var names []clusterfile.Name
			for _, n := range h.Names {
				if have[n.Raw] {
					names = append(names, n)
				}
			}
			if len(names) == 0 {
				continue
			}
			h.Names = names
		}
		hosts = append(hosts, h)
	}
	cf.Cluster.Hosts = hosts
	return nil
}

// releaseForgotten finishes a delete whose rollout ended (the cluster is
// forgotten) but whose machines were not all destroyed (the controller
// stopped in between): with nothing left to undo, it destroys them.
func (e *Engine) releaseForgotten(ctx context.Context, call *plane.AdminCall, req protocol.ApplyRequest) (*protocol.ApplyResult, bool) {
	if e.opts.Infra == nil || req.KeepInfra {
		return nil, false
	}
	cf, err := clusterfile.Parse(req.Path, req.Clusterfile)
	if err != nil {
		return nil, false
	}
	name := cf.Cluster.Name
	if cr, err := e.state.cluster(ctx, name); err != nil || cr != nil {
		return nil, false
	}
	if applied, err := e.state.appliedOf(ctx, name); err != nil || len(applied) > 0 {
		return nil, false
	}
	machines, err := e.opts.Infra.MachineNames(ctx, name)
	if err != nil || len(machines) == 0 {
		return nil, false
	}
	t0 := time.Now()
	err = e.opts.Infra.Release(ctx, name, nil, func(line string) {
		_ = call.Send(protocol.RolloutEvent{Time: time.Now().UTC(), Cluster: name, Type: protocol.RolloutEventInfra, Line: line})
	})
	res := &protocol.ApplyResult{Cluster: name, Image: cf.Cluster.Image, OK: err == nil, Duration: time.Since(t0), Nodes: []protocol.NodeOutcome{}}
	if err != nil {
		res.Health = err.Error()
	}
	return res, true
}
