package rollout

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/protocol"
)

// TestPhasesParallelismBarrier: master0, then the other master, then the nodes at most
// two at a time; no node of a phase starts before the previous phase ended; a second
// apply dispatches nothing.
func TestPhasesParallelismBarrier(t *testing.T) {
	names := []string{"m1", "m2", "n1", "n2", "n3", "n4", "n5"}
	f := newFakeFleet(names...)
	for _, n := range names {
		f.set(n, func(n *fakeNode) { n.delay = 15 * time.Millisecond })
	}
	e := newEnv(t, f)
	cf := clusterfileFor("c1", "test:1", names[:2], names[2:], "{parallelism: {master: 1, node: 2}, onFailure: halt}")
	res := e.mustApply(cf)
	if !res.OK || len(res.Nodes) != 7 {
		t.Fatalf("apply: ok %t, nodes %s", res.OK, statuses(res))
	}
	phaseOf := map[string]int{"m1": 0, "m2": 1}
	for _, n := range names[2:] {
		phaseOf[n] = 2
	}
	f.mu.Lock()
	spans := append([]span(nil), f.spans...)
	maxRun := f.maxRun
	f.mu.Unlock()
	if len(spans) != 7 {
		t.Fatalf("%d tasks dispatched, want 7", len(spans))
	}
	for _, a := range spans {
		for _, b := range spans {
			if phaseOf[a.node] < phaseOf[b.node] && !a.end.Before(b.start) && !a.end.Equal(b.start) {
				t.Errorf("%s (phase %d) ended %s after %s (phase %d) started", a.node, phaseOf[a.node], a.end.Sub(b.start), b.node, phaseOf[b.node])
			}
		}
	}
	if maxRun != 2 {
		t.Errorf("at most %d tasks ran at once, want 2 (node parallelism)", maxRun)
	}
	for _, n := range names {
		if got := f.executed(n, "run: echo all"); got != 1 {
			t.Errorf("%s ran 'echo all' %d times, want 1", n, got)
		}
	}
	if got := f.executed("m1", "run: echo node"); got != 0 {
		t.Errorf("master m1 ran the node step %d times", got)
	}

	res = e.mustApply(cf)
	if !res.OK {
		t.Fatalf("re-apply: %s", statuses(res))
	}
	for _, o := range res.Nodes {
		if o.Status != protocol.NodeNoop || o.Ran != 0 {
			t.Errorf("re-apply: %s status %s ran %d, want noop", o.Node, o.Status, o.Ran)
		}
	}
	if n := f.taskCount(); n != 7 {
		t.Errorf("re-apply dispatched %d tasks, want none", n-7)
	}
}

// TestOnFailure: halt stops starting nodes after a failing step (reported with the
// step, exit code and output), continue runs every other node.
func TestOnFailure(t *testing.T) {
	for _, tc := range []struct {
		policy     string
		wantStatus map[string]string
		halted     bool
	}{
		{"halt", map[string]string{"m1": "ok", "n1": "ok", "n2": "failed", "n3": "not-started", "n4": "not-started"}, true},
		{"continue", map[string]string{"m1": "ok", "n1": "ok", "n2": "failed", "n3": "ok", "n4": "ok"}, false},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			f := newFakeFleet("m1", "n1", "n2", "n3", "n4")
			f.set("n2", func(n *fakeNode) { n.failStep = "echo node" })
			e := newEnv(t, f)
			res := e.mustApply(clusterfileFor("c1", "test:1", []string{"m1"}, []string{"n1", "n2", "n3", "n4"}, "{parallelism: {node: 1}, onFailure: "+tc.policy+"}"))
			if res.OK || res.Halted != tc.halted {
				t.Errorf("ok %t halted %t, want ok false halted %t", res.OK, res.Halted, tc.halted)
			}
			got := outcomes(res)
			for node, want := range tc.wantStatus {
				if got[node].Status != want {
					t.Errorf("%s: status %q, want %q (%s)", node, got[node].Status, want, statuses(res))
				}
			}
			if line := summary(StateHalted, res); !strings.Contains(line, `node n2 failed at step "run: echo node" (exit 3)`) {
				t.Errorf("summary %q does not name the failing node and step", line)
			}
			o := got["n2"]
			if o.FailedStep != "run: echo node" || o.ExitCode != 3 || len(o.LastOutput) == 0 || o.LastOutput[len(o.LastOutput)-1] != "boom" {
				t.Errorf("failed outcome: step %q exit %d output %q", o.FailedStep, o.ExitCode, o.LastOutput)
			}
			if tc.halted && (f.taskCount() != 3 || f.executed("n3", "") != 0) {
				t.Errorf("halt: %d tasks dispatched (want 3), n3 ran %d steps", f.taskCount(), f.executed("n3", ""))
			}
			st, err := e.eng.Status(context.Background(), "c1")
			if err != nil {
				t.Fatal(err)
			}
			wantState := map[string]string{"halt": StateHalted, "continue": StateFailed}[tc.policy]
			if st[0].State != wantState {
				t.Errorf("status state %q, want %q", st[0].State, wantState)
			}
			for _, n := range st[0].Nodes {
				if n.Node == "n2" && (!n.Drift || !strings.Contains(n.LastError, "echo node")) {
					t.Errorf("status of n2: drift %t lastError %q", n.Drift, n.LastError)
				}
			}
		})
	}
}

