// Package planner turns a Clusterfile, a cluster image's plan and what each node reports
// it has applied into per-node plans grouped in phases; it is pure (no I/O).
//
// A node's work is ordered by the image's Seq: layers, rendered files and steps
// interleave as their instructions do in the Kubefile (at an equal Seq: layer, then file,
// then step). A step's digest covers its kind, rendered command, role, rendered env and
// the digest of every layer and file with a smaller Seq that the node gets, so a step
// runs again exactly when something it may depend on changed, and is skipped when the
// node already applied that digest.
//
// A Config document's file replaces the image's template at the same path (keeping its
// Seq); one that overrides a file from a layer gets the Seq of the node's last layer, so
// it is placed after every layer and before the steps declared after the last layer.
package planner

import (
	"net/netip"
	"sort"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Agent is what the inventory knows of one agent.
type Agent struct {
	Name string
	// IPs are the addresses the agent reports (claims): rendered into
	// templates, never used to select it.
	IPs []netip.Addr
	// VerifiedIPs are the addresses the controller saw it come from or an
	// admin pinned: the only ones a Clusterfile's IP or range selects by.
	VerifiedIPs []netip.Addr
	Arch        string
	Labels      map[string]string
	Online      bool
}

// Applied is what one node reports it has applied for one cluster.
type Applied struct {
	Image    string        // image digest of the last completed apply ("" if none)
	Roles    []string      // roles it was applied with
	Layers   []string      // digests of the layers present
	Steps    []string      // digests of the steps that succeeded
	Files    []AppliedFile // rendered files placed (templates and Configs)
	Services []string      // units started, in start order
	// Images are the container images the node's image cache holds for this cluster,
	// imported by the images step whose digest is ImagesDigest.
	Images       []AppliedImage
	ImagesDigest string
	// Cleanup are the rendered CLEANUP commands of the image the node last got (its
	// roles' ones, Kubefile order): what it runs when it leaves the cluster. Kept
	// here, not rendered again at removal, because a leaving node's facts (its
	// host entry, env, the masters it saw) may be gone from the Clusterfile.
	Cleanup []Step
	// Member is the node's membership in a role whose membership the image
	// manages (nil: none).
	Member *MemberRecord
}

// AppliedImage is one container image a node imported.
type AppliedImage struct {
	Name   string `json:"name"`
	Digest string `json:"digest"`
}

// AppliedFile is one rendered file a node placed.
type AppliedFile struct {
	Path   string `json:"path"`
	Digest string `json:"digest"`         // sha256:… of the content
	Mode   uint32 `json:"mode,omitempty"` // 0: unknown
}

// Input is everything the planner reads.
type Input struct {
	File        *clusterfile.File
	Image       *recipe.Recipe
	ImageDigest string // digest of the image (manifest or index)
	// ImageByArch optionally holds the plan of each platform of a multi-arch image, by
	// GOARCH ("amd64", "arm64"); a node whose Arch is listed uses it (its layers differ),
	// others use Image. Roles and phases always come from Image.
	ImageByArch map[string]*recipe.Recipe
	Agents      []Agent            // the inventory
	Applied     map[string]Applied // per node name, for this cluster (nodes no longer listed are removed)
	// Carried returns what a node of platform ("linux/arm64") needs of a carried
	// container image: every manifest, config and layer blob (the controller walks
	// its store with bundle/carry). Needed only when the image carries container images.
	Carried func(img recipe.ContainerImage, platform string) ([]ImageBlob, error)
}

// ImageBlob is one manifest or blob of a carried container image.
type ImageBlob struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	MediaType string `json:"mediaType"`
}

// Action says what a node's plan does overall (the wire's vocabulary).
type Action = protocol.NodeAction

// Node actions.
const (
	ActionCreate = protocol.ActionCreate
	ActionUpdate = protocol.ActionUpdate
	ActionNoop   = protocol.ActionNoop
	ActionRemove = protocol.ActionRemove
)

// PhaseRemove is the name of the last phase, holding the nodes that left the cluster.
const PhaseRemove = protocol.PhaseRemove

