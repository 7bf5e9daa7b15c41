package rolloutview

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/vbauerster/mpb/v8"
)

var t0 = time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC)

// rec builds a recorded event stream: each event 100 ms after the previous one.
type rec struct {
	evs []protocol.RolloutEvent
}

func (r *rec) add(ev protocol.RolloutEvent) *rec {
	ev.Time = t0.Add(time.Duration(len(r.evs)) * 100 * time.Millisecond)
	ev.Cluster, ev.Rollout = "hello", "r-1"
	r.evs = append(r.evs, ev)
	return r
}

func (r *rec) start() *rec {
	return r.add(protocol.RolloutEvent{Type: protocol.RolloutEventStart})
}

func (r *rec) phase(name string) *rec {
	return r.add(protocol.RolloutEvent{Type: protocol.RolloutEventPhase, Phase: name})
}

// steps records a node running names in order; fail, if > 0, is the 1-based step that
// fails with output lines out, after which the node is done as failed.
func (r *rec) steps(node, phase string, names []string, fail int, out ...string) *rec {
	n := len(names)
	r.add(protocol.RolloutEvent{Type: protocol.RolloutEventNodeStart, Node: node, Phase: phase, Steps: n})
	for i, name := range names {
		r.add(protocol.RolloutEvent{Type: protocol.RolloutEventStep, Node: node, Phase: phase, Step: i + 1, Steps: n, StepName: name})
		if strings.HasPrefix(name, "layer") {
			r.add(protocol.RolloutEvent{Type: protocol.RolloutEventProgress, Node: node, Step: i + 1, Steps: n, Done: 1 << 20, Total: 2 << 20})
			r.add(protocol.RolloutEvent{Type: protocol.RolloutEventProgress, Node: node, Step: i + 1, Steps: n, Done: 2 << 20, Total: 2 << 20})
		}
		for _, l := range out {
			r.add(protocol.RolloutEvent{Type: protocol.RolloutEventOutput, Node: node, Step: i + 1, Steps: n, Line: name + ": " + l})
		}
		r.add(protocol.RolloutEvent{Type: protocol.RolloutEventStepDone, Node: node, Step: i + 1, Steps: n, StepName: name})
		if i+1 == fail {
			return r.add(protocol.RolloutEvent{Type: protocol.RolloutEventNodeDone, Node: node, Phase: phase, Outcome: &protocol.NodeOutcome{
				Node: node, Phase: phase, Action: "create", Status: protocol.NodeFailed, Ran: i + 1, Steps: n,
				Duration: time.Second, FailedStep: name, ExitCode: 3, Error: "exit status 3", LastOutput: []string{"boom 1", "boom 2"},
			}})
		}
	}
	return r.add(protocol.RolloutEvent{Type: protocol.RolloutEventNodeDone, Node: node, Phase: phase, Outcome: &protocol.NodeOutcome{
		Node: node, Phase: phase, Action: "create", Status: protocol.NodeOK, Ran: n, Steps: n, Duration: 1500 * time.Millisecond,
	}})
}

func (r *rec) done() *rec { return r.add(protocol.RolloutEvent{Type: protocol.RolloutEventDone}) }

var helloSteps = []string{"layer sha256:ab12 2.0 MiB", "file /etc/flotilla-hello/hello.conf", "run: flotilla-hello"}

