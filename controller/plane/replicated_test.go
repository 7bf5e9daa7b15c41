package plane

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestUnsettled(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{&jetstream.APIError{Code: 400, ErrorCode: 10005, Description: "no suitable peers for placement, peer offline"}, true},
		{fmt.Errorf("events stream: %w", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}), true},
		{&jetstream.APIError{Code: 400, ErrorCode: 10058, Description: "stream name already in use"}, false},
		{nats.ErrNoResponders, true},
		{context.DeadlineExceeded, true},
		{nats.ErrTimeout, true},
		{errors.New("permissions violation"), false},
	} {
		if got := unsettled(tt.err); got != tt.want {
			t.Errorf("unsettled(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestSettleRetriesUntilTheClusterAnswers: a creation refused while the
// cluster settles is tried again; an error of its own ends it at once.
func TestSettleRetriesUntilTheClusterAnswers(t *testing.T) {
	tries := 0
	v, err := settle(context.Background(), "create KV x", func(context.Context) (int, error) {
		tries++
		if tries < 3 {
			return 0, &jetstream.APIError{Code: 400, ErrorCode: 10005, Description: "no suitable peers for placement"}
		}
		return 42, nil
	})
	if err != nil || v != 42 || tries != 3 {
		t.Errorf("settle = %d, %v after %d tries; want 42 after 3", v, err, tries)
	}
	tries = 0
	_, err = settle(context.Background(), "create KV x", func(context.Context) (int, error) {
		tries++
		return 0, errors.New("bad config")
	})
	if err == nil || tries != 1 {
		t.Errorf("settle with its own error = %v after %d tries; want it at once", err, tries)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = settle(ctx, "create KV x", func(context.Context) (int, error) { return 0, nats.ErrNoResponders })
	if !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("settle at the end of ctx = %v; want the last error", err)
	}
}
