// Package kvkeys lists the keys of a JetStream KV bucket completely or not
// at all.
//
// nats.go's KeyLister closes its channel both when every key was read and
// when its context ends, so a plain range over it returns a truncated list
// without an error; and on a replicated bucket that was just created, its
// watcher now and then never says that the keys were all read, so the range
// waits until that context ends. List gives each try a deadline of its own,
// keeps a list only when it ended before that deadline, and tries again
// otherwise, until ctx ends.
package kvkeys

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Try bounds one listing; a bucket's keys are read in well under it.
const Try = 10 * time.Second

// List returns every key of kv (none: an empty slice and no error).
func List(ctx context.Context, kv jetstream.KeyValue) ([]string, error) {
	wait := 250 * time.Millisecond
	var last error
	for {
		keys, err := try(ctx, kv)
		if err == nil {
			return keys, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("list the keys of KV %s: %w (last try: %v)", kv.Bucket(), ctx.Err(), last)
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

func try(ctx context.Context, kv jetstream.KeyValue) ([]string, error) {
	tctx, cancel := context.WithTimeout(ctx, Try)
	defer cancel()
	l, err := kv.ListKeys(tctx)
	if err != nil {
		return nil, err
	}
	keys := []string{}
	for k := range l.Keys() {
		keys = append(keys, k)
	}
	// Closed because its context ended: the list may lack keys.
	if tctx.Err() != nil {
		return nil, fmt.Errorf("listing did not finish within %s", Try)
	}
	return keys, nil
}