func TestPlain(t *testing.T) {
	ok := func(node, phase string) protocol.NodeOutcome {
		return protocol.NodeOutcome{Node: node, Phase: phase, Action: "create", Status: protocol.NodeOK, Ran: 3, Steps: 3, Duration: 1500 * time.Millisecond}
	}
	failed := protocol.NodeOutcome{Node: "n2", Phase: "node", Action: "create", Status: protocol.NodeFailed, Ran: 3, Steps: 3,
		Duration: time.Second, FailedStep: "run: flotilla-hello", ExitCode: 3, Error: "exit status 3", LastOutput: []string{"boom 1", "boom 2"}}
	tests := []struct {
		name    string
		verbose bool
		events  *rec
		result  protocol.ApplyResult
		want    []string // lines (or parts of lines) the live output and summary must hold, in order
		notWant []string
		errWant string // "" means Err must be nil
	}{
		{
			name: "success",
			events: new(rec).start().phase("master0").steps("n1", "master0", helloSteps, 0, "hidden").
				phase("node").steps("n2", "node", helloSteps, 0).done(),
			result: protocol.ApplyResult{Rollout: "r-1", Cluster: "hello", Image: "hello:1.0", ImageDigest: "sha256:0123456789abcdef0123", OK: true,
				Duration: 4 * time.Second, Nodes: []protocol.NodeOutcome{ok("n1", "master0"), ok("n2", "node")}},
			want: []string{
				"[   0.0s] rollout r-1 of cluster hello started",
				"] phase master0",
				"n1: start, 3 steps (phase master0)",
				"n1: [1/3] layer sha256:ab12 2.0 MiB",
				"n1: [1/3] done in 400ms (2.0 MiB at 10.0 MiB/s)",
				"n1: [3/3] run: flotilla-hello",
				"n1: ok, 3 ran, 0 skipped in 1.5s",
				"] phase node",
				"n2: ok, 3 ran, 0 skipped in 1.5s",
				"rollout done",
				"NODE  PHASE    ACTION  STATUS  RAN  SKIPPED  DURATION  FAILED STEP",
				"n1    master0  create  ok      3    0        1.5s      -",
				"2 nodes: 2 ok in 4s; cluster hello, image hello:1.0 (sha256:0123456789ab)",
			},
			notWant: []string{"hidden", "failed", "retry"},
		},
		{
			name:    "verbose shows every output line",
			verbose: true,
			events:  new(rec).start().phase("master0").steps("n1", "master0", helloSteps, 0, "shown").done(),
			result:  protocol.ApplyResult{Cluster: "hello", OK: true, Nodes: []protocol.NodeOutcome{ok("n1", "master0")}},
			want:    []string{"n1 | layer sha256:ab12 2.0 MiB: shown", "n1 | run: flotilla-hello: shown", "1 node: 1 ok"},
		},
		{
			name: "failed node",
			events: new(rec).start().phase("master0").steps("n1", "master0", helloSteps, 0).
				phase("node").steps("n2", "node", helloSteps, 3, "out A", "out B").done(),
			result: protocol.ApplyResult{Cluster: "hello", Nodes: []protocol.NodeOutcome{ok("n1", "master0"), failed}},
			want: []string{
				"n2: [3/3] run: flotilla-hello",
				// The step.done line waits for node.done to learn the step failed.
				"n2: [3/3] failed after 300ms\n",
				"n2 | run: flotilla-hello: out A",
				"n2 | run: flotilla-hello: out B",
				"n2: FAILED at run: flotilla-hello (exit code 3)\n", // the error only repeats the code

				"n2    node     create  failed  3    0        1s        run: flotilla-hello",
				"2 nodes: 1 ok, 1 failed",
				"n2 failed at step \"run: flotilla-hello\" with exit code 3\n",
				"last 2 lines of its output:",
				"  | boom 1",
				"  | boom 2",
			},
			// Output of the steps that succeeded stays hidden.
			notWant: []string{"n2 | layer sha256:ab12 2.0 MiB: out A", "n2 | file", "n2: [3/3] done"},
			errWant: "1 of 2 nodes of cluster hello did not finish: n2 (failed)",
		},
		{
			name: "halt leaves nodes not started",
			events: new(rec).start().phase("master0").steps("n1", "master0", helloSteps, 2, "bad config").
				add(protocol.RolloutEvent{Type: protocol.RolloutEventNodeDone, Node: "n2", Phase: "node", Outcome: &protocol.NodeOutcome{Node: "n2", Phase: "node", Status: protocol.NodeNotStarted}}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventNodeDone, Node: "n3", Phase: "node", Outcome: &protocol.NodeOutcome{Node: "n3", Phase: "node", Status: protocol.NodeNotStarted}}).
				done(),
			result: protocol.ApplyResult{Cluster: "hello", Halted: true, Nodes: []protocol.NodeOutcome{
				{Node: "n1", Phase: "master0", Action: "create", Status: protocol.NodeFailed, Ran: 2, FailedStep: "file /etc/flotilla-hello/hello.conf", Error: "digest mismatch"},
				{Node: "n2", Phase: "node", Action: "create", Status: protocol.NodeNotStarted},
				{Node: "n3", Phase: "node", Action: "create", Status: protocol.NodeNotStarted},
			}},
			want: []string{
				"n1 | file /etc/flotilla-hello/hello.conf: bad config",
				"n1: FAILED at file /etc/flotilla-hello/hello.conf (exit code 3)",
				"n2: not started (the rollout halted)",
				"n3: not started (the rollout halted)",
				"n2    node     create  not-started  0    0        -         -",
				"3 nodes: 1 failed, 2 not-started",
				"the rollout halted after a failure",
				`n1 failed at step "file /etc/flotilla-hello/hello.conf": digest mismatch`,
			},
			notWant: []string{"n1 | run"},
			errWant: "3 of 3 nodes of cluster hello did not finish: n1 (failed), n2 (not-started), n3 (not-started)",
		},
		{
			name: "unreachable node after retries",
			events: new(rec).start().phase("node").
				add(protocol.RolloutEvent{Type: protocol.RolloutEventNodeStart, Node: "n4", Phase: "node", Steps: 3}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventRetry, Node: "n4", Line: "node n4 is offline; retry 1 in 1s"}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventRetry, Node: "n4", Line: "node n4 is offline; retry 2 in 2s"}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventNodeDone, Node: "n4", Phase: "node", Outcome: &protocol.NodeOutcome{
					Node: "n4", Phase: "node", Action: "create", Status: protocol.NodeUnreachable, Steps: 3, Attempts: 3, Duration: 2 * time.Minute,
					Error: "offline for 2m0s"}}).done(),
			result: protocol.ApplyResult{Cluster: "hello", Nodes: []protocol.NodeOutcome{
				{Node: "n4", Phase: "node", Action: "create", Status: protocol.NodeUnreachable, Steps: 3, Duration: 2 * time.Minute, Error: "offline for 2m0s"}}},
			want: []string{
				"n4: retry: node n4 is offline; retry 1 in 1s",
				"n4: retry: node n4 is offline; retry 2 in 2s",
				"n4: UNREACHABLE: offline for 2m0s",
				"n4    node   create  unreachable  0    0        2m0s      -",
				"1 node: 1 unreachable",
				"n4 unreachable: offline for 2m0s",
			},
			errWant: "1 of 1 nodes of cluster hello did not finish: n4 (unreachable)",
		},
		{
			name: "skipped and failed step lines",
			events: new(rec).start().phase("node").
				add(protocol.RolloutEvent{Type: protocol.RolloutEventNodeStart, Node: "n6", Phase: "node", Steps: 2}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventStep, Node: "n6", Step: 1, Steps: 2, StepName: "file /etc/a"}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventStepDone, Node: "n6", Step: 1, Steps: 2, Line: "already applied"}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventStep, Node: "n6", Step: 2, Steps: 2, StepName: "run: check"}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventStepDone, Node: "n6", Step: 2, Steps: 2, Line: "exit status 2"}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventDone, Line: "failed"}),
			result: protocol.ApplyResult{Cluster: "hello", Nodes: []protocol.NodeOutcome{{Node: "n6", Status: protocol.NodeFailed, FailedStep: "run: check", ExitCode: 2}}},
			want: []string{
				"n6: [1/2] already applied",
				"n6: [2/2] failed after 100ms: exit status 2",
				"rollout failed",
				`n6 failed at step "run: check" with exit code 2`,
			},
			notWant: []string{"[1/2] done", "rollout done"},
			errWant: "1 of 1 nodes of cluster hello did not finish: n6 (failed)",
		},
		{
			name: "retry after an agent died mid-step shows that step's output",
			events: new(rec).start().phase("node").
				add(protocol.RolloutEvent{Type: protocol.RolloutEventNodeStart, Node: "n5", Phase: "node", Steps: 1}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventStep, Node: "n5", Step: 1, Steps: 1, StepName: "run: slow"}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventOutput, Node: "n5", Step: 1, Line: "half way"}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventRetry, Node: "n5", Line: "agent n5 went away during the task; retry 1"}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventStep, Node: "n5", Step: 1, Steps: 1, StepName: "run: slow"}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventOutput, Node: "n5", Step: 1, Line: "all the way"}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventStepDone, Node: "n5", Step: 1, Steps: 1}).
				add(protocol.RolloutEvent{Type: protocol.RolloutEventNodeDone, Node: "n5", Phase: "node", Outcome: &protocol.NodeOutcome{
					Node: "n5", Phase: "node", Action: "update", Status: protocol.NodeOK, Ran: 1, Steps: 1, Attempts: 2, Duration: time.Second}}).done(),
			result: protocol.ApplyResult{Cluster: "hello", OK: true, Nodes: []protocol.NodeOutcome{
				{Node: "n5", Phase: "node", Action: "update", Status: protocol.NodeOK, Ran: 1, Steps: 1, Attempts: 2, Duration: time.Second}}},
			want: []string{
				"n5: [1/1] run: slow",
				"n5 | half way",
				"n5: retry: agent n5 went away during the task; retry 1",
				"n5: [1/1] run: slow",
				"n5: [1/1] done in 200ms",
				"n5: ok, 1 ran, 0 skipped in 1s",
				"1 node: 1 ok",
			},
			notWant: []string{"all the way"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			r := NewPlain(&buf, Options{Verbose: tc.verbose})
			for _, ev := range tc.events.evs {
				r.Event(ev)
			}
			r.Close()
			if err := WriteSummary(&buf, &tc.result); err != nil {
				t.Fatal(err)
			}
			got := buf.String()
			assertInOrder(t, got, tc.want)
			for _, nw := range tc.notWant {
				if strings.Contains(got, nw) {
					t.Errorf("output holds %q; it should not:\n%s", nw, got)
				}
			}
			err := Err(&tc.result)
			switch {
			case tc.errWant == "" && err != nil:
				t.Errorf("Err = %v, want nil", err)
			case tc.errWant != "" && (err == nil || err.Error() != tc.errWant):
				t.Errorf("Err = %v, want %q", err, tc.errWant)
			}
		})
	}
}

