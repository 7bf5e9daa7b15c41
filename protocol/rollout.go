package protocol

import (
	"encoding/json"
	"time"
)

// Step kinds of a rollout task, each run by an agent executor. A rollout task carries
// one node's layers, rendered files, run steps and services in run order (Task.Cluster
// set), or the undo of some of them.
const (
	// KindLayer fetches one image layer (verified by digest) and unpacks it under the
	// agent's root, recording what it placed. Payload: LayerPayload.
	KindLayer = "layer"
	// KindFile places one rendered file atomically under the root. Payload: FilePayload.
	KindFile = "file"
	// KindRun runs Step.Shell with /bin/sh -c, Step.Env and Step.Timeout, working
	// directory the root, like "exec"; FLOTILLA_ROOT tells the script where files are.
	KindRun = "run"
	// KindService reloads systemd and enables, starts (or restarts when its unit file
	// changed) and waits for a unit to be active. Payload: ServicePayload.
	KindService = "service"
	// KindUndo takes back something an earlier rollout did. Payload: UndoPayload.
	KindUndo = "undo"
	// KindImages fetches the blobs of the container images a node's roles get that its
	// image cache lacks (each exactly as a layer step fetches its blob: peer-to-peer
	// pieces with the controller as seed, or the controller's HTTPS) and imports the
	// images into the cache under the cluster's name, replacing the set it had, for the
	// node-local registry mirror. Payload: ImagesPayload.
	KindImages = "images"
)

// Bounds of an "images" step, checked by the agent (a signed task is trusted, but a
// bug must not make an agent walk a million entries).
const (
	MaxImagesPerStep = 4096
	MaxImageBlobs    = 65536
)

// CarriedImage is one container image of an "images" step: its normalized name
// (registry/repository[:tag][@digest], as plan.ContainerImage.Name) and the manifest
// or index the name resolves to.
type CarriedImage struct {
	Name      string `json:"name"`
	Digest    string `json:"digest"`
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
}

// ImagesPayload is what an "images" step fetches and imports.
type ImagesPayload struct {
	Cluster string `json:"cluster"` // the image cache owner
	// Platform is the node's ("linux/amd64"): a multi-arch image contributes only the
	// manifests of that platform (its index stays whole, so its digest holds).
	Platform string `json:"platform"`
	// Images are the container images that make up the cluster's set on this node.
	Images []CarriedImage `json:"images"`
	// Blobs are every manifest, config and layer blob the images need on this
	// platform, each fetched like a layer blob when the cache lacks it (Cluster, Digest,
	// Size, URL, Token, Pieces and the caps; DiffID unused).
	Blobs []LayerPayload `json:"blobs"`
}

// LayerPayload is what a "layer" step fetches and unpacks.
type LayerPayload struct {
	Cluster string `json:"cluster"`
	Digest  string `json:"digest"` // sha256:… of the blob as stored (compressed)
	DiffID  string `json:"diffID,omitempty"`
	Size    int64  `json:"size"`
	// URL fetches the blob from the controller over HTTPS (the controller's CA),
	// with header "Authorization: Bearer <Token>".
	URL   string `json:"url"`
	Token string `json:"token"`
	// Pieces is the blob's piece list for peer-to-peer fetching (p2p/pieces JSON);
	// empty: fetch from URL only.
	Pieces json.RawMessage `json:"pieces,omitempty"`
	// MaxDownload and MaxUpload cap this node's distribution traffic in bytes per
	// second while the step runs (0: the agent's own limit, if any).
	MaxDownload int64 `json:"maxDownload,omitempty"`
	MaxUpload   int64 `json:"maxUpload,omitempty"`
	// MaxUnpackBytes and MaxUnpackEntries bound the layer's uncompressed
	// size and entries (0: the agent's defaults); KeepSetuid places setuid
	// and setgid bits, which are dropped otherwise. From the image's plan.
	MaxUnpackBytes   int64 `json:"maxUnpackBytes,omitempty"`
	MaxUnpackEntries int   `json:"maxUnpackEntries,omitempty"`
	KeepSetuid       bool  `json:"keepSetuid,omitempty"`
	// Contents is what the layer holds as its build recorded it (nil for
	// images built before flotilla recorded it): the agent checks its bounds
	// and free space against it instead of reading the layer through once
	// before unpacking it.
	Contents *LayerContents `json:"contents,omitempty"`
}