// ClusterPlan is the per-node work of one apply, in phases.
type ClusterPlan struct {
	Cluster     string              `json:"cluster"`
	Image       string              `json:"image"`
	ImageDigest string              `json:"imageDigest"`
	VIP         string              `json:"vip,omitempty"`
	Masters     []string            `json:"masters,omitempty"` // IPs, master0 first
	Phases      []Phase             `json:"phases"`            // run order; PhaseRemove last
	HealthCheck *Step               `json:"healthCheck,omitempty"`
	Rollout     clusterfile.Rollout `json:"-"`
}

// Phase is a group of nodes run with a barrier after it.
type Phase struct {
	Name        string     `json:"name"` // evict, master0, master, node, a custom role, or remove
	Parallelism int        `json:"parallelism"`
	Nodes       []NodePlan `json:"nodes"`
	// Quorum: the phase's nodes are members of a quorum role: one at a time, each
	// that changed followed by the health check.
	Quorum bool `json:"quorum,omitempty"`
}

// NodePlan is one node's work.
type NodePlan struct {
	Node    string   `json:"node"`
	IP      string   `json:"ip,omitempty"`
	Online  bool     `json:"online"`
	Roles   []string `json:"roles"`
	Master0 bool     `json:"master0,omitempty"`
	Index   int      `json:"index"` // position among the nodes of its phase (masters: master0 is 0)
	Action  Action   `json:"action"`
	// FromImage is the image digest the node last applied ("" if none), to show drift.
	FromImage string            `json:"fromImage,omitempty"`
	Env       map[string]string `json:"-"` // merged env; may hold secrets, so never printed
	Layers    []Layer           `json:"layers,omitempty"`
	Files     []File            `json:"files,omitempty"`
	Steps     []Step            `json:"steps,omitempty"`
	// Images are the container images the node's roles get (nil: none).
	Images *Images `json:"images,omitempty"`
	// DropImages names the container images the node holds for this cluster and no
	// longer gets (the images step or the remove-images undo drops them).
	DropImages []string `json:"dropImages,omitempty"`
	Undo       []Undo   `json:"undo,omitempty"`
	// Cleanup are the node's CLEANUP commands, rendered: a kept node's are recorded
	// in its applied state; a removed node (ActionRemove) runs its recorded ones,
	// last first, before its Undo.
	Cleanup []Step `json:"cleanup,omitempty"`
	// Backup is the image's BACKUP command rendered for the node (nil: the node
	// does not have its role); Restore has one entry per RESTORE stage of the
	// image, nil where the node does not have the stage's role (backup.go).
	Backup  *Step   `json:"-"`
	Restore []*Step `json:"-"`
	// Membership is the node's part in a managed role's membership (nil: none):
	// the JOIN to run for it before its work, or the LEAVE after its removal.
	Membership *Membership `json:"membership,omitempty"`
}

// Images is the container images a node gets, imported by one step placed after the
// layers and files before the node's first run or service step, so that every step
// can pull them from the node-local mirror. Its digest covers the cluster (the cache
// owner), the platform and every image's name and digest: a node that imported that
// set skips it, an upgrade imports the new set (fetching only the blobs the cache
// lacks) and the steps after it run again when it changed.
type Images struct {
	Platform string                  `json:"platform"` // linux/<node arch>
	Images   []recipe.ContainerImage `json:"images"`
	// Blobs is what the images need on Platform (manifests, configs, layers; each
	// once); Size their total, what a node with an empty cache fetches.
	Blobs  []ImageBlob `json:"blobs"`
	Size   int64       `json:"size"`
	Seq    int         `json:"seq"`
	Digest string      `json:"digest"`
	Skip   bool        `json:"skip,omitempty"` // the node imported this set already
}

// Layer is one image layer a node needs.
type Layer struct {
	Digest string `json:"digest"`
	DiffID string `json:"diffID"`
	Size   int64  `json:"size"`
	Role   string `json:"role"`
	Seq    int    `json:"seq"`
	Skip   bool   `json:"skip,omitempty"` // already present on the node
	// Unpack is how the node unpacks it (the image's dev.flotilla.unpack.*
	// labels); nil: the agent's defaults.
	Unpack *recipe.UnpackPolicy `json:"unpack,omitempty"`
	// Contents is what the layer's tar holds, from the image's recipe (nil if not recorded).
	Contents *protocol.LayerContents `json:"contents,omitempty"`
}