// assertInOrder checks that each of want occurs in got after the previous one.
func assertInOrder(t *testing.T, got string, want []string) {
	t.Helper()
	rest := got
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("output lacks %q (in this order); output:\n%s", w, got)
		}
		rest = rest[i+len(w):]
	}
}

func TestErrNotOKWithoutProblems(t *testing.T) {
	err := Err(&protocol.ApplyResult{Rollout: "r-2", Cluster: "hello", Health: "etcdctl: unhealthy", Nodes: []protocol.NodeOutcome{{Node: "n1", Status: protocol.NodeOK}}})
	if err == nil || !strings.Contains(err.Error(), "etcdctl: unhealthy") {
		t.Fatalf("Err = %v, want the health check's message", err)
	}
}

func TestBars(t *testing.T) {
	cw := &fakeConsole{}
	b := newBars(Options{}, mpb.WithConsoleWriter(cw), mpb.WithWidth(80), mpb.WithRefreshRate(10*time.Millisecond))
	evs := new(rec).start().phase("master0").steps("n1", "master0", helloSteps, 0).
		phase("node").steps("n2", "node", helloSteps, 3, "out A").
		add(protocol.RolloutEvent{Type: protocol.RolloutEventNodeStart, Node: "n3", Phase: "node", Steps: 3}).
		add(protocol.RolloutEvent{Type: protocol.RolloutEventStep, Node: "n3", Step: 1, Steps: 3, StepName: "layer sha256:ab12"}).
		add(protocol.RolloutEvent{Type: protocol.RolloutEventProgress, Node: "n3", Step: 1, Steps: 3, Done: 3 << 20, Total: 8 << 20}).
		add(protocol.RolloutEvent{Type: protocol.RolloutEventRetry, Node: "n3", Line: "agent went away"})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, ev := range evs.evs {
			b.Event(ev)
		}
		if got := statusText(b.t.nodes["n3"]); !strings.Contains(got, "[1/3] layer sha256:ab12 3.0 MiB/8.0 MiB") || !strings.Contains(got, "retry: agent went away") {
			t.Errorf("n3 status %q: want step, bytes and the retry", got)
		}
		b.Close()
		b.Close()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("bars did not stop within 10s (deadlock between events and rendering?)")
	}
	got := cw.String()
	for _, w := range []string{"phase master0", "phase node", "n2 | run: flotilla-hello: out A", "n2: FAILED at run: flotilla-hello (exit code 3)",
		"n1", "ok, 3 ran, 0 skipped in 1.5s"} {
		if !strings.Contains(got, w) {
			t.Errorf("bars output lacks %q:\n%s", w, got)
		}
	}
}

