package agent_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/protocol"
)

// sleeper is an executor that sleeps for its payload's duration and records
// which cluster tasks overlapped and in which order they started.
type sleeper struct {
	mu      sync.Mutex
	running map[string]int // cluster -> tasks running now
	overlap []string
	order   []string // task ids in start order
}

func (s *sleeper) Execute(ctx context.Context, sc *agent.StepContext) error {
	d, err := time.ParseDuration(string(sc.Step.Payload[1 : len(sc.Step.Payload)-1]))
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.running[sc.Task.Cluster]++
	if sc.Task.Cluster != "" && s.running[sc.Task.Cluster] > 1 {
		s.overlap = append(s.overlap, sc.Task.ID)
	}
	s.order = append(s.order, sc.Task.ID)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running[sc.Task.Cluster]--
		s.mu.Unlock()
	}()
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func startControllerAndAgent(t *testing.T, ex map[string]agent.Executor) *plane.Controller {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := plane.New(plane.Options{DataDir: filepath.Join(dir, "controller"), Listen: "127.0.0.1:0",
		HTTPListen: "127.0.0.1:0", Advertise: "127.0.0.1", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	if err := c.Start(sctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	cr, err := c.LocalAgentCredentials(sctx, "n1", protocol.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(sctx, agent.Options{Credentials: cr, Name: "n1", DataDir: filepath.Join(dir, "n1"),
		Root: filepath.Join(dir, "root"), HeartbeatInterval: 200 * time.Millisecond, Executors: ex, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; c.Close() })
	if err := poll.Until(t.Context(), 10*time.Second, 20*time.Millisecond, func() bool {
		n, ok := c.Node("n1")
		return ok && n.Online
	}); err != nil {
		t.Fatalf("agent n1 online: %v", err)
	}
	return c
}

func TestClusterTasksRunOneAtATime(t *testing.T) {
	s := &sleeper{running: map[string]int{}}
	c := startControllerAndAgent(t, map[string]agent.Executor{"sleep": s})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	task := func(id, cluster, d string) *protocol.Task {
		return &protocol.Task{ID: id, Node: "n1", Cluster: cluster, Steps: []protocol.Step{{Kind: "sleep", Payload: []byte(`"` + d + `"`)}}}
	}
	var runs []*plane.TaskRun
	// Three tasks of cluster a, interleaved with one of cluster b: a1, a2, a3 in
	// this order and never together; b1 alongside them.
	for _, tk := range []*protocol.Task{task("a1", "a", "300ms"), task("a2", "a", "100ms"), task("b1", "b", "300ms"), task("a3", "a", "10ms")} {
		r, err := c.Dispatch(ctx, tk, nil)
		if err != nil {
			t.Fatalf("dispatch %s: %v", tk.ID, err)
		}
		runs = append(runs, r)
	}
	// An ad-hoc exec task does not wait for cluster a.
	start := time.Now()
	adhoc, err := c.Dispatch(ctx, &protocol.Task{Node: "n1", Steps: []protocol.Step{{Kind: "exec", Command: []string{"true"}}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := adhoc.Wait(ctx); err != nil || !res.OK {
		t.Fatalf("ad-hoc task: %+v %v", res, err)
	}
	adhocTook := time.Since(start)
	for _, r := range runs {
		res, err := r.Wait(ctx)
		if err != nil || !res.OK {
			t.Fatalf("task %s: %+v %v", r.Task.ID, res, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.overlap) > 0 {
		t.Errorf("tasks of one cluster overlapped: %v", s.overlap)
	}
	var aOrder []string
	sawB := false
	for _, id := range s.order {
		switch id[0] {
		case 'a':
			aOrder = append(aOrder, id)
		case 'b':
			// b1 must not have waited for cluster a's tasks to finish.
			sawB = len(aOrder) < 3
		}
	}
	if got := aOrder; len(got) != 3 || got[0] != "a1" || got[1] != "a2" || got[2] != "a3" {
		t.Errorf("cluster a ran in order %v, want a1 a2 a3 (arrival order)", got)
	}
	if !sawB {
		t.Errorf("cluster b's task waited for cluster a (start order %v)", s.order)
	}
	if adhocTook > 250*time.Millisecond {
		t.Errorf("the ad-hoc task took %s: it waited for a cluster task", adhocTook)
	}
}

func TestCanceledQueuedTaskKeepsOrder(t *testing.T) {
	s := &sleeper{running: map[string]int{}}
	c := startControllerAndAgent(t, map[string]agent.Executor{"sleep": s})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mk := func(id, d string) *protocol.Task {
		return &protocol.Task{ID: id, Node: "n1", Cluster: "a", Steps: []protocol.Step{{Kind: "sleep", Payload: []byte(`"` + d + `"`)}}}
	}
	first, err := c.Dispatch(ctx, mk("first", "400ms"), nil)
	if err != nil {
		t.Fatal(err)
	}
	queued, err := c.Dispatch(ctx, mk("queued", "10ms"), nil)
	if err != nil {
		t.Fatal(err)
	}
	third, err := c.Dispatch(ctx, mk("third", "10ms"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Canceling the waiting task ends it at once, but the third still waits for the first.
	queued.Cancel()
	res, err := queued.Wait(ctx)
	if err != nil || res.OK || !res.Canceled {
		t.Fatalf("canceled queued task: %+v %v, want canceled", res, err)
	}
	for _, r := range []*plane.TaskRun{first, third} {
		if res, err := r.Wait(ctx); err != nil || !res.OK {
			t.Fatalf("task %s: %+v %v", r.Task.ID, res, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.overlap) > 0 || len(s.order) != 2 || s.order[0] != "first" || s.order[1] != "third" {
		t.Errorf("start order %v overlaps %v; want first, third without overlap", s.order, s.overlap)
	}
}

func TestForgetSteps(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "applied.json"), []byte(`{"sha256:a":{"task":"t1","applied":"2026-01-01T00:00:00Z"},"sha256:b":{"task":"t1","applied":"2026-01-01T00:00:00Z"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	sc := agent.NewStepContext(&protocol.Task{}, &protocol.Step{}, dir, dir, nil)
	if err := sc.ForgetSteps("sha256:a", "sha256:unknown"); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "applied.json"))
	if err != nil {
		t.Fatal(err)
	}
	if s := string(data); !strings.Contains(s, "sha256:b") || strings.Contains(s, `"sha256:a"`) {
		t.Errorf("applied.json after forgetting sha256:a: %s", s)
	}
}
