package rollout

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
)

// tokenExpiry reads the expiry of a blob token (v1.<node>.<unix>.<mac>).
func tokenExpiry(t *testing.T, token string) time.Time {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 4 {
		t.Fatalf("token %q: want v1.<node>.<unix>.<mac>", token)
	}
	exp, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		t.Fatalf("token %q: %v", token, err)
	}
	return time.Unix(exp, 0)
}

func TestBlobTokenExpiry(t *testing.T) {
	at := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		name  string
		steps []time.Duration
		want  time.Duration
	}{
		{"one step", []time.Duration{10 * time.Minute}, 30*time.Second + 20*time.Minute},
		{"six default steps", []time.Duration{10 * time.Minute, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute},
			30*time.Second + 2*time.Hour},
		{"short steps", []time.Duration{time.Second, 2 * time.Second}, 30*time.Second + 6*time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var steps []protocol.Step
			for _, d := range tc.steps {
				steps = append(steps, protocol.Step{Kind: protocol.KindRun, Timeout: d})
			}
			if got := blobTokenExpiry(at, steps).Sub(at); got != tc.want {
				t.Errorf("token lasts %v past the task's expiry, want %v", got, tc.want)
			}
		})
	}
}

// TestBlobTokensPerAttempt: each attempt of a node's task (here a retry of a
// lost one) carries blob tokens minted for it, lasting as long as that
// attempt may run, not a day.
func TestBlobTokensPerAttempt(t *testing.T) {
	f := newFakeFleet("m1")
	e := newEnv(t, f)
	f.set("m1", func(n *fakeNode) { n.dieAfter = 3; n.offlineAfter = 200 * time.Millisecond })
	start := time.Now()
	res := e.mustApply(clusterfileFor("c1", "test:1", []string{"m1"}, nil, "{retries: 2}"))
	if o := outcomes(res)["m1"]; o.Status != protocol.NodeOK || o.Attempts != 2 {
		t.Fatalf("m1: %s after %d attempts (%s), want ok after one retry", o.Status, o.Attempts, o.Error)
	}
	f.mu.Lock()
	tasks := append([]*protocol.Task(nil), f.tasks["m1"]...)
	f.mu.Unlock()
	if len(tasks) != 2 {
		t.Fatalf("%d tasks dispatched to m1, want 2", len(tasks))
	}
	for i, task := range tasks {
		if task.Expires.Before(start.Add(DefaultTaskTTL-time.Second)) || task.Expires.After(time.Now().Add(DefaultTaskTTL)) {
			t.Errorf("attempt %d expires at %v: want %v after its dispatch", i+1, task.Expires, DefaultTaskTTL)
		}
		want := blobTokenExpiry(task.Expires, task.Steps).Truncate(time.Second)
		layers := 0
		for _, s := range task.Steps {
			if s.Kind != protocol.KindLayer {
				continue
			}
			var p protocol.LayerPayload
			if err := json.Unmarshal(s.Payload, &p); err != nil {
				t.Fatal(err)
			}
			layers++
			if got := tokenExpiry(t, p.Token); !got.Equal(want) {
				t.Errorf("attempt %d, %s: token until %v, want %v", i+1, s.Name, got, want)
			}
		}
		if layers == 0 {
			t.Fatalf("attempt %d has no layer step", i+1)
		}
	}
}