func TestWriteStatus(t *testing.T) {
	tests := []struct {
		name string
		in   []protocol.ClusterStatus
		want []string
	}{
		{"none", nil, []string{"no clusters: apply a Clusterfile first"}},
		{"drift", []protocol.ClusterStatus{{
			Cluster: "hello", Image: "hello:1.0", ImageDigest: "sha256:0123456789abcdef0123", Rollout: "r-1", State: "done",
			Started: t0, Finished: t0.Add(12 * time.Second),
			Nodes: []protocol.NodeStatus{
				{Node: "n1", Roles: []string{"master"}, Online: true, Applied: "sha256:0123456789abcdef0123"},
				{Node: "n2", Roles: []string{"node", "ingress"}, Online: false, Applied: "sha256:fedcba9876543210fedc", Drift: true, LastError: "step run: x: exit status 1\nmore"},
				{Node: "n3", Roles: []string{"node"}, Drift: true},
			},
		}}, []string{
			"cluster hello: image hello:1.0 (sha256:0123456789ab), rollout r-1 done, started 2026-11-27 03:00:00 UTC, finished 2026-11-27 03:00:12 UTC (took 12s)",
			"NODE  ROLES         ONLINE  APPLIED              DRIFT  LAST ERROR",
			"n1    master        yes     sha256:0123456789ab  no     -",
			"n2    node,ingress  no      sha256:fedcba987654  yes    step run: x: exit status 1\n",
			"n3    node          no      -                    yes    -",
			"2 nodes of 3 drifted",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteStatus(&buf, tc.in); err != nil {
				t.Fatal(err)
			}
			assertInOrder(t, buf.String(), tc.want)
		})
	}
}