// LayerContents describes an image layer's tar: what unpacking it places.
type LayerContents struct {
	FileBytes   int64 `json:"fileBytes"`   // bytes of regular files
	Entries     int   `json:"entries"`     // tar entries (files, directories, links)
	LongestPath int   `json:"longestPath"` // bytes of the longest entry name
}

// FilePayload is one rendered file a "file" step places.
type FilePayload struct {
	Cluster string `json:"cluster"`
	Path    string `json:"path"` // absolute, clean; placed under the agent's root
	Mode    uint32 `json:"mode"`
	Content []byte `json:"content"`
	Digest  string `json:"digest"` // sha256:… of Content; the agent checks it
}

// ServicePayload names the unit a "service" step starts.
type ServicePayload struct {
	Cluster string `json:"cluster"`
	Unit    string `json:"unit"` // e.g. "etcd.service"; its file was placed by a layer or file step
	// Restart is set when the unit's file or an input of the unit changed since the
	// node last started it: restart instead of leaving a running unit alone.
	Restart bool `json:"restart,omitempty"`
}

// Undo kinds (UndoPayload.Kind).
const (
	UndoStopService = "stop-service" // stop and disable Target (a unit); gone already is fine
	UndoRemoveFile  = "remove-file"  // remove the rendered file at Target if it still has what was placed
	UndoRemoveLayer = "remove-layer" // remove what layer Target placed, except paths another kept layer of the cluster placed
	UndoForget      = "forget"       // forget Digests from the applied-steps state (a removed node that comes back runs them again)
	// UndoCleanLvscare removes lvscare's kernel rules (nftables table, IPVS
	// services, VIP routes) after its unit Target was stopped for good: a
	// stop alone leaves them, so that traffic survives a restart.
	UndoCleanLvscare = "clean-lvscare"
	// UndoRemoveImages drops cluster Target's container images from the node's image
	// cache and deletes every blob no other cluster's image references.
	UndoRemoveImages = "remove-images"
)

// UndoPayload is one thing an "undo" step takes back.
type UndoPayload struct {
	Cluster string   `json:"cluster"`
	Kind    string   `json:"kind"`
	Target  string   `json:"target,omitempty"`
	Digests []string `json:"digests,omitempty"`
}

// Admin request names of the rollout engine.
const (
	AdminPlan   = "rollout.plan"
	AdminApply  = "rollout.apply"
	AdminStatus = "rollout.status"
	AdminDelete = "rollout.delete"
	// AdminAttach follows the running (or resuming) rollout of a cluster with
	// the same live events as the apply that started it, and returns its result.
	AdminAttach = "rollout.attach"
)

// ApplyRequest asks the controller to plan (DryRun) or apply a Clusterfile, or to
// delete (undo on every node) the cluster it describes.
type ApplyRequest struct {
	// Clusterfile is the file's content; Path names it in errors (file:line).
	Clusterfile []byte `json:"clusterfile"`
	Path        string `json:"path"`
	DryRun      bool   `json:"dryRun,omitempty"`
	// Detach returns once the rollout started; it goes on in the controller.
	Detach bool `json:"detach,omitempty"`
	// KeepInfra (delete) leaves the machines spec.infra made running.
	KeepInfra bool `json:"keepInfra,omitempty"`
}

// RolloutEvent is streamed to the CLI while a rollout runs (AdminCall.Send).
type RolloutEvent struct {
	Time    time.Time `json:"time"`
	Cluster string    `json:"cluster"`
	Rollout string    `json:"rollout"` // rollout id
	Type    string    `json:"type"`    // one of the RolloutEvent* constants
	Phase   string    `json:"phase,omitempty"`
	Node    string    `json:"node,omitempty"`
	// Step is the 1-based index among the node's steps, Steps their count.
	Step     int    `json:"step,omitempty"`
	Steps    int    `json:"steps,omitempty"`
	StepName string `json:"stepName,omitempty"`
	Line     string `json:"line,omitempty"` // output line, or a message
	// Bytes progress of a layer fetch.
	Done  int64 `json:"done,omitempty"`
	Total int64 `json:"total,omitempty"`
	// Outcome is set on node.done.
	Outcome *NodeOutcome `json:"outcome,omitempty"`
}

