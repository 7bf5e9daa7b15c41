package plane

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// kvRetryFor bounds how long a KV operation is retried while a replicated
// bucket elects a new leader (a NATS server of the cluster went away).
const kvRetryFor = 30 * time.Second

// replicated gives every stream and KV bucket created through it n replicas
// unless its config names a count, and hands out KV buckets whose operations
// ride out a leader election of the cluster.
type replicated struct {
	jetstream.JetStream
	n int
}

func (r replicated) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = cmp.Or(cfg.Replicas, r.n)
	return r.consistent(ctx, cfg.Bucket)(settle(ctx, "create KV "+cfg.Bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return r.JetStream.CreateKeyValue(ctx, cfg)
	}))
}

func (r replicated) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = cmp.Or(cfg.Replicas, r.n)
	return r.consistent(ctx, cfg.Bucket)(settle(ctx, "open KV "+cfg.Bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return r.JetStream.CreateOrUpdateKeyValue(ctx, cfg)
	}))
}

func (r replicated) UpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = cmp.Or(cfg.Replicas, r.n)
	return r.consistent(ctx, cfg.Bucket)(settle(ctx, "update KV "+cfg.Bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return r.JetStream.UpdateKeyValue(ctx, cfg)
	}))
}

func (r replicated) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	return r.consistent(ctx, bucket)(settle(ctx, "bind KV "+bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return r.JetStream.KeyValue(ctx, bucket)
	}))
}

// Creating a replicated stream needs a settled cluster: one that just started
// (or lost a server) answers "no suitable peers", "temporarily unavailable"
// or not at all for a while, most of all on a busy host. Creation and binding
// are idempotent, so they are tried again for up to settleFor (each try with
// settleTry) instead of failing the controller's start.
const (
	settleFor = 2 * time.Minute
	settleTry = 15 * time.Second
)

// unsettled says err is one a settling cluster gives.
func unsettled(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 10005 no suitable peers for placement, 10006 cluster not active,
		// 10007 not assigned, 10008 temporarily unavailable, 10009 not leader.
		return apiErr.ErrorCode >= 10005 && apiErr.ErrorCode <= 10009
	}
	return lost(err) || errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected)
}

// settle runs op until it succeeds, fails for a reason of its own, ctx ends or
// settleFor passed.
func settle[T any](ctx context.Context, what string, op func(context.Context) (T, error)) (T, error) {
	return retryFor(ctx, retryPolicy{total: settleFor, try: settleTry, wait: 250 * time.Millisecond,
		gaveUp: "the NATS cluster did not settle within"}, what, unsettled, op)
}

// consistent turns off direct gets on the bucket's stream and binds to it
// again, then makes its operations retrying. A direct get may be answered by
// any replica, and a follower can lag behind the write that a controller
// just acknowledged: after a failover, the new leader read a join token the
// old one had created (and the admin had been told of) as unknown. Without
// direct gets every read goes to the stream's leader and sees every
// acknowledged write.
func (r replicated) consistent(ctx context.Context, bucket string) func(jetstream.KeyValue, error) (jetstream.KeyValue, error) {
	return func(kv jetstream.KeyValue, err error) (jetstream.KeyValue, error) {
		if err != nil {
			return retryKV(kv), err
		}
		name := "KV_" + bucket
		s, err := settle(ctx, "stream "+name, func(ctx context.Context) (jetstream.Stream, error) { return r.JetStream.Stream(ctx, name) })
		if err != nil {
			return nil, fmt.Errorf("KV %s: %w", bucket, err)
		}
		if cfg := s.CachedInfo().Config; cfg.AllowDirect {
			cfg.AllowDirect = false
			if _, err := settle(ctx, "update stream "+name, func(ctx context.Context) (jetstream.Stream, error) { return r.JetStream.UpdateStream(ctx, cfg) }); err != nil {
				return nil, fmt.Errorf("KV %s: read from the stream leader only: %w", bucket, err)
			}
		}
		kv, err = settle(ctx, "bind KV "+bucket, func(ctx context.Context) (jetstream.KeyValue, error) { return r.JetStream.KeyValue(ctx, bucket) })
		return retryKV(kv), err
	}
}

