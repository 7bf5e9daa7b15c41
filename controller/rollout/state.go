package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/internal/kvkeys"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go/jetstream"
)

// JetStream KV buckets of the rollout engine.
const (
	// BucketClusters holds each cluster's desired state (ClusterRecord), by cluster name.
	BucketClusters = "flotilla_rollout_clusters"
	// BucketApplied holds what each node applied of each cluster (planner.Applied),
	// by "<cluster>/<node>".
	BucketApplied = "flotilla_rollout_applied"
	// BucketRollouts holds the latest rollout of each cluster (Record), by cluster name.
	BucketRollouts = "flotilla_rollout_rollouts"
)

// Rollout states (Record.State): the wire's (protocol.ClusterStatus.State).
const (
	StateRunning     = protocol.RolloutRunning
	StateDone        = protocol.RolloutDone
	StateFailed      = protocol.RolloutFailed
	StateHalted      = protocol.RolloutHalted
	StateInterrupted = protocol.RolloutInterrupted
)

// Rollout kinds (Record.Kind).
const (
	KindApply  = "apply"
	KindDelete = "delete"
	// KindRestore is `flotilla restore` (restore.go): Record.Restore says from what and how far.
	KindRestore = "restore"
)

// ClusterRecord is the desired state of one cluster: the Clusterfile last applied.
type ClusterRecord struct {
	Cluster     string    `json:"cluster"`
	Clusterfile []byte    `json:"clusterfile"`
	Path        string    `json:"path"`
	Image       string    `json:"image"`
	ImageDigest string    `json:"imageDigest"`
	Updated     time.Time `json:"updated"`
}

// Record is one rollout as stored: enough to report it and to resume it.
type Record struct {
	ID          string                 `json:"id"`
	Cluster     string                 `json:"cluster"`
	Kind        string                 `json:"kind"`
	State       string                 `json:"state"`
	Phase       string                 `json:"phase,omitempty"`
	Image       string                 `json:"image,omitempty"`
	ImageDigest string                 `json:"imageDigest,omitempty"`
	Started     time.Time              `json:"started"`
	Finished    time.Time              `json:"finished,omitempty"`
	Resumes     int                    `json:"resumes,omitempty"`
	Outcomes    []protocol.NodeOutcome `json:"outcomes,omitempty"`
	Health      string                 `json:"health,omitempty"`
	// KeepInfra: a delete that leaves the cluster's machines running.
	KeepInfra bool `json:"keepInfra,omitempty"`
	// Restore is set on a restore's record.
	Restore *RestoreRecord `json:"restore,omitempty"`
}

// appliedRecord is planner.Applied as stored (the planner's type has no JSON tags).
type appliedRecord struct {
	Image    string                `json:"image,omitempty"`
	Roles    []string              `json:"roles,omitempty"`
	Layers   []string              `json:"layers,omitempty"`
	Steps    []string              `json:"steps,omitempty"`
	Files    []planner.AppliedFile `json:"files,omitempty"`
	Services []string              `json:"services,omitempty"`
	// Images and ImagesDigest: the container images imported for the cluster.
	Images       []planner.AppliedImage `json:"images,omitempty"`
	ImagesDigest string                 `json:"imagesDigest,omitempty"`
	// Cleanup: the rendered CLEANUP commands the node runs when it leaves.
	Cleanup []cleanupRecord `json:"cleanup,omitempty"`
	// Member: the node's membership in a managed role, with its LEAVE commands.
	Member  *memberRecord `json:"member,omitempty"`
	Updated time.Time     `json:"updated"`
}

// memberRecord is a planner.MemberRecord as stored, its LEAVE commands with their env.
type memberRecord struct {
	planner.MemberRecord
	Leave []cleanupRecord `json:"leave,omitempty"`
}