// Rollout event types.
const (
	RolloutEventStart     = "rollout.start"
	RolloutEventPhase     = "phase.start"
	RolloutEventNodeStart = "node.start"
	RolloutEventStep      = "step.start"
	RolloutEventOutput    = "step.output"
	RolloutEventProgress  = "step.progress"
	RolloutEventStepDone  = "step.done"
	RolloutEventNodeDone  = "node.done"
	RolloutEventRetry     = "node.retry"
	RolloutEventPhaseDone = "phase.done"
	RolloutEventHealth    = "health"
	RolloutEventDone      = "rollout.done"
	// RolloutEventInfra is a machine of spec.infra being made, joining or destroyed (Line).
	RolloutEventInfra = "infra"
)

// Node outcome statuses.
const (
	NodeOK          = "ok"          // every step succeeded (or was already applied)
	NodeNoop        = "noop"        // nothing to do
	NodeFailed      = "failed"      // a step failed
	NodeUnreachable = "unreachable" // offline past the timeout; nothing or part was done
	NodeNotStarted  = "not-started" // onFailure halt stopped the rollout before this node
)

// NodeOutcome is how one node's part of a rollout ended.
type NodeOutcome struct {
	Node     string        `json:"node"`
	Phase    string        `json:"phase"`
	Action   string        `json:"action"` // planner action: create, update, noop, remove
	Status   string        `json:"status"`
	Ran      int           `json:"ran"`     // steps run
	Skipped  int           `json:"skipped"` // steps skipped as already applied
	Steps    int           `json:"steps"`
	Attempts int           `json:"attempts,omitempty"`
	Duration time.Duration `json:"duration"`
	// On failure: which step, its exit code and the last lines of its output.
	FailedStep string   `json:"failedStep,omitempty"`
	ExitCode   int      `json:"exitCode,omitempty"`
	Error      string   `json:"error,omitempty"`
	LastOutput []string `json:"lastOutput,omitempty"`
	// Downloaded bytes and the achieved rate (bytes/s) of its layer fetches.
	Downloaded int64   `json:"downloaded,omitempty"`
	Rate       float64 `json:"rate,omitempty"`
}

// ApplyResult is the final reply to AdminApply and AdminDelete.
type ApplyResult struct {
	Rollout     string        `json:"rollout"`
	Cluster     string        `json:"cluster"`
	Image       string        `json:"image"`
	ImageDigest string        `json:"imageDigest"`
	OK          bool          `json:"ok"`
	Halted      bool          `json:"halted,omitempty"` // onFailure halt stopped it
	Resumed     bool          `json:"resumed,omitempty"`
	Duration    time.Duration `json:"duration"`
	Nodes       []NodeOutcome `json:"nodes"`
	Health      string        `json:"health,omitempty"` // the image's CMD output or error, if it has one
}

// AttachRequest names the cluster whose rollout to follow.
type AttachRequest struct {
	Cluster string `json:"cluster"`
}

// StatusRequest asks for one cluster's status, or every cluster's when Cluster is "".
type StatusRequest struct {
	Cluster string `json:"cluster,omitempty"`
}

// Rollout states (ClusterStatus.State).
const (
	RolloutRunning = "running"
	RolloutDone    = "done"
	RolloutFailed  = "failed"
	RolloutHalted  = "halted"
	// RolloutInterrupted is reported (never stored) for a rollout recorded as
	// running that no controller runs.
	RolloutInterrupted = "interrupted"
)

// ClusterStatus is what the controller knows of one cluster.
type ClusterStatus struct {
	Cluster     string       `json:"cluster"`
	Image       string       `json:"image"`       // desired, from the last applied Clusterfile
	ImageDigest string       `json:"imageDigest"` // desired
	Rollout     string       `json:"rollout,omitempty"`
	Kind        string       `json:"kind,omitempty"` // of the last rollout: apply, delete or restore
	State       string       `json:"state"`          // one of the Rollout* states
	Started     time.Time    `json:"started,omitempty"`
	Finished    time.Time    `json:"finished,omitempty"`
	Nodes       []NodeStatus `json:"nodes"`
}

// NodeStatus is one node of a cluster as the controller knows it.
type NodeStatus struct {
	Node    string   `json:"node"`
	Roles   []string `json:"roles"`
	Online  bool     `json:"online"`
	Applied string   `json:"applied"` // image digest last applied completely ("" none)
	// Drift is set when the node's applied image or work differs from the desired one.
	Drift     bool   `json:"drift"`
	LastError string `json:"lastError,omitempty"`
}