// TestOfflineNodes: a node offline for a moment is retried and completes; one that
// stays offline is reported unreachable after the timeout, never waited on forever.
func TestOfflineNodes(t *testing.T) {
	f := newFakeFleet("m1", "n1", "n2")
	f.set("n1", func(n *fakeNode) { n.onlineAt = time.Now().Add(250 * time.Millisecond) })
	f.set("n2", func(n *fakeNode) { n.online = false })
	e := newEnv(t, f)
	start := time.Now()
	res := e.mustApply(clusterfileFor("c1", "test:1", []string{"m1"}, []string{"n1", "n2"}, "{parallelism: {node: 2}, onFailure: continue}"))
	took := time.Since(start)
	got := outcomes(res)
	if got["n1"].Status != protocol.NodeOK || got["n1"].Attempts != 1 {
		t.Errorf("n1: status %s after %d attempts, want ok with one task once it was online", got["n1"].Status, got["n1"].Attempts)
	}
	if got["n2"].Status != protocol.NodeUnreachable || !strings.Contains(got["n2"].Error, "offline") {
		t.Errorf("n2: status %s (%s), want unreachable", got["n2"].Status, got["n2"].Error)
	}
	if took > 10*time.Second {
		t.Errorf("apply took %s with an unreachable timeout of %s", took, e.opts.UnreachableTimeout)
	}
}

// TestLostTaskRetried: a task lost with its agent (heartbeats stop, or the agent
// restarts and registers again before they are missed) is sent again once the node is
// back; steps it finished before are skipped, not run twice.
func TestLostTaskRetried(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(e *env, n *fakeNode)
	}{
		{"heartbeats stop", func(_ *env, n *fakeNode) { n.dieAfter = 3; n.offlineAfter = 200 * time.Millisecond }},
		{"agent registers again", func(e *env, n *fakeNode) { n.restartAfter = 3; n.onRestart = e.eng.nodeRegistered }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeFleet("m1")
			e := newEnv(t, f)
			f.set("m1", func(n *fakeNode) { tc.set(e, n) })
			res := e.mustApply(clusterfileFor("c1", "test:1", []string{"m1"}, nil, "{retries: 2}"))
			o := outcomes(res)["m1"]
			if o.Status != protocol.NodeOK || o.Attempts != 2 {
				t.Fatalf("m1: %s after %d attempts (%s), want ok after one retry", o.Status, o.Attempts, o.Error)
			}
			for step, want := range map[string]int{"layer": 2, "run: echo all": 1, "run: echo master": 1} {
				if got := f.executed("m1", step); got != want {
					t.Errorf("%q steps executed %d times, want %d (a step done before the agent died must be skipped)", step, got, want)
				}
			}
		})
	}
}

