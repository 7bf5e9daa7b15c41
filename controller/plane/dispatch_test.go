package plane_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func startController(t *testing.T, dir string) *plane.Controller {
	t.Helper()
	c, err := plane.New(plane.Options{DataDir: dir, Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Advertise: "127.0.0.1", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startAgent runs an in-process agent with the default executors plus "probe",
// which reports progress and output lines, then fails if the payload says so.
func startAgent(t *testing.T, c *plane.Controller, name, dir string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cr, err := c.LocalAgentCredentials(ctx, name, protocol.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	ex := map[string]agent.Executor{}
	ex["probe"] = agent.ExecutorFunc(func(ctx context.Context, sc *agent.StepContext) error {
		sc.Progress(1, 2, "half")
		w := sc.LineWriter("stdout")
		_, _ = w.Write([]byte("line one\nline two\nno newline"))
		w.Close()
		sc.Progress(2, 2, "done")
		if string(sc.Step.Payload) == `"fail"` {
			return &agent.ExitError{Code: 42}
		}
		if string(sc.Step.Payload) == `"ask"` {
			reply, err := sc.Request(ctx, "echo", []byte("ping"))
			if err != nil {
				return err
			}
			sc.Output("stdout", "reply:"+string(reply))
		}
		if string(sc.Step.Payload) == `"panic"` {
			panic("probe asked to panic")
		}
		return nil
	})
	a, err := agent.New(ctx, agent.Options{Credentials: cr, Name: name, DataDir: dir, Root: filepath.Join(dir, "root"),
		HeartbeatInterval: 200 * time.Millisecond, Executors: ex, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	online := func() bool { n, ok := c.Node(name); return ok && n.Online }
	if err := poll.Until(context.Background(), 10*time.Second, 20*time.Millisecond, online); err != nil {
		t.Fatalf("agent %s not online: %v", name, err)
	}
}

type recorder struct {
	mu  sync.Mutex
	evs []protocol.Event
}

func (r *recorder) add(ev protocol.Event) { r.mu.Lock(); r.evs = append(r.evs, ev); r.mu.Unlock() }
func (r *recorder) events() []protocol.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]protocol.Event(nil), r.evs...)
}

func run(t *testing.T, c *plane.Controller, task *protocol.Task) (*protocol.TaskResult, []protocol.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rec := &recorder{}
	r, err := c.Dispatch(ctx, task, rec.add)
	if err != nil {
		t.Fatalf("dispatch: %v", err)
	}
	res, err := r.Wait(ctx)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	return res, rec.events()
}

func TestDispatch(t *testing.T) {
	dir := t.TempDir()
	c := startController(t, filepath.Join(dir, "controller"))
	agentDir := filepath.Join(dir, "n1")
	startAgent(t, c, "n1", agentDir)

	t.Run("events arrive in order and end with the task result", func(t *testing.T) {
		res, evs := run(t, c, &protocol.Task{Node: "n1", Steps: []protocol.Step{
			{Kind: "exec", Shell: `echo "$FLOTILLA_NODE $X"; echo oops >&2`, Env: map[string]string{"X": "42"}},
			{Kind: "probe"},
		}})
		if !res.OK || res.ExitCode != 0 || res.FailedStep != -1 {
			t.Fatalf("result %+v", res)
		}
		var got []string
		for i, ev := range evs {
			if ev.N != uint64(i+1) {
				t.Errorf("event %d has N=%d", i, ev.N)
			}
			s := string(ev.Type)
			switch {
			case ev.Line != "":
				s += ":" + ev.Stream + ":" + ev.Line
			case ev.Progress != nil:
				s += ":" + ev.Progress.Message
			}
			got = append(got, s)
		}
		joined := strings.Join(got, "|")
		for _, want := range []string{"output:stdout:n1 42", "output:stderr:oops", "progress:half",
			"output:stdout:line one|output:stdout:line two|output:stdout:no newline|progress:done|step.result|task.result"} {
			if !strings.Contains(joined, want) {
				t.Errorf("events lack %q:\n%s", want, joined)
			}
		}
		if got[len(got)-1] != "task.result" || got[0] != "step.started" {
			t.Errorf("events must start with step.started and end with task.result: %s", joined)
		}
	})

	t.Run("a step with an applied digest is skipped", func(t *testing.T) {
		marker := filepath.Join(dir, "ran")
		step := protocol.Step{Kind: "exec", Shell: "echo x >> " + marker, Digest: "sha256:feed"}
		for i := range 2 {
			res, evs := run(t, c, &protocol.Task{Node: "n1", Steps: []protocol.Step{step}})
			if !res.OK {
				t.Fatalf("run %d: %+v", i, res)
			}
			var sr *protocol.StepResult
			for _, ev := range evs {
				if ev.Type == protocol.EventStepResult {
					sr = ev.Result
				}
			}
			if sr == nil || sr.Skipped != (i == 1) {
				t.Errorf("run %d: step result %+v, want skipped=%t", i, sr, i == 1)
			}
		}
		data, _ := os.ReadFile(marker)
		if string(data) != "x\n" {
			t.Errorf("the step ran %q times, want once", data)
		}
		applied, err := os.ReadFile(filepath.Join(agentDir, "applied.json"))
		if err != nil || !strings.Contains(string(applied), "sha256:feed") {
			t.Errorf("applied.json: %s %v", applied, err)
		}
	})

	t.Run("failures stop the task and report the step", func(t *testing.T) {
		for _, tc := range []struct {
			payload  string
			exitCode int
			errLike  string
		}{{`"fail"`, 42, ""}, {`"panic"`, 1, "panicked"}} {
			res, _ := run(t, c, &protocol.Task{Node: "n1", Steps: []protocol.Step{
				{Kind: "probe", Payload: []byte(tc.payload)}, {Kind: "exec", Command: []string{"true"}},
			}})
			if res.OK || res.ExitCode != tc.exitCode || res.FailedStep != 0 || !strings.Contains(res.Error, tc.errLike) {
				t.Errorf("payload %s: result %+v", tc.payload, res)
			}
		}
	})

	t.Run("executors can ask the controller on the node's request subject", func(t *testing.T) {
		err := c.HandleNodeRequest("echo", func(_ context.Context, node string, data []byte) []byte {
			return []byte(node + ":" + string(data))
		})
		if err != nil {
			t.Fatal(err)
		}
		res, evs := run(t, c, &protocol.Task{Node: "n1", Steps: []protocol.Step{{Kind: "probe", Payload: []byte(`"ask"`)}}})
		found := false
		for _, ev := range evs {
			found = found || ev.Line == "reply:n1:ping"
		}
		if !res.OK || !found {
			t.Errorf("result %+v, reply seen: %t", res, found)
		}
	})

	t.Run("a step timeout kills the command", func(t *testing.T) {
		start := time.Now()
		res, _ := run(t, c, &protocol.Task{Node: "n1", Steps: []protocol.Step{{Kind: "exec", Command: []string{"sleep", "30"}, Timeout: 300 * time.Millisecond}}})
		if res.OK || !res.TimedOut || res.ExitCode != 124 {
			t.Errorf("result %+v", res)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("timeout took %s", d)
		}
	})

	t.Run("giving up on a run cancels it on the node", func(t *testing.T) {
		rec := &recorder{}
		r, err := c.Dispatch(context.Background(), &protocol.Task{Node: "n1", Steps: []protocol.Step{{Kind: "exec", Command: []string{"sleep", "30"}}}}, rec.add)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if _, err := r.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait = %v", err)
		}
		final := func() *protocol.TaskResult {
			evs := rec.events()
			if n := len(evs); n > 0 {
				return evs[n-1].Final
			}
			return nil
		}
		if err := poll.Until(context.Background(), 10*time.Second, 20*time.Millisecond, func() bool { return final() != nil }); err != nil {
			t.Fatalf("no task result after cancel: %v", err)
		}
		if f := final(); !f.Canceled {
			t.Errorf("final %+v, want canceled", f)
		}
	})

	t.Run("unknown kinds and offline nodes fail at dispatch", func(t *testing.T) {
		ctx := context.Background()
		if _, err := c.Dispatch(ctx, &protocol.Task{Node: "n1", Steps: []protocol.Step{{Kind: "teleport"}}}, nil); err == nil || !strings.Contains(err.Error(), "no executor") {
			t.Errorf("unknown kind: %v", err)
		}
		if _, err := c.Dispatch(ctx, &protocol.Task{Node: "ghost", Steps: []protocol.Step{{Kind: "exec", Command: []string{"true"}}}}, nil); !errors.Is(err, plane.ErrNodeOffline) {
			t.Errorf("dispatch to ghost: %v", err)
		}
	})

	t.Run("unsigned, forged and malformed tasks are refused and the agent keeps working", func(t *testing.T) {
		_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
		forged, _ := protocol.Sign(otherKey, protocol.TypeTask, &protocol.Task{ID: "f", Node: "n1", Seq: 1 << 62, Expires: time.Now().Add(time.Minute), Steps: []protocol.Step{{Kind: "exec", Command: []string{"true"}}}})
		for name, data := range map[string][]byte{
			"garbage":  []byte("\xff\x00{"),
			"unsigned": []byte(`{"type":"task","body":"e30="}`),
			"forged":   forged,
		} {
			m, err := c.Conn().Request(protocol.TaskSubject("n1"), data, 5*time.Second)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			var ack protocol.TaskAck
			if err := protocol.Decode(m.Data, &ack); err != nil || ack.Accepted || ack.Error == "" {
				t.Errorf("%s: ack %+v %v, want refused", name, ack, err)
			}
		}
		// also on the controller's own subjects
		_ = c.Conn().Publish(protocol.EventsSubject("n1", "nope"), []byte("garbage"))
		_ = c.Conn().Publish(protocol.AdminSubject("nodes"), []byte("garbage"))
		res, _ := run(t, c, &protocol.Task{Node: "n1", Steps: []protocol.Step{{Kind: "exec", Command: []string{"true"}}}})
		if !res.OK {
			t.Errorf("valid task after bad ones: %+v", res)
		}
	})
}

// TestSequenceSurvivesRestart: tasks signed after a controller restart carry
// higher sequence numbers, so agents that remember the last one accept them.
func TestSequenceSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	var last uint64
	for i := range 2 {
		c := startController(t, filepath.Join(dir, "controller"))
		startAgent(t, c, "n1", filepath.Join(dir, "n1"))
		task := &protocol.Task{Node: "n1", Steps: []protocol.Step{{Kind: "exec", Command: []string{"true"}}}}
		res, _ := run(t, c, task)
		if !res.OK {
			t.Fatalf("start %d: %+v", i, res)
		}
		if task.Seq <= last {
			t.Fatalf("start %d: seq %d not above %d", i, task.Seq, last)
		}
		last = task.Seq
		c.Close()
	}
}

// TestRejoinReplacesCredentials: a node that joins again gets new credentials,
// and a connection made with the old ones is closed and cannot come back.
func TestRejoinReplacesCredentials(t *testing.T) {
	c := startController(t, t.TempDir())
	ctx := context.Background()
	old, err := c.LocalAgentCredentials(ctx, "n9", protocol.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(old.CAPEM)
	closed := make(chan struct{})
	nc, err := nats.Connect(old.NATSURLs[0], nats.UserInfo(old.User, old.Password), nats.Secure(&tls.Config{RootCAs: pool}),
		nats.MaxReconnects(2), nats.ReconnectWait(50*time.Millisecond), nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatalf("old credentials before re-join: %v", err)
	}
	defer nc.Close()
	if _, err := c.LocalAgentCredentials(ctx, "n9", protocol.Facts{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("connection with the replaced credentials still open")
	}
}