func (r replicated) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	cfg.Replicas = cmp.Or(cfg.Replicas, r.n)
	return settle(ctx, "create stream "+cfg.Name, func(ctx context.Context) (jetstream.Stream, error) { return r.JetStream.CreateStream(ctx, cfg) })
}

func (r replicated) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	cfg.Replicas = cmp.Or(cfg.Replicas, r.n)
	return settle(ctx, "open stream "+cfg.Name, func(ctx context.Context) (jetstream.Stream, error) { return r.JetStream.CreateOrUpdateStream(ctx, cfg) })
}

func (r replicated) UpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	cfg.Replicas = cmp.Or(cfg.Replicas, r.n)
	return r.JetStream.UpdateStream(ctx, cfg)
}

// retryingKV retries operations the stream did not receive (no responders:
// its leader is being elected) and, for idempotent ones, timeouts.
type retryingKV struct{ jetstream.KeyValue }

func retryKV(kv jetstream.KeyValue) jetstream.KeyValue {
	if kv == nil {
		return nil
	}
	return retryingKV{kv}
}

func unreceived(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

func lost(err error) bool {
	return unreceived(err) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded)
}

// retry runs op until it succeeds, fails for another reason, ctx ends or
// kvRetryFor passed.
func retry[T any](ctx context.Context, what string, again func(error) bool, op func(context.Context) (T, error)) (T, error) {
	return retryFor(ctx, retryPolicy{total: kvRetryFor, try: 5 * time.Second, wait: 100 * time.Millisecond,
		gaveUp: "gave up retrying for"}, what, again, op)
}

// retryPolicy bounds retryFor: total time, each try, the first wait
// (doubled up to 2 s), and the words of the error when it gives up.
type retryPolicy struct {
	total, try, wait time.Duration
	gaveUp           string
}

// retryFor runs op until it succeeds, fails with an error again does not
// accept, ctx ends or p.total passed.
func retryFor[T any](ctx context.Context, p retryPolicy, what string, again func(error) bool, op func(context.Context) (T, error)) (T, error) {
	deadline := time.Now().Add(p.total)
	wait := p.wait
	for {
		actx, cancel := context.WithTimeout(ctx, p.try)
		v, err := op(actx)
		cancel()
		if err == nil || !again(err) || ctx.Err() != nil || time.Now().After(deadline) {
			if err != nil && again(err) {
				err = fmt.Errorf("%s: %s %s: %w", what, p.gaveUp, p.total, err)
			}
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

func (k retryingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return retry(ctx, "KV get", lost, func(ctx context.Context) (jetstream.KeyValueEntry, error) { return k.KeyValue.Get(ctx, key) })
}

func (k retryingKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return retry(ctx, "KV put", lost, func(ctx context.Context) (uint64, error) { return k.KeyValue.Put(ctx, key, value) })
}

func (k retryingKV) PutString(ctx context.Context, key string, value string) (uint64, error) {
	return k.Put(ctx, key, []byte(value))
}

func (k retryingKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	return retry(ctx, "KV create", unreceived, func(ctx context.Context) (uint64, error) { return k.KeyValue.Create(ctx, key, value, opts...) })
}

func (k retryingKV) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	return retry(ctx, "KV update", unreceived, func(ctx context.Context) (uint64, error) { return k.KeyValue.Update(ctx, key, value, revision) })
}

func (k retryingKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := retry(ctx, "KV delete", lost, func(ctx context.Context) (struct{}, error) { return struct{}{}, k.KeyValue.Delete(ctx, key, opts...) })
	return err
}

func (k retryingKV) Purge(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := retry(ctx, "KV purge", lost, func(ctx context.Context) (struct{}, error) { return struct{}{}, k.KeyValue.Purge(ctx, key, opts...) })
	return err
}