// cleanupRecord is a planner.Step of Applied.Cleanup as stored: with its env,
// which planner.Step never prints.
type cleanupRecord struct {
	Command string            `json:"command"`
	Role    string            `json:"role,omitempty"`
	Line    int               `json:"line,omitempty"`
	Timeout time.Duration     `json:"timeout,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
}

func toRecord(a planner.Applied) appliedRecord {
	r := appliedRecord{Image: a.Image, Roles: a.Roles, Layers: a.Layers, Steps: a.Steps, Files: a.Files, Services: a.Services,
		Images: a.Images, ImagesDigest: a.ImagesDigest}
	r.Cleanup = toStepRecords(a.Cleanup)
	if a.Member != nil {
		r.Member = &memberRecord{MemberRecord: *a.Member, Leave: toStepRecords(a.Member.Leave)}
	}
	return r
}

func (r appliedRecord) applied() planner.Applied {
	a := planner.Applied{Image: r.Image, Roles: r.Roles, Layers: r.Layers, Steps: r.Steps, Files: r.Files, Services: r.Services,
		Images: r.Images, ImagesDigest: r.ImagesDigest}
	a.Cleanup = fromStepRecords(r.Cleanup)
	if r.Member != nil {
		m := r.Member.MemberRecord
		m.Leave = fromStepRecords(r.Member.Leave)
		a.Member = &m
	}
	return a
}

func toStepRecords(steps []planner.Step) []cleanupRecord {
	var out []cleanupRecord
	for _, c := range steps {
		out = append(out, cleanupRecord{Command: c.Command, Role: c.Role, Line: c.Line, Timeout: c.Timeout, Env: c.Env})
	}
	return out
}

func fromStepRecords(recs []cleanupRecord) []planner.Step {
	var out []planner.Step
	for _, c := range recs {
		out = append(out, planner.Step{Kind: recipe.KindRun, Command: c.Command, Role: c.Role, Line: c.Line, Timeout: c.Timeout, Env: c.Env})
	}
	return out
}

// state is the engine's view of its KV buckets.
type state struct {
	clusters, applied, rollouts jetstream.KeyValue
}

func openState(ctx context.Context, js jetstream.JetStream) (*state, error) {
	// A NATS cluster that is still settling makes bucket creation wait (see
	// controller/plane's settle): minutes on a busy host, not seconds.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	open := func(bucket, desc string) (jetstream.KeyValue, error) {
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, Description: desc,
			History: 1, Storage: jetstream.FileStorage})
		if err != nil {
			return nil, fmt.Errorf("open KV bucket %s: %w", bucket, err)
		}
		return kv, nil
	}
	s := &state{}
	var err error
	if s.clusters, err = open(BucketClusters, "flotilla: desired Clusterfile per cluster"); err != nil {
		return nil, err
	}
	if s.applied, err = open(BucketApplied, "flotilla: applied state per cluster and node"); err != nil {
		return nil, err
	}
	if s.rollouts, err = open(BucketRollouts, "flotilla: latest rollout per cluster"); err != nil {
		return nil, err
	}
	return s, nil
}

func appliedKey(cluster, node string) string { return cluster + "/" + node }

func putJSON(ctx context.Context, kv jetstream.KeyValue, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := kv.Put(ctx, key, b); err != nil {
		return fmt.Errorf("store %s in %s: %w", key, kv.Bucket(), err)
	}
	return nil
}

// getJSON reads key into v; found is false when the key does not exist.
func getJSON(ctx context.Context, kv jetstream.KeyValue, key string, v any) (found bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s from %s: %w", key, kv.Bucket(), err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return false, fmt.Errorf("decode %s from %s: %w", key, kv.Bucket(), err)
	}
	return true, nil
}

func deleteKey(ctx context.Context, kv jetstream.KeyValue, key string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete %s from %s: %w", key, kv.Bucket(), err)
	}
	return nil
}

func keys(ctx context.Context, kv jetstream.KeyValue) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*kvkeys.Try)
	defer cancel()
	out, err := kvkeys.List(ctx, kv)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", kv.Bucket(), err)
	}
	sort.Strings(out)
	return out, nil
}

func (s *state) cluster(ctx context.Context, name string) (*ClusterRecord, error) {
	var c ClusterRecord
	found, err := getJSON(ctx, s.clusters, name, &c)
	if err != nil || !found {
		return nil, err
	}
	return &c, nil
}

func (s *state) clusterNames(ctx context.Context) ([]string, error) { return keys(ctx, s.clusters) }

func (s *state) rollout(ctx context.Context, cluster string) (*Record, error) {
	var r Record
	found, err := getJSON(ctx, s.rollouts, cluster, &r)
	if err != nil || !found {
		return nil, err
	}
	return &r, nil
}

func (s *state) putRollout(ctx context.Context, r *Record) error {
	return putJSON(ctx, s.rollouts, r.Cluster, r)
}

// appliedOf returns what every node applied of cluster, by node name.
func (s *state) appliedOf(ctx context.Context, cluster string) (map[string]planner.Applied, error) {
	all, err := keys(ctx, s.applied)
	if err != nil {
		return nil, err
	}
	out := map[string]planner.Applied{}
	for _, k := range all {
		node, ok := strings.CutPrefix(k, cluster+"/")
		if !ok || strings.Contains(node, "/") {
			continue
		}
		var r appliedRecord
		found, err := getJSON(ctx, s.applied, k, &r)
		if err != nil {
			return nil, err
		}
		if found {
			out[node] = r.applied()
		}
	}
	return out, nil
}

func (s *state) putApplied(ctx context.Context, cluster, node string, a planner.Applied) error {
	r := toRecord(a)
	r.Updated = time.Now().UTC()
	return putJSON(ctx, s.applied, appliedKey(cluster, node), r)
}

func (s *state) deleteApplied(ctx context.Context, cluster, node string) error {
	return deleteKey(ctx, s.applied, appliedKey(cluster, node))
}

// forgetCluster removes the desired state and rollout record of a deleted cluster.
func (s *state) forgetCluster(ctx context.Context, cluster string) error {
	if err := deleteKey(ctx, s.clusters, cluster); err != nil {
		return err
	}
	return deleteKey(ctx, s.rollouts, cluster)
}
