package rollout

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Membership changes (see planner/members.go for who joins and leaves).
//
// Each change is recorded in the node's applied state in KV before the step that
// makes it runs and again once it ran, so a controller killed in the middle resumes
// it from the record: a member recorded but not yet joined runs its JOIN again (the
// image's JOIN must treat "already a member" as done), a member whose LEAVE ran is
// never left twice. Changes of a quorum role run one at a time, each followed by
// the health check.

// recordFounders writes the membership of every founding member before anything
// runs: a rollout cut off before some founders ran a step must not see them as
// joiners next time (their peers already count them as members).
func (r *rolloutRun) recordFounders(ctx context.Context) error {
	for _, np := range r.plan.Nodes() {
		ms := np.Membership
		if ms == nil || ms.Record == nil || ms.State != planner.MemberNew {
			continue
		}
		a := r.applied[np.Node]
		if a.Member != nil && a.Member.Role == ms.Role {
			continue
		}
		a = cloneApplied(a)
		if len(a.Roles) == 0 {
			a.Roles = append([]string(nil), np.Roles...)
		}
		a.Member = ms.Record
		if err := r.e.state.putApplied(ctx, r.plan.Cluster, np.Node, a); err != nil {
			return fmt.Errorf("record the %s membership of %s: %w", ms.Role, np.Node, err)
		}
		r.applied[np.Node] = a
	}
	return nil
}

// join runs the JOIN commands for a joining node on a member, after recording the
// node as a member that has not joined yet, and records that it joined. It returns
// the node's applied state with its membership.
func (r *rolloutRun) join(ctx context.Context, phase string, np *planner.NodePlan, base planner.Applied) (planner.Applied, error) {
	ms := np.Membership
	a := cloneApplied(base)
	if len(a.Roles) == 0 {
		a.Roles = append([]string(nil), np.Roles...)
	}
	a.Member = ms.Record
	if err := r.e.state.putApplied(ctx, r.plan.Cluster, np.Node, a); err != nil {
		return base, fmt.Errorf("record %s as joining the %s membership: %w", np.Node, ms.Role, err)
	}
	via, err := r.onMember(ctx, phase, np, "join", ms.Join, ms.Via)
	if err != nil {
		return a, err
	}
	ms.Record.Joined = true
	if err := r.e.state.putApplied(ctx, r.plan.Cluster, np.Node, a); err != nil {
		return a, fmt.Errorf("record that %s joined the %s membership (JOIN ran on %s): %w", np.Node, ms.Role, via, err)
	}
	return a, nil
}

// runMember runs a node whose membership changes or is kept: a joining node's JOIN
// first, a leaving node's LEAVE after its removal (only the LEAVE when its machine
// is gone: the evict phase), then the health check. Members of a quorum role and
// leaving members go one at a time.
func (r *rolloutRun) runMember(ctx context.Context, phase string, np *planner.NodePlan) (out protocol.NodeOutcome, interrupted bool) {
	ms := np.Membership
	if ms.Quorum || np.Action == planner.ActionRemove {
		r.memberMu.Lock()
		defer r.memberMu.Unlock()
	}
	start := time.Now()
	base := r.applied[np.Node]
	if np.Action != planner.ActionRemove {
		if len(ms.Join) > 0 {
			a, err := r.join(ctx, phase, np, base)
			if ctx.Err() != nil {
				return out, true
			}
			if err != nil {
				return protocol.NodeOutcome{Node: np.Node, Phase: phase, Action: string(np.Action), Status: protocol.NodeFailed,
					Error: err.Error(), Duration: time.Since(start)}, false
			}
			base = a
		}
		out, interrupted = r.runNodeTask(ctx, phase, np, base)
		if !interrupted && ms.Quorum && out.Status == protocol.NodeOK {
			r.checkHealth(ctx, phase)
		}
		return out, interrupted
	}
	if phase == planner.PhaseEvict {
		out = protocol.NodeOutcome{Node: np.Node, Phase: phase, Action: string(np.Action)}
	} else if out, interrupted = r.runNodeTask(ctx, phase, np, base); interrupted {
		return out, true
	}
	if (len(ms.Leave) == 0 && phase != planner.PhaseEvict) || (out.Status != protocol.NodeOK && out.Status != protocol.NodeUnreachable && phase != planner.PhaseEvict) {
		return out, false // a failed removal keeps its membership: the operator looks first
	}
	via, err := r.leave(ctx, phase, np)
	out.Duration = time.Since(start)
	if ctx.Err() != nil {
		return out, true
	}
	if err != nil {
		out.Status, out.Error = protocol.NodeFailed, err.Error()
		return out, false
	}
	switch {
	case phase == planner.PhaseEvict && via == "":
		out.Status = protocol.NodeUnreachable
		out.Error = fmt.Sprintf("offline and out of the %s membership; its CLEANUP and undo run once it is back online", ms.Role)
	case phase == planner.PhaseEvict:
		out.Status = protocol.NodeUnreachable
		out.Error = fmt.Sprintf("offline: left the %s membership (LEAVE on %s); its CLEANUP and undo run once it is back online", ms.Role, via)
	case out.Status == protocol.NodeOK:
		if err := r.e.state.deleteApplied(ctx, r.plan.Cluster, np.Node); err != nil {
			r.e.log.Warn("forget removed node", "cluster", r.plan.Cluster, "node", np.Node, "err", err)
		}
	default:
		out.Error += fmt.Sprintf("; left the %s membership (LEAVE on %s)", ms.Role, via)
	}
	if ms.Quorum {
		r.checkHealth(ctx, phase)
	}
	return out, false
}

