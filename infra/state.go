package infra

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/internal/kvkeys"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the JetStream KV bucket of machine records (key: <cluster>.<machine>).
const Bucket = "flotilla_infra"

// Machine states in a record, in the order a machine goes through them.
const (
	// StateCreating: the intent is recorded (and its join token made); the
	// provider may or may not have the machine yet.
	StateCreating = "creating"
	// StateCreated: the provider returned the machine; its agent has not been seen.
	StateCreated = "created"
	// StateJoined: its agent was online; its join tokens are revoked.
	StateJoined = "joined"
	// StateDestroying: it is being destroyed (after the cluster's undo on it).
	StateDestroying = "destroying"
)

// Record is what the Driver keeps about one machine.
type Record struct {
	Cluster  string  `json:"cluster"`
	Name     string  `json:"name"`
	Role     string  `json:"role"`
	Provider string  `json:"provider"`
	State    string  `json:"state"`
	CPUs     float64 `json:"cpus,omitempty"`
	Memory   int64   `json:"memory,omitempty"`
	Machine  Machine `json:"machine"`
	// Tokens are the IDs of join tokens made for it and not revoked yet (a
	// resumed create may add one; the machine joins with whichever its user
	// data holds).
	Tokens  []string  `json:"tokens,omitempty"`
	Created time.Time `json:"created"` // when the create was first recorded
	Updated time.Time `json:"updated"`
}

type store struct{ kv jetstream.KeyValue }

func openStore(ctx context.Context, js jetstream.JetStream) (*store, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: Bucket,
		Description: "flotilla: machines created for clusters (spec.infra)", History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		return nil, fmt.Errorf("open KV bucket %s: %w", Bucket, err)
	}
	return &store{kv: kv}, nil
}

func key(cluster, name string) string { return cluster + "." + name }

func (s *store) put(ctx context.Context, r *Record) error {
	r.Updated = time.Now().UTC()
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := s.kv.Put(ctx, key(r.Cluster, r.Name), b); err != nil {
		return fmt.Errorf("record machine %s in %s: %w", r.Name, Bucket, err)
	}
	return nil
}

func (s *store) delete(ctx context.Context, cluster, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.kv.Delete(ctx, key(cluster, name)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("forget machine %s in %s: %w", name, Bucket, err)
	}
	return nil
}

// list returns the cluster's records by name ("" lists every cluster's).
func (s *store) list(ctx context.Context, cluster string) ([]*Record, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*kvkeys.Try)
	defer cancel()
	all, err := kvkeys.List(ctx, s.kv)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", Bucket, err)
	}
	var keys []string
	for _, k := range all {
		if cluster == "" || strings.HasPrefix(k, cluster+".") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []*Record
	for _, k := range keys {
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s from %s: %w", k, Bucket, err)
		}
		var r Record
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return nil, fmt.Errorf("decode %s from %s: %w", k, Bucket, err)
		}
		if cluster == "" || r.Cluster == cluster {
			out = append(out, &r)
		}
	}
	return out, nil
}
