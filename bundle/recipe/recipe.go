// Package recipe is the model of what a cluster image does at run time: its
// roles, their ordered steps, env defaults, templates and the layers each role
// needs. It is the image's recipe; the controller's planner turns it, with a
// Clusterfile and the fleet, into per-node plans (what `flotilla plan` shows).
//
// The builder writes a Recipe into the image config (label LabelKey, JSON) and
// the controller's planner reads it back; both sides share only these types.
// It imports nothing of flotilla but protocol (for the step kinds).
package recipe

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/flotilla-dev/flotilla/protocol"
)

// LabelKey is the image-config label that carries the JSON-encoded Recipe
// (it keeps its first name, so images built before the rename still plan).
// Config labels travel with the image through crane, skopeo and any registry.
const LabelKey = "dev.flotilla.plan"

// SchemaVersion is the version of the Recipe encoding written by this build.
const SchemaVersion = 1

// Well-known roles. Any other lower-case name is a custom role.
const (
	RoleAll     = "all"     // every host
	RoleMaster0 = "master0" // the first master only
	RoleMaster  = "master"  // every master, master0 included
	RoleNode    = "node"    // every worker
)

// Step kinds that run on a node at rollout time: the wire's kinds.
const (
	KindRun     = protocol.KindRun     // a shell command (`ON role RUN cmd`)
	KindService = protocol.KindService // install, enable, start and wait for a systemd unit (`ON role SERVICE unit`)
)

// Recipe is everything the controller needs to turn an image into per-node work.
type Recipe struct {
	SchemaVersion int `json:"schemaVersion"`
	// Env holds the ENV defaults in declaration order of first appearance (map for lookup).
	Env map[string]string `json:"env,omitempty"`
	// Labels are the image's LABEL values.
	Labels map[string]string `json:"labels,omitempty"`
	// Roles lists every role the image names, in the order of first appearance.
	Roles []string `json:"roles,omitempty"`
	// Layers lists the image's layers in manifest order with the role that needs them.
	Layers []Layer `json:"layers,omitempty"`
	// Templates are files rendered per node (`*.tmpl` sources); they are not in any layer.
	Templates []Template `json:"templates,omitempty"`
	// Steps are the run-time steps in Kubefile order.
	Steps []Step `json:"steps,omitempty"`
	// Cmd is the health check run on master0 after every phase (may be nil).
	Cmd *Step `json:"cmd,omitempty"`
	// Cleanup are the CLEANUP commands in Kubefile order (a base image's first): what a
	// node of their role runs when it leaves the cluster (removed from the Clusterfile,
	// or the cluster deleted), last first, before its services are stopped and its
	// files removed. Kind is KindRun.
	Cleanup []Step `json:"cleanup,omitempty"`
	// Quorum lists the roles whose members form a quorum (QUORUM <role>): their
	// membership changes one member at a time, each followed by the health check,
	// and an apply that would remove a majority of them is refused.
	Quorum []string `json:"quorum,omitempty"`
	// Join are the JOIN commands (Kubefile order): run on one healthy existing member
	// of their role before a new member of that role runs its own steps, rendered for
	// the new member (.Node is the member joining). Kind is KindRun.
	Join []Step `json:"join,omitempty"`
	// Leave are the LEAVE commands: run on one healthy remaining member of their role
	// after a member left (after its CLEANUP, or instead of it when its machine is
	// gone), rendered for the member leaving. Kind is KindRun.
	Leave []Step `json:"leave,omitempty"`
	// Backup is the BACKUP command (at most one): run on one healthy member of its role
	// by `flotilla backup`, it writes the backup to the file $FLOTILLA_BACKUP names.
	Backup *Step `json:"backup,omitempty"`
	// Restore are the RESTORE commands in order: each is a stage run on every member of
	// its role (all of a stage's members done before the next stage starts) by
	// `flotilla restore`, with $FLOTILLA_BACKUP naming the backup file on the node.
	Restore []Step `json:"restore,omitempty"`
	// Images are the container images carried for the node-local registry mirror, in
	// Kubefile order (a base image's first). Their manifests and blobs travel inside the
	// cluster image (see bundle/carry); the planner ships each node those of its roles.
	Images []ContainerImage `json:"containerImages,omitempty"`
	// History records each instruction, with the base image's entries first.
	History []HistoryEntry `json:"history,omitempty"`
}