// leave runs a leaving node's LEAVE commands on a member that stays and records
// that it left (its applied state stays until its removal is complete).
func (r *rolloutRun) leave(ctx context.Context, phase string, np *planner.NodePlan) (via string, err error) {
	ms := np.Membership
	a := cloneApplied(r.applied[np.Node])
	if a.Member != nil && a.Member.Left {
		return "", nil
	}
	if via, err = r.onMember(ctx, phase, np, "leave", ms.Leave, ms.Via); err != nil {
		return "", err
	}
	if a.Member == nil {
		a.Member = &planner.MemberRecord{Role: ms.Role, IP: np.IP}
	}
	a.Member.Left = true
	if err := r.e.state.putApplied(ctx, r.plan.Cluster, np.Node, a); err != nil {
		return via, fmt.Errorf("record that %s left the %s membership (LEAVE ran on %s): %w", np.Node, ms.Role, via, err)
	}
	return via, nil
}

// onMember runs steps (a node's JOIN or LEAVE) on the first member of via that
// takes the task; an offline member is passed over, a failing step is not retried
// elsewhere (it failed on a live member: the operator looks first). It returns the
// member that ran them.
func (r *rolloutRun) onMember(ctx context.Context, phase string, np *planner.NodePlan, what string, steps []planner.Step, via []string) (string, error) {
	if len(steps) == 0 {
		return "", nil
	}
	task := protocol.Task{Cluster: r.plan.Cluster, Image: r.plan.ImageDigest}
	for _, s := range steps {
		t := s.Timeout
		if t <= 0 {
			t = time.Minute
		}
		task.Steps = append(task.Steps, protocol.Step{Name: what + " " + np.Node + ": " + oneLine(s.Command, 60), Kind: protocol.KindRun,
			Shell: s.Command, Env: s.Env, Timeout: t})
	}
	var tried []string
	for _, m := range via {
		t := task
		t.Node = m
		r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventOutput, Phase: phase, Node: np.Node,
			Line: fmt.Sprintf("%s: %d command(s) on member %s", what, len(steps), m)})
		var lines tail
		res, err := r.e.dispatchWait(ctx, &t, func(ev protocol.Event) {
			if ev.Type == protocol.EventOutput {
				lines.add(ev.Line)
				r.emit(protocol.RolloutEvent{Type: protocol.RolloutEventOutput, Phase: phase, Node: np.Node, Line: m + ": " + ev.Line})
			}
		})
		switch {
		case err != nil && errors.Is(err, plane.ErrNodeOffline):
			tried = append(tried, m+" (offline)")
			continue
		case err != nil:
			return m, fmt.Errorf("%s on member %s: %w", strings.ToUpper(what), m, err)
		case !res.OK:
			return m, fmt.Errorf("%s on member %s failed (exit %d): %s", strings.ToUpper(what), m, res.ExitCode, lines.String())
		}
		r.e.log.Info("membership step done", "cluster", r.plan.Cluster, "node", np.Node, "what", what, "via", m)
		return m, nil
	}
	if len(tried) == 0 {
		return "", fmt.Errorf("%s: no member of %s stays to run it", strings.ToUpper(what), np.Membership.Role)
	}
	return "", fmt.Errorf("%s: no member of %s took it: %s", strings.ToUpper(what), np.Membership.Role, strings.Join(tried, ", "))
}

// healthNode is where the health check runs: master0 once it holds the cluster,
// else the first member that stays (master0 may be the member that joins).
func (r *rolloutRun) healthNode() string {
	var master0 string
	for _, np := range r.plan.Nodes() {
		if np.Master0 {
			master0 = np.Node
			if np.Action != planner.ActionCreate {
				return master0
			}
		}
	}
	r.mu.Lock()
	out, done := r.outcomes[master0]
	r.mu.Unlock()
	if master0 != "" && done && out.Status == protocol.NodeOK {
		return master0
	}
	for _, np := range r.plan.Nodes() {
		if ms := np.Membership; ms != nil && len(ms.Via) > 0 {
			return ms.Via[0]
		}
	}
	return master0
}