// TestLostTaskGivesUp: a node whose tasks keep getting lost fails after the
// Clusterfile's retries, with the reason.
func TestLostTaskGivesUp(t *testing.T) {
	f := newFakeFleet("m1")
	e := newEnv(t, f)
	var restart func(string)
	restart = func(node string) {
		f.set(node, func(n *fakeNode) { n.restartAfter = 1; n.onRestart = restart })
		e.eng.nodeRegistered(node)
	}
	f.set("m1", func(n *fakeNode) { n.restartAfter = 1; n.onRestart = restart })
	res := e.mustApply(clusterfileFor("c1", "test:1", []string{"m1"}, nil, "{retries: 1}"))
	o := outcomes(res)["m1"]
	if o.Status != protocol.NodeFailed || o.Attempts != 2 || !strings.Contains(o.Error, "registered again") {
		t.Errorf("m1: %s after %d attempts (%s), want failed after 2 attempts", o.Status, o.Attempts, o.Error)
	}
}

// waitActive waits for the rollout of cluster running in eng to end.
func waitActive(t *testing.T, eng *Engine, cluster string) *protocol.ApplyResult {
	t.Helper()
	eng.mu.Lock()
	a := eng.active[cluster]
	eng.mu.Unlock()
	if a == nil {
		t.Fatalf("no rollout of %s running", cluster)
	}
	select {
	case <-a.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("rollout of %s still running after 60s", cluster)
	}
	if a.result == nil {
		t.Fatalf("rollout of %s was interrupted", cluster)
	}
	return a.result
}

