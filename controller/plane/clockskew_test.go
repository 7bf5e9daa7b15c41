package plane_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/protocol"
)

// TestClockSkewRefusalNamesTheSkew: agents whose clocks are off by more than
// the allowance refuse tasks, and the controller's error says by how much and
// in which direction; within the allowance they run.
func TestClockSkewRefusalNamesTheSkew(t *testing.T) {
	dir := t.TempDir()
	c := startController(t, filepath.Join(dir, "controller"))
	for _, tc := range []struct {
		node   string
		offset time.Duration
		want   string // "" = runs
	}{
		{"ahead", 10 * time.Minute, "node clock is 10m0s ahead of the controller's"},
		{"behind", -2 * time.Minute, "node clock is 2m0s behind the controller's"},
		{"close", 20 * time.Second, ""},
	} {
		t.Run(tc.node, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cr, err := c.LocalAgentCredentials(ctx, tc.node, protocol.Facts{})
			if err != nil {
				t.Fatal(err)
			}
			adir := filepath.Join(dir, tc.node)
			a, err := agent.New(ctx, agent.Options{Credentials: cr, Name: tc.node, DataDir: adir, Root: filepath.Join(adir, "root"),
				HeartbeatInterval: 200 * time.Millisecond, Logger: quietLogger(),
				Now: func() time.Time { return time.Now().Add(tc.offset) }})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { _ = a.Run(ctx); close(done) }()
			defer func() { cancel(); <-done }()
			online := func() bool { n, ok := c.Node(tc.node); return ok && n.Online }
			if err := poll.Until(ctx, 10*time.Second, 20*time.Millisecond, online); err != nil {
				t.Fatalf("agent %s not online: %v", tc.node, err)
			}
			dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
			defer dcancel()
			run, err := c.Dispatch(dctx, &protocol.Task{Node: tc.node, Steps: []protocol.Step{{Kind: "exec", Command: []string{"true"}}}}, nil)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("dispatch within the allowance: %v", err)
				}
				if res, err := run.Wait(dctx); err != nil || !res.OK {
					t.Fatalf("result %+v %v", res, err)
				}
				return
			}
			if !errors.Is(err, plane.ErrClockSkew) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "node "+tc.node) {
				t.Fatalf("dispatch: %v\nwant ErrClockSkew naming node %s and %q", err, tc.node, tc.want)
			}
		})
	}
}