// Seq orders layers, templates and steps together: a step depends on every layer and
// template with a smaller Seq (as a Dockerfile instruction depends on those above it),
// so an upgrade that changes one layer re-runs only the steps declared after it.
// A derived image keeps its base image's Seq values and continues after the largest.

// Layer is one OCI layer of the image and the role that needs it.
type Layer struct {
	Digest      string `json:"digest"` // sha256:… of the blob as stored (manifest digest)
	DiffID      string `json:"diffID"` // sha256:… of the uncompressed tar
	Size        int64  `json:"size"`   // bytes of the blob
	Role        string `json:"role"`   // RoleAll or a role name
	Instruction string `json:"instruction,omitempty"`
	Seq         int    `json:"seq"` // position in the instruction sequence (base image first)
	// Contents is what the layer's tar holds (nil in images built before it
	// was recorded, and for layers of plain OCI base images).
	Contents *protocol.LayerContents `json:"contents,omitempty"`
}

// Template is a file rendered with Go templates over node, cluster and env facts.
type Template struct {
	Role string `json:"role"`
	Path string `json:"path"` // absolute destination path on the node
	Mode uint32 `json:"mode"` // permission bits, e.g. 0644
	// ExplicitMode is set when the Kubefile chose Mode (COPY --chmod); otherwise Mode is
	// the template file's mode in the build context, and the planner drops its group
	// and other bits when the template reads env (see controller/planner's mode.go).
	// Images built before it was recorded read as false.
	ExplicitMode bool   `json:"explicitMode,omitempty"`
	Content      string `json:"content"`
	Seq          int    `json:"seq"` // position in the instruction sequence (base image first)
}

// Step is one run-time action.
type Step struct {
	Role    string `json:"role"`
	Kind    string `json:"kind"`              // KindRun or KindService
	Command string `json:"command"`           // shell command for run, unit name for service
	Line    int    `json:"line,omitempty"`    // Kubefile line, for error messages
	Timeout string `json:"timeout,omitempty"` // Go duration; empty means the Clusterfile default
	Seq     int    `json:"seq"`               // position in the instruction sequence (base image first)
}

// ContainerImage is one container image a cluster image carries, byte for byte as its
// registry serves it.
type ContainerImage struct {
	// Ref is the reference as the Kubefile wrote it (after ARG expansion).
	Ref string `json:"ref"`
	// Name is Ref as containerd spells it: registry/repository[:tag][@digest], with
	// "docker.io" for Docker Hub and "library/" for its official images.
	Name string `json:"name"`
	// Digest, MediaType and Size describe the manifest or index the name resolves to
	// (a multi-arch index stays whole unless the build narrowed it to one platform).
	Digest    string `json:"digest"`
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
	// Roles whose hosts get the image: RoleAll alone, or role names.
	Roles []string `json:"roles"`
}

// HistoryEntry is one build instruction as written, for `inspect`.
type HistoryEntry struct {
	Instruction string `json:"instruction"`
	Layer       string `json:"layer,omitempty"` // digest of the layer it produced, if any
}

// Encode returns the label value for p.
func (p *Recipe) Encode() (string, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return "", fmt.Errorf("encode plan: %w", err)
	}
	return string(b), nil
}

// Decode parses a label value written by Encode.
func Decode(s string) (*Recipe, error) {
	var p Recipe
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		return nil, fmt.Errorf("decode plan (label %s): %w", LabelKey, err)
	}
	if p.SchemaVersion > SchemaVersion {
		return nil, fmt.Errorf("plan schema version %d is newer than this flotilla understands (%d): upgrade flotilla", p.SchemaVersion, SchemaVersion)
	}
	return &p, nil
}