// File is one rendered file to place.
type File struct {
	Path    string `json:"path"`
	Mode    uint32 `json:"mode"`
	ModeWhy string `json:"modeWhy,omitempty"` // why it gets Mode (mode.go)
	Content []byte `json:"-"`                 // rendered; may hold secrets, so never printed
	Digest  string `json:"digest"`
	Seq     int    `json:"seq"`
	Source  string `json:"source"`         // "template" or "config/<name>"
	Skip    bool   `json:"skip,omitempty"` // the node has this content at this path already
}

// Step is one rendered run-time step.
type Step struct {
	Kind    string            `json:"kind"` // recipe.KindRun or recipe.KindService
	Command string            `json:"command"`
	Role    string            `json:"role"`
	Line    int               `json:"line,omitempty"` // Kubefile line
	Seq     int               `json:"seq"`
	Timeout time.Duration     `json:"timeout"`
	Env     map[string]string `json:"-"`
	Digest  string            `json:"digest"`
	Skip    bool              `json:"skip,omitempty"`
	Reason  string            `json:"reason"` // why it runs or why it is skipped
}

// UndoKind is what an Undo does (the wire's vocabulary).
type UndoKind = protocol.UndoKind

// Undo kinds, in the order they appear in NodePlan.Undo.
const (
	UndoStopService  = protocol.UndoStopService
	UndoRemoveFile   = protocol.UndoRemoveFile
	UndoRemoveLayer  = protocol.UndoRemoveLayer
	UndoCleanLvscare = protocol.UndoCleanLvscare // follows the stop of an lvscare unit (IsLvscareUnit): a stopped lvscare leaves its kernel rules in place on purpose
	UndoRemoveImages = protocol.UndoRemoveImages // drops the cluster's container images from the node's cache (Target: the cluster)
)

// Undo is one thing to take back on a node: services no longer wanted (reverse start
// order), rendered files no longer wanted, and layers no longer needed. Services and
// files are undone before the node's new work; layers after it, so that an upgrade never
// leaves a node without the files both versions share.
type Undo struct {
	Kind   UndoKind `json:"kind"`
	Target string   `json:"target"` // unit name, file path or layer digest
}

// Item is one entry of a node's work in run order (exactly one field set).
type Item struct {
	Seq    int
	Layer  *Layer
	File   *File
	Images *Images
	Step   *Step
}

// Ordered returns the node's layers, files and steps merged in run order.
func (n *NodePlan) Ordered() []Item {
	var out []Item
	for i := range n.Layers {
		out = append(out, Item{Seq: n.Layers[i].Seq, Layer: &n.Layers[i]})
	}
	for i := range n.Files {
		out = append(out, Item{Seq: n.Files[i].Seq, File: &n.Files[i]})
	}
	if n.Images != nil {
		out = append(out, Item{Seq: n.Images.Seq, Images: n.Images})
	}
	for i := range n.Steps {
		out = append(out, Item{Seq: n.Steps[i].Seq, Step: &n.Steps[i]})
	}
	rank := func(it Item) int {
		switch {
		case it.Layer != nil:
			return protocol.RankLayer
		case it.File != nil:
			return protocol.RankFile
		case it.Images != nil:
			return protocol.RankImages
		}
		return protocol.RankStep
	}
	sort.SliceStable(out, func(i, j int) bool { return protocol.RunsBefore(out[i].Seq, rank(out[i]), out[j].Seq, rank(out[j])) })
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

// Node returns the plan of the named node, or nil.
func (p *ClusterPlan) Node(name string) *NodePlan {
	for _, n := range p.Nodes() {
		if n.Node == name {
			return n
		}
	}
	return nil
}

// Changed reports whether applying the plan would do anything.
func (p *ClusterPlan) Changed() bool {
	for _, n := range p.Nodes() {
		if n.Action != ActionNoop {
			return true
		}
	}
	return false
}