// TestResumeFromKV: an engine stopped in the middle of a rollout leaves it running in
// KV; a new engine resumes it from there, and no step that succeeded runs twice.
func TestResumeFromKV(t *testing.T) {
	names := []string{"m1", "n1", "n2", "n3"}
	f := newFakeFleet(names...)
	for _, n := range names {
		f.set(n, func(n *fakeNode) { n.delay = 40 * time.Millisecond })
	}
	e := newEnv(t, f)
	cf := clusterfileFor("c1", "test:1", names[:1], names[1:], "{parallelism: {node: 1}}")
	errc := make(chan error, 1)
	go func() {
		_, err := e.apply(cf)
		errc <- err
	}()
	if err := poll.Until(context.Background(), 20*time.Second, 5*time.Millisecond, func() bool { return f.executed("n1", "run:") > 0 }); err != nil {
		t.Fatalf("n1 never started its run steps: %v", err)
	}
	e.eng.Close() // the controller "dies" in the middle of n1
	if err := <-errc; err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Errorf("apply of a stopped engine: %v, want an interrupted error", err)
	}
	eng2 := e.newEngine()
	st, err := eng2.Status(context.Background(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if st[0].State != StateInterrupted {
		t.Errorf("status after the stop: %q, want %q", st[0].State, StateInterrupted)
	}
	if err := eng2.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	res := waitActive(t, eng2, "c1")
	if !res.OK || !res.Resumed {
		t.Fatalf("resumed rollout: ok %t resumed %t: %s", res.OK, res.Resumed, statuses(res))
	}
	for _, n := range names {
		for _, step := range []string{"run: echo all", "layer"} {
			want := map[string]int{"run: echo all": 1, "layer": 1}[step]
			if n == "m1" && step == "layer" {
				want = 2 // all + master layers
			}
			if got := f.executed(n, step); got != want {
				t.Errorf("%s: %q executed %d times, want %d", n, step, got, want)
			}
		}
		if o := outcomes(res)[n]; o.Status != protocol.NodeOK {
			t.Errorf("%s: %s, want ok (done before or after the restart)", n, o.Status)
		}
	}
	st, err = eng2.Status(context.Background(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if st[0].State != StateDone {
		t.Errorf("status after resume: %q", st[0].State)
	}
	for _, n := range st[0].Nodes {
		if n.Drift || n.Applied != st[0].ImageDigest {
			t.Errorf("%s: drift %t applied %q, want %q", n.Node, n.Drift, n.Applied, st[0].ImageDigest)
		}
	}
}

// TestConcurrentApply: the same Clusterfile attaches to the running rollout, another
// one is refused while it runs.
func TestConcurrentApply(t *testing.T) {
	f := newFakeFleet("m1", "n1")
	f.set("m1", func(n *fakeNode) { n.delay = 60 * time.Millisecond })
	e := newEnv(t, f)
	cf := clusterfileFor("c1", "test:1", []string{"m1"}, []string{"n1"}, "")
	first := make(chan *protocol.ApplyResult, 1)
	go func() {
		res, _ := e.apply(cf)
		first <- res
	}()
	running := func() bool {
		e.eng.mu.Lock()
		defer e.eng.mu.Unlock()
		return e.eng.active["c1"] != nil
	}
	if err := poll.Until(context.Background(), 20*time.Second, 2*time.Millisecond, running); err != nil {
		t.Fatalf("rollout never started: %v", err)
	}
	_, err := e.apply(clusterfileFor("c1", "test:1", []string{"m1"}, nil, ""))
	if err == nil || !strings.Contains(err.Error(), "is running") {
		t.Errorf("another Clusterfile during a rollout: %v, want refused", err)
	}
	second, err := e.apply(cf)
	if err != nil {
		t.Fatalf("same Clusterfile during the rollout: %v", err)
	}
	res := <-first
	if res == nil || second.Rollout != res.Rollout || !second.OK {
		t.Errorf("attached apply: rollout %q ok %t, want the first's result (%v)", second.Rollout, second.OK, res)
	}
	if n := f.taskCount(); n != 2 {
		t.Errorf("%d tasks dispatched, want 2 (one rollout)", n)
	}
}

// BenchmarkNoopReapplyEngine measures the engine alone (plan, KV reads, no task sent)
// re-applying a 100-node cluster that has everything applied.
func BenchmarkNoopReapplyEngine(b *testing.B) {
	var names []string
	for i := range 100 {
		names = append(names, fmt.Sprintf("n%03d", i))
	}
	f := newFakeFleet(names...)
	e := newEnv(b, f)
	cf := clusterfileFor("c1", "test:1", names[:3], names[3:], "{parallelism: {node: 20}}")
	e.mustApply(cf)
	tasks := f.taskCount()
	for b.Loop() {
		res := e.mustApply(cf)
		if !res.OK || len(res.Nodes) != 100 {
			b.Fatalf("re-apply: %s", statuses(res))
		}
	}
	if n := f.taskCount(); n != tasks {
		b.Fatalf("no-op re-apply dispatched %d tasks", n-tasks)
	}
}

// TestHealthCheck: the image's CMD runs on master0 after every phase that changed
// something; a failing one halts the rollout under onFailure halt.
func TestHealthCheck(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fail     bool
		wantRuns int
		want     map[string]string
	}{
		{"healthy", false, 2, map[string]string{"m1": "ok", "n1": "ok", "n2": "ok"}},
		{"unhealthy halts", true, 1, map[string]string{"m1": "ok", "n1": "not-started", "n2": "not-started"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeFleet("m1", "n1", "n2")
			e := newEnv(t, f)
			buildImage(t, e.store, "health:1", "FROM scratch\nCOPY all.txt /opt/t/\nON all RUN echo all\nON node RUN echo node\nCMD check-health --on {{ .Node.Name }}\n",
				map[string]string{"all.txt": "x\n"})
			if tc.fail {
				f.set("m1", func(n *fakeNode) { n.failStep = "health" })
			}
			res := e.mustApply(clusterfileFor("c1", "health:1", []string{"m1"}, []string{"n1", "n2"}, ""))
			if got := f.executed("m1", "health: check-health --on m1"); got != tc.wantRuns {
				t.Errorf("health check ran %d times on m1, want %d", got, tc.wantRuns)
			}
			got := outcomes(res)
			for n, want := range tc.want {
				if got[n].Status != want {
					t.Errorf("%s: %s, want %s", n, got[n].Status, want)
				}
			}
			if res.OK == tc.fail || !strings.Contains(res.Health, "check-health") || strings.Contains(res.Health, "failed") != tc.fail {
				t.Errorf("ok %t, health %q", res.OK, res.Health)
			}
			if tc.fail {
				return
			}
			res = e.mustApply(clusterfileFor("c1", "health:1", []string{"m1"}, []string{"n1", "n2"}, ""))
			if got := f.executed("m1", "health:"); got != tc.wantRuns {
				t.Errorf("a no-op re-apply ran the health check (%d runs)", got-tc.wantRuns)
			}
		})
	}
}