func TestConfirm(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{{"y\n", true}, {"YES\n", true}, {" yes ", true}, {"n\n", false}, {"\n", false}, {"", false}, {"yess\n", false}} {
		var out bytes.Buffer
		err := Confirm(strings.NewReader(tc.in), &out, "Delete cluster hello?")
		if (err == nil) != tc.ok {
			t.Errorf("answer %q: err %v, want confirmed=%t", tc.in, err, tc.ok)
		}
		if out.String() != "Delete cluster hello? [y/N] " {
			t.Errorf("prompt %q", out.String())
		}
	}
}

func TestShortDigestAndDuration(t *testing.T) {
	for in, want := range map[string]string{"sha256:0123456789abcdef": "sha256:0123456789ab", "sha256:ab": "sha256:ab", "latest": "latest"} {
		if got := protocol.ShortDigest(in); got != want {
			t.Errorf("protocol.ShortDigest(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[time.Duration]string{0: "0s", 1234567 * time.Microsecond: "1.2s", 345 * time.Millisecond: "345ms", 125 * time.Second: "2m5s"} {
		if got := Duration(in); got != want {
			t.Errorf("Duration(%s) = %q, want %q", in, got, want)
		}
	}
}

// fakeConsole is a terminal of 100x40 that keeps every frame mpb flushes.
type fakeConsole struct {
	mu       sync.Mutex
	pending  bytes.Buffer
	rendered bytes.Buffer
}

func (c *fakeConsole) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending.Write(p)
}

func (c *fakeConsole) ReadFrom(r io.Reader) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending.ReadFrom(r)
}

func (c *fakeConsole) IsTerminal() bool               { return true }
func (c *fakeConsole) GetTermSize() (int, int, error) { return 100, 40, nil }
func (c *fakeConsole) Flush(lines int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.pending.WriteTo(&c.rendered)
	return err
}

func (c *fakeConsole) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rendered.String()
}

// TestHealthOutputAsLines: a health check's several lines print as lines (they
// printed as one with literal \n), each still terminal-safe.
func TestHealthOutputAsLines(t *testing.T) {
	out := "http://10.0.0.7:2379 is healthy\nhttp://10.0.0.3:2379 is \x1b[2Jhealthy\netcd cluster healthy\n"
	var buf bytes.Buffer
	r := NewPlain(&buf, Options{})
	r.Event(protocol.RolloutEvent{Type: protocol.RolloutEventHealth, Line: out})
	r.Close()
	res := protocol.ApplyResult{OK: true, Health: out}
	if err := WriteSummary(&buf, &res); err != nil {
		t.Fatal(err)
	}
	got := buf.String()
	if strings.Contains(got, `\n`) || strings.Contains(got, "\x1b") {
		t.Fatalf("health output not printed as safe lines:\n%s", got)
	}
	assertInOrder(t, got, []string{"health check: http://10.0.0.7:2379 is healthy\n", "  http://10.0.0.3:2379 is \\x1b[2Jhealthy\n", "  etcd cluster healthy\n",
		"health check: http://10.0.0.7:2379 is healthy\n", "  etcd cluster healthy\n"})
}