// FromLabels finds and decodes the plan in an image config's labels.
func FromLabels(labels map[string]string) (*Recipe, error) {
	s, ok := labels[LabelKey]
	if !ok {
		return nil, fmt.Errorf("image has no %s label: not a flotilla cluster image", LabelKey)
	}
	return Decode(s)
}

// RoleMatches reports whether a step or layer scoped to stepRole applies to a host
// holding hostRoles. isMaster0 marks the first master.
func RoleMatches(stepRole string, hostRoles []string, isMaster0 bool) bool {
	switch stepRole {
	case RoleAll, "":
		return true
	case RoleMaster0:
		return isMaster0
	}
	for _, r := range hostRoles {
		if r == stepRole {
			return true
		}
	}
	return false
}

// LayersFor returns the layers a host with the given roles needs, in image order.
func (p *Recipe) LayersFor(hostRoles []string, isMaster0 bool) []Layer {
	var out []Layer
	for _, l := range p.Layers {
		if RoleMatches(l.Role, hostRoles, isMaster0) {
			out = append(out, l)
		}
	}
	return out
}

// StepsFor returns the steps a host with the given roles runs, in Kubefile order.
func (p *Recipe) StepsFor(hostRoles []string, isMaster0 bool) []Step {
	var out []Step
	for _, s := range p.Steps {
		if RoleMatches(s.Role, hostRoles, isMaster0) {
			out = append(out, s)
		}
	}
	return out
}

// CleanupFor returns the CLEANUP commands a host with the given roles runs when it
// leaves the cluster, in Kubefile order.
func (p *Recipe) CleanupFor(hostRoles []string, isMaster0 bool) []Step {
	var out []Step
	for _, s := range p.Cleanup {
		if RoleMatches(s.Role, hostRoles, isMaster0) {
			out = append(out, s)
		}
	}
	return out
}

// IsQuorum reports whether the image declares role a quorum role.
func (p *Recipe) IsQuorum(role string) bool {
	for _, r := range p.Quorum {
		if r == role {
			return true
		}
	}
	return false
}

// MemberRole is the role of hostRoles whose membership the image manages (a quorum
// role, or one with JOIN or LEAVE commands), or "" when there is none. A host with
// several such roles is a member of the first in the image's role order.
func (p *Recipe) MemberRole(hostRoles []string) string {
	for _, r := range p.Roles {
		if !RoleMatches(r, hostRoles, false) || r == RoleAll || r == RoleMaster0 {
			continue
		}
		if p.IsQuorum(r) || stepsOfRole(p.Join, r) || stepsOfRole(p.Leave, r) {
			return r
		}
	}
	return ""
}

func stepsOfRole(steps []Step, role string) bool {
	for _, s := range steps {
		if s.Role == role {
			return true
		}
	}
	return false
}

// StepsOfRole returns the steps of steps whose role is exactly role.
func StepsOfRole(steps []Step, role string) []Step {
	var out []Step
	for _, s := range steps {
		if s.Role == role {
			out = append(out, s)
		}
	}
	return out
}

// ImagesFor returns the container images a host with the given roles gets, in image order.
func (p *Recipe) ImagesFor(hostRoles []string, isMaster0 bool) []ContainerImage {
	var out []ContainerImage
	for _, c := range p.Images {
		for _, r := range c.Roles {
			if RoleMatches(r, hostRoles, isMaster0) {
				out = append(out, c)
				break
			}
		}
	}
	return out
}

// TemplatesFor returns the templates a host with the given roles renders, sorted by path.
func (p *Recipe) TemplatesFor(hostRoles []string, isMaster0 bool) []Template {
	var out []Template
	for _, t := range p.Templates {
		if RoleMatches(t.Role, hostRoles, isMaster0) {
			out = append(out, t)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}
