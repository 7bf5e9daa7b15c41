package protocol

import (
	"sort"
	"time"
)

// ClusterPlan is the reply to AdminPlan: what applying a Clusterfile would do on
// each node, in phases. Rendered contents and env are never in it (they may hold
// secrets).
type ClusterPlan struct {
	Cluster     string       `json:"cluster"`
	Image       string       `json:"image"`
	ImageDigest string       `json:"imageDigest"`
	VIP         string       `json:"vip,omitempty"`
	Masters     []string     `json:"masters,omitempty"` // IPs, master0 first
	Phases      []PlanPhase  `json:"phases"`            // run order; PhaseRemove last
	HealthCheck *PlannedStep `json:"healthCheck,omitempty"`
}

// PlanPhase is a group of nodes run with a barrier after it.
type PlanPhase struct {
	Name        string     `json:"name"` // PhaseEvict, master0, master, node, a custom role, or PhaseRemove
	Parallelism int        `json:"parallelism"`
	Nodes       []NodePlan `json:"nodes"`
	// Quorum: members of a quorum role, changed one at a time with the health
	// check after each.
	Quorum bool `json:"quorum,omitempty"`
}

// PhaseEvict is the first phase when there is one: members whose machine is
// offline leave their role's membership (LEAVE on a member that stays) before any
// member joins.
const PhaseEvict = "evict"

// PhaseRemove is the name of the last phase, holding the nodes that left the cluster.
const PhaseRemove = "remove"

// NodeAction says what a node's plan does overall.
type NodeAction string

// Node actions.
const (
	ActionCreate NodeAction = "create" // the node has nothing of this cluster yet
	ActionUpdate NodeAction = "update" // some layers, files, steps or undos to do
	ActionNoop   NodeAction = "noop"   // everything is applied already
	ActionRemove NodeAction = "remove" // the node left the Clusterfile: undo everything
)

// NodePlan is one node's planned work.
type NodePlan struct {
	Node    string     `json:"node"`
	IP      string     `json:"ip,omitempty"`
	Online  bool       `json:"online"`
	Roles   []string   `json:"roles"`
	Master0 bool       `json:"master0,omitempty"`
	Index   int        `json:"index"` // position among the nodes of its phase (masters: master0 is 0)
	Action  NodeAction `json:"action"`
	// FromImage is the image digest the node last applied ("" if none), to show drift.
	FromImage string         `json:"fromImage,omitempty"`
	Layers    []PlannedLayer `json:"layers,omitempty"`
	Files     []PlannedFile  `json:"files,omitempty"`
	Steps     []PlannedStep  `json:"steps,omitempty"`
	// Images are the container images the node's roles get (nil: none).
	Images *PlannedImages `json:"images,omitempty"`
	// DropImages names the container images the node holds for this cluster and
	// no longer gets.
	DropImages []string      `json:"dropImages,omitempty"`
	Undo       []PlannedUndo `json:"undo,omitempty"`
	// Cleanup are the image's CLEANUP commands for the node's roles. A node that
	// stays only records them; a node that leaves the cluster (Action remove)
	// runs them, last first, before its Undo.
	Cleanup []PlannedStep `json:"cleanup,omitempty"`
	// Membership is the node's part in a membership the image manages (QUORUM,
	// JOIN, LEAVE): nil when it has none.
	Membership *PlannedMembership `json:"membership,omitempty"`
}

// PlannedMembership is a node's membership in a role: its state and peers as its
// templates see them, and the JOIN it needs before its work or the LEAVE after its
// removal, each run on the first member of Via that is online.
type PlannedMembership struct {
	Role   string        `json:"role"`
	Quorum bool          `json:"quorum,omitempty"`
	State  string        `json:"state,omitempty"` // "new" (founding member) or "existing" (joined a running one)
	Peers  []string      `json:"peers,omitempty"`
	Join   []PlannedStep `json:"join,omitempty"`
	Leave  []PlannedStep `json:"leave,omitempty"`
	Via    []string      `json:"via,omitempty"`
}

// PlannedImages is a node's images step: the container images it imports
// into its cache, placed before its first run or service step.
type PlannedImages struct {
	Platform string                  `json:"platform"` // linux/<node arch>
	Images   []PlannedContainerImage `json:"images"`
	// Blobs is what the images need on Platform (manifests, configs, layers;
	// each once); Size their total, what a node with an empty cache fetches.
	Blobs  []PlannedBlob `json:"blobs"`
	Size   int64         `json:"size"`
	Seq    int           `json:"seq"`
	Digest string        `json:"digest"`
	Skip   bool          `json:"skip,omitempty"` // the node imported this set already
}

