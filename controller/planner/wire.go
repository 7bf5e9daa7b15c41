package planner

import "github.com/flotilla-dev/flotilla/protocol"

// Wire is the plan as the controller answers `flotilla plan` (protocol.ClusterPlan):
// the same fields and JSON, without rendered contents, env and rollout settings.
func (p *ClusterPlan) Wire() *protocol.ClusterPlan {
	out := &protocol.ClusterPlan{Cluster: p.Cluster, Image: p.Image, ImageDigest: p.ImageDigest, VIP: p.VIP,
		Masters: p.Masters, Phases: make([]protocol.PlanPhase, 0, len(p.Phases))}
	if p.HealthCheck != nil {
		s := p.HealthCheck.wire()
		out.HealthCheck = &s
	}
	for _, ph := range p.Phases {
		wp := protocol.PlanPhase{Name: ph.Name, Parallelism: ph.Parallelism, Quorum: ph.Quorum, Nodes: make([]protocol.NodePlan, 0, len(ph.Nodes))}
		for _, n := range ph.Nodes {
			wp.Nodes = append(wp.Nodes, n.wire())
		}
		out.Phases = append(out.Phases, wp)
	}
	return out
}

func (n *NodePlan) wire() protocol.NodePlan {
	out := protocol.NodePlan{Node: n.Node, IP: n.IP, Online: n.Online, Roles: n.Roles, Master0: n.Master0,
		Index: n.Index, Action: n.Action, FromImage: n.FromImage}
	for _, l := range n.Layers {
		out.Layers = append(out.Layers, protocol.PlannedLayer{Digest: l.Digest, DiffID: l.DiffID, Size: l.Size, Role: l.Role, Seq: l.Seq, Skip: l.Skip})
	}
	for _, f := range n.Files {
		out.Files = append(out.Files, protocol.PlannedFile{Path: f.Path, Mode: f.Mode, Digest: f.Digest, Seq: f.Seq, Source: f.Source, Skip: f.Skip})
	}
	for _, s := range n.Steps {
		out.Steps = append(out.Steps, s.wire())
	}
	for _, u := range n.Undo {
		out.Undo = append(out.Undo, protocol.PlannedUndo{Kind: u.Kind, Target: u.Target})
	}
	for _, s := range n.Cleanup {
		out.Cleanup = append(out.Cleanup, s.wire())
	}
	out.DropImages = n.DropImages
	if ms := n.Membership; ms != nil {
		w := &protocol.PlannedMembership{Role: ms.Role, Quorum: ms.Quorum, State: ms.State, Peers: ms.Peers, Via: ms.Via}
		for _, s := range ms.Join {
			w.Join = append(w.Join, s.wire())
		}
		for _, s := range ms.Leave {
			w.Leave = append(w.Leave, s.wire())
		}
		out.Membership = w
	}
	if im := n.Images; im != nil {
		w := &protocol.PlannedImages{Platform: im.Platform, Size: im.Size, Seq: im.Seq, Digest: im.Digest, Skip: im.Skip,
			Images: make([]protocol.PlannedContainerImage, 0, len(im.Images)), Blobs: make([]protocol.PlannedBlob, 0, len(im.Blobs))}
		for _, ci := range im.Images {
			w.Images = append(w.Images, protocol.PlannedContainerImage{Ref: ci.Ref, Name: ci.Name, Digest: ci.Digest,
				MediaType: ci.MediaType, Size: ci.Size, Roles: ci.Roles})
		}
		for _, b := range im.Blobs {
			w.Blobs = append(w.Blobs, protocol.PlannedBlob{Digest: b.Digest, Size: b.Size, MediaType: b.MediaType})
		}
		out.Images = w
	}
	return out
}

func (s *Step) wire() protocol.PlannedStep {
	return protocol.PlannedStep{Kind: s.Kind, Command: s.Command, Role: s.Role, Line: s.Line, Seq: s.Seq,
		Timeout: s.Timeout, Digest: s.Digest, Skip: s.Skip, Reason: s.Reason}
}
