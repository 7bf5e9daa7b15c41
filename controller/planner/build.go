package planner

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Plan computes the per-node plans of one apply. It fails before anything runs on an
// unknown role, a host entry that matches no agent, an agent matched twice, a bad step
// timeout or a template that does not render (the error names the file and the key).
func Plan(in Input) (*ClusterPlan, error) {
	if in.File == nil {
		return nil, errors.New("plan: no Clusterfile")
	}
	if in.Image == nil {
		return nil, fmt.Errorf("plan: image %s has no plan: is it a flotilla cluster image?", in.File.Cluster.Image)
	}
	c := &in.File.Cluster
	if c.File() == "" {
		c.SetFile(in.File.Path)
	}
	if err := c.ValidateRoles(in.Image.Roles); err != nil {
		return nil, err
	}
	if err := validateConfigs(in.File, in.Image.Roles); err != nil {
		return nil, err
	}
	members, err := selectHosts(c, in.Agents)
	if err != nil {
		return nil, err
	}
	memberships, err := planMembership(in, members)
	if err != nil {
		return nil, err
	}

	out := &ClusterPlan{Cluster: c.Name, Image: c.Image, ImageDigest: in.ImageDigest, VIP: c.VIP, Rollout: c.Rollout}
	facts := ClusterFacts{Name: c.Name, VIP: c.VIP, Image: c.Image}
	master0 := -1
	for i, m := range members {
		if slices.Contains(m.host.Roles, recipe.RoleMaster) {
			if master0 < 0 {
				master0 = i
			}
			facts.Masters = append(facts.Masters, m.ip)
		}
		if slices.Contains(m.host.Roles, recipe.RoleNode) {
			facts.Nodes = append(facts.Nodes, m.ip)
		}
	}
	out.Masters = facts.Masters

	order := phaseOrder(in.Image.Roles)
	byPhase := map[string][]NodePlan{}
	var errs []error
	selected := map[string]bool{}
	for i, m := range members {
		selected[m.agent.Name] = true
		phase := phaseOf(m.host.Roles, i == master0, in.Image.Roles)
		index := len(byPhase[phase])
		if phase == recipe.RoleMaster {
			index += len(byPhase[recipe.RoleMaster0])
		}
		var ms *Membership
		if rm := memberships[in.Image.MemberRole(m.host.Roles)]; rm != nil {
			ms = rm.facts[m.agent.Name]
		}
		np, err := nodePlan(in, c, m, facts, i == master0, index, ms)
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", m.agent.Name, err))
			continue
		}
		byPhase[phase] = append(byPhase[phase], *np)
		if i == master0 && in.Image.Cmd != nil {
			hc, err := renderStep(in.Image.Cmd, c, np.Env, dataFor(np, m, facts), nil, nil, nil)
			if err != nil {
				errs = append(errs, fmt.Errorf("node %s: CMD: %w", m.agent.Name, err))
			} else {
				hc.Reason = "health check after every phase"
				out.HealthCheck = hc
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	total := len(members)
	for _, ph := range order {
		if nodes := byPhase[ph]; len(nodes) > 0 {
			p := Phase{Name: ph, Parallelism: c.Rollout.ParallelismFor(ph, total), Nodes: nodes}
			role := ph
			if ph == recipe.RoleMaster0 {
				role = recipe.RoleMaster
			}
			if rm := memberships[role]; rm != nil && rm.quorum {
				p.Quorum, p.Parallelism = true, 1 // one member at a time
			}
			out.Phases = append(out.Phases, p)
		}
	}
	evict, removed, err := leavers(in, removals(in, selected, order), memberships, facts)
	if err != nil {
		return nil, err
	}
	if len(evict) > 0 {
		out.Phases = append([]Phase{{Name: PhaseEvict, Parallelism: 1, Nodes: evict, Quorum: true}}, out.Phases...)
	}
	if len(removed) > 0 {
		out.Phases = append(out.Phases, Phase{Name: PhaseRemove, Parallelism: c.Rollout.ParallelismFor(PhaseRemove, total), Nodes: removed})
	}
	return out, nil
}

// leavers gives each removed node that leaves a managed role's membership its LEAVE
// commands (recorded when it was applied, else rendered from what is known of it),
// and moves those whose machine is offline to the evict phase: they cannot run their
// CLEANUP, and a dead member must leave the membership before another joins.
func leavers(in Input, removed []NodePlan, memberships map[string]*roleMembers, facts ClusterFacts) (evict, remove []NodePlan, err error) {
	c := &in.File.Cluster
	for _, np := range removed {
		var rm *roleMembers
		for _, r := range memberships {
			if slices.Contains(r.leaving, np.Node) {
				rm = r
			}
		}
		if a := in.Applied[np.Node]; rm == nil && a.Member != nil && a.Member.Left && !np.Online {
			// Left its membership while offline (an earlier evict): still gone, so
			// nothing to wait for; its removal runs once it is back.
			np.Membership = &Membership{Role: a.Member.Role}
			evict = append(evict, np)
			continue
		}
		if rm == nil {
			remove = append(remove, np)
			continue
		}
		ms := &Membership{Role: rm.role, Quorum: rm.quorum, Via: rm.via}
		a := in.Applied[np.Node]
		if a.Member != nil && a.Member.Leave != nil {
			ms.Leave = slices.Clone(a.Member.Leave)
		} else {
			ip := np.IP
			if a.Member != nil && a.Member.IP != "" {
				ip = a.Member.IP
			}
			data := &Data{Node: NodeFacts{Name: np.Node, IP: ip, Roles: np.Roles, Labels: map[string]string{}}, Cluster: facts,
				Env: mergeEnv(in.Image.Env, c.Env), VIP: facts.VIP, Member: MemberFacts{Role: rm.role}}
			if ms.Leave, err = renderMemberSteps(in.Image.Leave, rm.role, c, data.Env, data); err != nil {
				return nil, nil, fmt.Errorf("node %s (leaving): LEAVE: %w", np.Node, err)
			}
		}
		for i := range ms.Leave {
			ms.Leave[i].Reason = "the node leaves the " + rm.role + " membership"
		}
		np.Membership = ms
		if !np.Online {
			evict = append(evict, np)
			continue
		}
		remove = append(remove, np)
	}
	return evict, remove, nil
}

// phaseOrder is master0, master, node, then the image's custom roles in its order.
func phaseOrder(imageRoles []string) []string {
	out := []string{recipe.RoleMaster0, recipe.RoleMaster, recipe.RoleNode}
	for _, r := range imageRoles {
		if !slices.Contains(out, r) && r != recipe.RoleAll {
			out = append(out, r)
		}
	}
	return out
}

// phaseOf puts a node in the earliest phase among its roles.
func phaseOf(roles []string, isMaster0 bool, imageRoles []string) string {
	if isMaster0 {
		return recipe.RoleMaster0
	}
	for _, ph := range phaseOrder(imageRoles)[1:] {
		if slices.Contains(roles, ph) {
			return ph
		}
	}
	return roles[0] // unreachable after ValidateRoles
}

func validateConfigs(f *clusterfile.File, imageRoles []string) error {
	var errs []error
	for _, cfg := range f.Configs {
		if cfg.Role == "" || cfg.Role == recipe.RoleMaster0 || cfg.Role == recipe.RoleMaster || cfg.Role == recipe.RoleNode || slices.Contains(imageRoles, cfg.Role) {
			continue
		}
		declared := []string{recipe.RoleMaster, recipe.RoleNode}
		for _, r := range phaseOrder(imageRoles)[3:] {
			declared = append(declared, r)
		}
		errs = append(errs, &clusterfile.FieldError{File: f.Path, Line: cfg.RoleLine, Field: "spec.role",
			Msg: fmt.Sprintf("Config %q: unknown role %q (the image declares: %s)", cfg.Name, cfg.Role, strings.Join(declared, ", "))})
	}
	return errors.Join(errs...)
}

func dataFor(np *NodePlan, m member, facts ClusterFacts) *Data {
	ips := make([]string, len(m.agent.IPs))
	for i, ip := range m.agent.IPs {
		ips[i] = ip.String()
	}
	return &Data{
		Node: NodeFacts{Name: m.agent.Name, IP: m.ip, IPs: ips, Index: np.Index, Arch: m.agent.Arch,
			Labels: nonNil(m.agent.Labels), Roles: np.Roles},
		Cluster: facts,
		Env:     np.Env,
		VIP:     facts.VIP,
	}
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// nodePlan renders one selected node's layers, files and steps and compares them with
// what the node applied.
func nodePlan(in Input, c *clusterfile.Cluster, m member, facts ClusterFacts, isMaster0 bool, index int, ms *Membership) (*NodePlan, error) {
	img := in.Image
	if p, ok := in.ImageByArch[m.agent.Arch]; ok && p != nil {
		img = p
	}
	roles := slices.Clone(m.host.Roles)
	np := &NodePlan{Node: m.agent.Name, IP: m.ip, Online: m.agent.Online, Roles: roles, Master0: isMaster0, Index: index,
		Env: mergeEnv(img.Env, c.Env, m.host.Env)}
	applied, ok := in.Applied[m.agent.Name]
	// A record holding only a membership (written before the node's first step) is
	// not an applied node yet.
	known := ok && (applied.Image != "" || len(applied.Steps)+len(applied.Layers)+len(applied.Files) > 0)
	np.FromImage = applied.Image
	data := dataFor(np, m, facts)
	if ms != nil {
		if err := planMember(img, c, np, ms, data); err != nil {
			return nil, err
		}
	}

	unpack, err := img.Unpack()
	if err != nil {
		return nil, err
	}
	var up *recipe.UnpackPolicy
	if unpack != (recipe.UnpackPolicy{}) {
		up = &unpack
	}
	maxLayerSeq := 0
	for _, l := range img.LayersFor(roles, isMaster0) {
		np.Layers = append(np.Layers, Layer{Digest: l.Digest, DiffID: l.DiffID, Size: l.Size, Role: l.Role, Seq: l.Seq,
			Skip: slices.Contains(applied.Layers, l.Digest), Unpack: up, Contents: l.Contents})
		maxLayerSeq = max(maxLayerSeq, l.Seq)
	}

	overrides := map[string]clusterfile.Config{}
	for _, cfg := range in.File.Configs {
		if cfg.Role == "" || recipe.RoleMatches(cfg.Role, roles, isMaster0) {
			overrides[cfg.Path] = cfg
		}
	}
	for _, t := range img.TemplatesFor(roles, isMaster0) {
		f := File{Path: t.Path, Seq: t.Seq, Source: "template"}
		src, mode := t.Content, modeInputFor(t.Path, t.Mode)
		if t.ExplicitMode {
			mode.explicit = "COPY --chmod"
		}
		if cfg, ok := overrides[t.Path]; ok {
			delete(overrides, t.Path)
			src, mode.template, f.Source = cfg.Content, cfg.Template, "config/"+cfg.Name
			if cfg.Mode != 0 {
				mode.mode, mode.explicit = cfg.Mode, "spec.mode of Config "+cfg.Name
			}
		}
		if err := fill(&f, src, mode, data); err != nil {
			return nil, err
		}
		np.Files = append(np.Files, f)
	}
	for _, path := range slices.Sorted(maps.Keys(overrides)) {
		cfg := overrides[path]
		f := File{Path: path, Seq: maxLayerSeq, Source: "config/" + cfg.Name}
		mode := modeInputFor(path, 0o644)
		mode.template = cfg.Template
		if cfg.Mode != 0 {
			mode.mode, mode.explicit = cfg.Mode, "spec.mode of Config "+cfg.Name
		}
		if err := fill(&f, cfg.Content, mode, data); err != nil {
			return nil, err
		}
		np.Files = append(np.Files, f)
	}
	for i := range np.Files {
		np.Files[i].Skip = fileApplied(applied.Files, np.Files[i])
	}

	if err := planImages(in, np, img, m.agent.Arch, applied, isMaster0); err != nil {
		return nil, err
	}

	var services []string
	for _, s := range img.StepsFor(roles, isMaster0) {
		st, err := renderStep(&s, c, np.Env, data, np.Layers, np.Files, np.Images)
		if err != nil {
			return nil, err
		}
		switch {
		case slices.Contains(applied.Steps, st.Digest):
			st.Skip, st.Reason = true, "applied "+protocol.ShortDigest(st.Digest)
		case !known:
			st.Reason = "new node"
		default:
			st.Reason = changedBefore(st.Seq, np.Layers, np.Files, np.Images)
		}
		if st.Kind == recipe.KindService {
			services = append(services, st.Command)
		}
		np.Steps = append(np.Steps, *st)
	}

	for _, s := range img.CleanupFor(roles, isMaster0) {
		st, err := renderStep(&s, c, np.Env, data, nil, nil, nil)
		if err != nil {
			return nil, err
		}
		st.Reason = "runs when the node leaves the cluster"
		np.Cleanup = append(np.Cleanup, *st)
	}
	if err := renderBackup(img, c, np, data, isMaster0); err != nil {
		return nil, err
	}

	np.Undo = undoFor(applied, services, np.Files, np.Layers, img, np.Images != nil, c.Name)
	np.Action = ActionNoop
	switch {
	case !known:
		np.Action = ActionCreate
	case np.hasWork():
		np.Action = ActionUpdate
	}
	return np, nil
}

// planMember gives a member of a managed role its template facts, the LEAVE commands
// its applied state keeps and, when it joins, the JOIN commands a member runs first.
func planMember(img *recipe.Recipe, c *clusterfile.Cluster, np *NodePlan, ms *Membership, data *Data) error {
	data.Member = MemberFacts{Role: ms.Role, State: ms.State, Peers: slices.Clone(ms.Peers)}
	np.Membership = ms
	leave, err := renderMemberSteps(img.Leave, ms.Role, c, np.Env, data)
	if err != nil {
		return fmt.Errorf("LEAVE: %w", err)
	}
	ms.Record.Leave = leave
	if ms.Record.Joined {
		ms.Via = nil
		return nil
	}
	if len(ms.Via) == 0 {
		return fmt.Errorf("joins the %s membership, but no member of it stays to run its JOIN: keep at least one member in this apply", ms.Role)
	}
	if ms.Join, err = renderMemberSteps(img.Join, ms.Role, c, np.Env, data); err != nil {
		return fmt.Errorf("JOIN: %w", err)
	}
	for i := range ms.Join {
		ms.Join[i].Reason = "runs on a member before " + np.Node + " joins"
	}
	return nil
}

// changedBefore explains why a known node runs a step again: the last changed input
// before it, or the step itself (command, env or role) changed.
func changedBefore(seq int, layers []Layer, files []File, images *Images) string {
	reason, at := "step or its env changed", -1
	if images != nil && !images.Skip && images.Seq <= seq {
		reason, at = "container images changed", images.Seq
	}
	for _, l := range layers {
		if !l.Skip && l.Seq < seq && l.Seq > at {
			reason, at = "layer "+protocol.ShortDigest(l.Digest)+" changed", l.Seq
		}
	}
	for _, f := range files {
		if !f.Skip && f.Seq < seq && f.Seq >= at {
			reason, at = f.Path+" changed", f.Seq
		}
	}
	return reason
}

func (n *NodePlan) hasWork() bool {
	if len(n.Undo) > 0 || (n.Membership != nil && len(n.Membership.Join) > 0) {
		return true
	}
	for _, l := range n.Layers {
		if !l.Skip {
			return true
		}
	}
	for _, f := range n.Files {
		if !f.Skip {
			return true
		}
	}
	for _, s := range n.Steps {
		if !s.Skip {
			return true
		}
	}
	return n.Images != nil && !n.Images.Skip
}

// fill renders f's content from src (a template when mode.template) and decides its
// mode from what the template reads (mode.go).
func fill(f *File, src string, mode modeInput, data *Data) error {
	b := []byte(src)
	if mode.template {
		t, err := parseTemplate(f.Path, src)
		if err != nil {
			return err
		}
		mode.env = envOf(t)
		if b, err = execute(t, data, escaperForFile(f.Path)); err != nil {
			return err
		}
	}
	choice := decideMode(mode)
	f.Content, f.Digest, f.Mode, f.ModeWhy = b, sha(b), choice.Mode, choice.Why
	return nil
}

func fileApplied(applied []AppliedFile, f File) bool {
	for _, a := range applied {
		if a.Path == f.Path {
			return a.Digest == f.Digest && (a.Mode == 0 || a.Mode == f.Mode)
		}
	}
	return false
}

// renderStep renders a step's command and computes its digest over what precedes it.
func renderStep(s *recipe.Step, c *clusterfile.Cluster, env map[string]string, data *Data, layers []Layer, files []File, images *Images) (*Step, error) {
	name := fmt.Sprintf("step %s %s (Kubefile line %d)", strings.ToUpper(s.Kind), s.Command, s.Line)
	cmd := s.Command
	if strings.Contains(cmd, "{{") {
		// A RUN or CMD is a shell command: every value in it is one quoted word.
		esc := escapeNone
		if s.Kind == recipe.KindRun {
			esc = escapeShell
		}
		b, err := render(name, cmd, data, esc)
		if err != nil {
			return nil, err
		}
		cmd = string(b)
	}
	timeout := c.Rollout.StepTimeout
	if s.Timeout != "" {
		d, err := time.ParseDuration(s.Timeout)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%s: timeout %q is not a positive duration", name, s.Timeout)
		}
		timeout = d
	}
	st := &Step{Kind: s.Kind, Command: cmd, Role: s.Role, Line: s.Line, Seq: s.Seq, Timeout: timeout, Env: env}
	st.Digest = stepDigest(st, layers, files, images)
	return st, nil
}

// undoFor lists what a kept node no longer needs: services (reverse start order), then
// rendered files, then layers, then the cluster's container images when the node gets
// none any more (a changed set is replaced by the images step itself).
func undoFor(a Applied, services []string, files []File, layers []Layer, img *recipe.Recipe, keepImages bool, cluster string) []Undo {
	var out []Undo
	for i := len(a.Services) - 1; i >= 0; i-- {
		if !slices.Contains(services, a.Services[i]) {
			out = append(out, Undo{Kind: UndoStopService, Target: a.Services[i]})
			if IsLvscareUnit(img, a.Services[i]) {
				out = append(out, Undo{Kind: UndoCleanLvscare, Target: a.Services[i]})
			}
		}
	}
	for i := len(a.Files) - 1; i >= 0; i-- {
		if !slices.ContainsFunc(files, func(f File) bool { return f.Path == a.Files[i].Path }) {
			out = append(out, Undo{Kind: UndoRemoveFile, Target: a.Files[i].Path})
		}
	}
	for i := len(a.Layers) - 1; i >= 0; i-- {
		if !slices.ContainsFunc(layers, func(l Layer) bool { return l.Digest == a.Layers[i] }) {
			out = append(out, Undo{Kind: UndoRemoveLayer, Target: a.Layers[i]})
		}
	}
	if !keepImages && (len(a.Images) > 0 || a.ImagesDigest != "") {
		out = append(out, Undo{Kind: UndoRemoveImages, Target: cluster})
	}
	return out
}

// removals plans the nodes that applied this cluster but are no longer selected, last
// phase first (custom roles, nodes, then masters), then by name.
func removals(in Input, selected map[string]bool, order []string) []NodePlan {
	agents := map[string]Agent{}
	for _, a := range in.Agents {
		agents[a.Name] = a
	}
	var out []NodePlan
	for _, name := range slices.Sorted(maps.Keys(in.Applied)) {
		if selected[name] {
			continue
		}
		a := in.Applied[name]
		np := NodePlan{Node: name, Roles: a.Roles, Action: ActionRemove, FromImage: a.Image, Undo: undoFor(a, nil, nil, nil, in.Image, false, in.File.Cluster.Name),
			DropImages: appliedImageNames(a.Images), Cleanup: slices.Clone(a.Cleanup)}
		for i := range np.Cleanup {
			np.Cleanup[i].Reason = "the node leaves the cluster"
		}
		if ag, ok := agents[name]; ok {
			np.Online = ag.Online
			if len(ag.IPs) > 0 {
				np.IP = ag.IPs[0].String()
			}
		}
		out = append(out, np)
	}
	rank := func(roles []string) int {
		r := -1
		for i, ph := range order {
			if slices.Contains(roles, ph) {
				r = max(r, i)
			}
		}
		return r
	}
	sort.SliceStable(out, func(i, j int) bool { return rank(out[i].Roles) > rank(out[j].Roles) })
	return out
}