// PlannedContainerImage is one carried container image a node gets.
type PlannedContainerImage struct {
	Ref       string   `json:"ref"`  // as the Kubefile wrote it
	Name      string   `json:"name"` // as containerd spells it
	Digest    string   `json:"digest"`
	MediaType string   `json:"mediaType"`
	Size      int64    `json:"size"`
	Roles     []string `json:"roles"`
}

// PlannedBlob is one manifest or blob of a carried container image.
type PlannedBlob struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	MediaType string `json:"mediaType"`
}

// PlannedLayer is one image layer a node needs.
type PlannedLayer struct {
	Digest string `json:"digest"`
	DiffID string `json:"diffID"`
	Size   int64  `json:"size"`
	Role   string `json:"role"`
	Seq    int    `json:"seq"`
	Skip   bool   `json:"skip,omitempty"` // already present on the node
}

// PlannedFile is one rendered file to place.
type PlannedFile struct {
	Path   string `json:"path"`
	Mode   uint32 `json:"mode"`
	Digest string `json:"digest"`
	Seq    int    `json:"seq"`
	Source string `json:"source"`         // "template" or "config/<name>"
	Skip   bool   `json:"skip,omitempty"` // the node has this content at this path already
}

// PlannedStep is one rendered run-time step.
type PlannedStep struct {
	Kind    string        `json:"kind"` // KindRun or KindService
	Command string        `json:"command"`
	Role    string        `json:"role"`
	Line    int           `json:"line,omitempty"` // Kubefile line
	Seq     int           `json:"seq"`
	Timeout time.Duration `json:"timeout"`
	Digest  string        `json:"digest"`
	Skip    bool          `json:"skip,omitempty"`
	Reason  string        `json:"reason"` // why it runs or why it is skipped
}

// UndoKind is what an undo does: UndoStopService, UndoRemoveFile or
// UndoRemoveLayer (in the order they appear in NodePlan.Undo), or UndoForget.
type UndoKind string

// PlannedUndo is one thing to take back on a node (unit name, file path or layer digest).
type PlannedUndo struct {
	Kind   UndoKind `json:"kind"`
	Target string   `json:"target"`
}

// The kinds of a node's work, in the order they run at an equal Seq.
const (
	RankLayer = iota
	RankFile
	RankImages
	RankStep
)

// RunsBefore is the run order of a node's work, the one rule the planner and
// every reader of a plan follow: by Seq (the instruction's place in the
// image), and at an equal Seq by kind (RankLayer first, RankStep last).
func RunsBefore(seqA, rankA, seqB, rankB int) bool {
	if seqA != seqB {
		return seqA < seqB
	}
	return rankA < rankB
}

// PlanItem is one entry of a node's work in run order (exactly one field set).
type PlanItem struct {
	Seq    int
	Layer  *PlannedLayer
	File   *PlannedFile
	Images *PlannedImages
	Step   *PlannedStep
}

// Ordered returns the node's layers, files, images step and steps merged in run
// order: by Seq, and at an equal Seq layer, then file, then images, then step.
func (n *NodePlan) Ordered() []PlanItem {
	var out []PlanItem
	for i := range n.Layers {
		out = append(out, PlanItem{Seq: n.Layers[i].Seq, Layer: &n.Layers[i]})
	}
	for i := range n.Files {
		out = append(out, PlanItem{Seq: n.Files[i].Seq, File: &n.Files[i]})
	}
	if n.Images != nil {
		out = append(out, PlanItem{Seq: n.Images.Seq, Images: n.Images})
	}
	for i := range n.Steps {
		out = append(out, PlanItem{Seq: n.Steps[i].Seq, Step: &n.Steps[i]})
	}
	rank := func(it PlanItem) int {
		switch {
		case it.Layer != nil:
			return RankLayer
		case it.File != nil:
			return RankFile
		case it.Images != nil:
			return RankImages
		}
		return RankStep
	}
	sort.SliceStable(out, func(i, j int) bool { return RunsBefore(out[i].Seq, rank(out[i]), out[j].Seq, rank(out[j])) })
	return out
}

// Nodes returns every node plan in run order.
func (p *ClusterPlan) Nodes() []*NodePlan {
	var out []*NodePlan
	for i := range p.Phases {
		for j := range p.Phases[i].Nodes {
			out = append(out, &p.Phases[i].Nodes[j])
		}
	}
	return out
}
