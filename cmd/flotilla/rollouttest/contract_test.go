package rollouttest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/internal/testbin"
	"github.com/flotilla-dev/flotilla/protocol"
)

const helloClusterfile = `apiVersion: flotilla.dev/v1
kind: Cluster
metadata: {name: hello}
spec:
  image: hello:1.0
  hosts:
    - names: [n1, n2]
      roles: [node]
`

// scripted is a controller whose rollout handlers answer from the test.
type scripted struct {
	t    *testing.T
	ctrl *plane.Controller
	bin  string
	dir  string

	mu   sync.Mutex
	reqs map[string][]json.RawMessage // request bodies by admin name
}

func startScripted(t *testing.T) *scripted {
	t.Helper()
	bin, err := testbin.Path()
	if err != nil {
		t.Fatalf("flotilla binary: %v", err)
	}
	dir := t.TempDir()
	ctrl, err := plane.New(plane.Options{DataDir: filepath.Join(dir, "controller"), Listen: "127.0.0.1:0",
		HTTPListen: "127.0.0.1:0", Advertise: "127.0.0.1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ctrl.Start(ctx); err != nil {
		t.Fatalf("start controller: %v", err)
	}
	t.Cleanup(func() { _ = ctrl.Close() })
	s := &scripted{t: t, ctrl: ctrl, bin: bin, dir: dir, reqs: map[string][]json.RawMessage{}}
	if err := os.WriteFile(s.clusterfile(), []byte(helloClusterfile), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *scripted) clusterfile() string { return filepath.Join(s.dir, "Clusterfile") }

// handle registers h for name and records every request body.
func (s *scripted) handle(name string, h plane.AdminHandler) {
	s.ctrl.HandleAdmin(name, func(ctx context.Context, call *plane.AdminCall) (any, error) {
		s.mu.Lock()
		s.reqs[name] = append(s.reqs[name], call.Body)
		s.mu.Unlock()
		return h(ctx, call)
	})
}

func (s *scripted) requests(name string) []json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reqs[name]
}

// command returns the flotilla command for args, pointed at the controller.
func (s *scripted) command(ctx context.Context, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	args = append(args, "--data-dir", filepath.Join(s.dir, "controller"))
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Env = append(os.Environ(), "FLOTILLA_CONTROLLER=", "FLOTILLA_CREDENTIALS=")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	return cmd, &o, &e
}

// run runs flotilla to the end and returns stdout, stderr and the exit code.
func (s *scripted) run(args ...string) (string, string, int) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd, o, e := s.command(ctx, args...)
	code := exitCode(s.t, cmd.Run())
	return o.String(), e.String(), code
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("run flotilla: %v", err)
	return -1
}

// replay streams evs and answers res.
func replay(evs []protocol.RolloutEvent, res protocol.ApplyResult) plane.AdminHandler {
	return func(ctx context.Context, call *plane.AdminCall) (any, error) {
		var req protocol.ApplyRequest
		if err := call.Decode(&req); err != nil {
			return nil, err
		}
		for _, ev := range evs {
			if err := call.Send(ev); err != nil {
				return nil, err
			}
		}
		return res, nil
	}
}

func events(node string, steps []string, failAt int) []protocol.RolloutEvent {
	now := time.Now()
	evs := []protocol.RolloutEvent{
		{Time: now, Cluster: "hello", Rollout: "r-1", Type: protocol.RolloutEventStart},
		{Time: now, Cluster: "hello", Rollout: "r-1", Type: protocol.RolloutEventPhase, Phase: "node"},
		{Time: now, Cluster: "hello", Rollout: "r-1", Type: protocol.RolloutEventNodeStart, Node: node, Phase: "node", Steps: len(steps)},
	}
	for i, name := range steps {
		evs = append(evs,
			protocol.RolloutEvent{Time: now, Type: protocol.RolloutEventStep, Node: node, Step: i + 1, Steps: len(steps), StepName: name},
			protocol.RolloutEvent{Time: now, Type: protocol.RolloutEventOutput, Node: node, Step: i + 1, Line: "output of " + name},
			protocol.RolloutEvent{Time: now, Type: protocol.RolloutEventStepDone, Node: node, Step: i + 1, Steps: len(steps)})
		if i+1 == failAt {
			break
		}
	}
	return evs
}

func TestApplyContract(t *testing.T) {
	s := startScripted(t)
	steps := []string{"layer sha256:ab12", "file /etc/flotilla-hello/hello.conf", "run: flotilla-hello"}
	okRes := protocol.ApplyResult{Rollout: "r-1", Cluster: "hello", Image: "hello:1.0", ImageDigest: "sha256:0123456789abcdef", OK: true,
		Duration: 2 * time.Second, Nodes: []protocol.NodeOutcome{
			{Node: "n1", Phase: "node", Action: "create", Status: protocol.NodeOK, Ran: 3, Steps: 3, Duration: time.Second},
			{Node: "n2", Phase: "node", Action: "noop", Status: protocol.NodeNoop, Skipped: 3, Steps: 3}}}
	failRes := protocol.ApplyResult{Rollout: "r-2", Cluster: "hello", Image: "hello:1.0", Nodes: []protocol.NodeOutcome{
		{Node: "n1", Phase: "node", Action: "create", Status: protocol.NodeFailed, Ran: 3, Steps: 3, FailedStep: "run: flotilla-hello",
			ExitCode: 7, Error: "exit status 7", LastOutput: []string{"disk full", "giving up"}},
		{Node: "n2", Phase: "node", Action: "create", Status: protocol.NodeNotStarted}}, Halted: true}

	tests := []struct {
		name     string
		handler  plane.AdminHandler
		args     []string
		wantCode int
		stdout   []string
		stderr   []string
		noStdout []string
	}{
		{
			name: "success", handler: replay(events("n1", steps, 0), okRes), args: []string{"apply", "-f", s.clusterfile()},
			stdout: []string{"rollout r-1 of cluster hello started", "n1: [1/3] layer sha256:ab12", "n1: [3/3] done in",
				"n1    node   create  ok      3    0        1s", "n2    node   noop    noop", "2 nodes: 1 ok, 1 noop in 2s"},
			noStdout: []string{"output of"}, // a plain run shows the output of failing steps only
		},
		{
			name: "verbose", handler: replay(events("n1", steps, 0), okRes), args: []string{"apply", "-f", s.clusterfile(), "-v"},
			stdout: []string{"n1 | output of layer sha256:ab12", "n1 | output of run: flotilla-hello"},
		},
		{
			name: "failed node and halt", handler: replay(append(events("n1", steps, 3), protocol.RolloutEvent{Type: protocol.RolloutEventNodeDone, Node: "n1",
				Outcome: &failRes.Nodes[0]}), failRes), args: []string{"apply", "-f", s.clusterfile()}, wantCode: 1,
			stdout: []string{"n1 | output of run: flotilla-hello", "n1: FAILED at run: flotilla-hello (exit code 7)",
				"2 nodes: 1 failed, 1 not-started", "the rollout halted", `n1 failed at step "run: flotilla-hello" with exit code 7`, "  | disk full", "  | giving up"},
			stderr: []string{"error: 2 of 2 nodes of cluster hello did not finish: n1 (failed), n2 (not-started)"},
		},
		{
			name: "json", handler: replay(events("n1", steps, 0), okRes), args: []string{"apply", "-f", s.clusterfile(), "-o", "json"},
			stdout: []string{`"rollout": "r-1"`, `"status": "noop"`}, stderr: []string{"n1: [1/3] layer sha256:ab12"},
		},
		{
			name: "controller refuses the Clusterfile",
			handler: func(context.Context, *plane.AdminCall) (any, error) {
				return nil, errors.New(`Clusterfile:8: spec.hosts[0].roles[0]: unknown role "mastr" (the image has: all)`)
			},
			args: []string{"apply", "-f", s.clusterfile()}, wantCode: 1,
			stderr: []string{`error: Clusterfile:8: spec.hosts[0].roles[0]: unknown role "mastr" (the image has: all)`},
		},
		{
			name: "detach", handler: replay(nil, protocol.ApplyResult{Rollout: "r-3", Cluster: "hello"}), args: []string{"apply", "-f", s.clusterfile(), "--detach"},
			stdout: []string{"rollout r-3 of cluster hello started in the controller; follow it with: flotilla status hello"},
		},
		{
			name: "missing Clusterfile", args: []string{"apply", "-f", filepath.Join(s.dir, "nope.yaml")}, wantCode: 1,
			stderr: []string{"read Clusterfile: open " + filepath.Join(s.dir, "nope.yaml") + ": no such file or directory"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.handler != nil {
				s.handle(protocol.AdminApply, tc.handler)
			}
			out, errOut, code := s.run(tc.args...)
			if code != tc.wantCode {
				t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, out, errOut)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
			for _, w := range tc.noStdout {
				if strings.Contains(out, w) {
					t.Errorf("stdout holds %q:\n%s", w, out)
				}
			}
		})
	}

	// Every apply sent the file's content and its path (for file:line errors), and
	// --detach asked the controller to detach.
	reqs := s.requests(protocol.AdminApply)
	if len(reqs) != len(tests)-1 {
		t.Fatalf("controller got %d apply requests, want %d", len(reqs), len(tests)-1)
	}
	var last protocol.ApplyRequest
	if err := json.Unmarshal(reqs[len(reqs)-1], &last); err != nil {
		t.Fatal(err)
	}
	if string(last.Clusterfile) != helloClusterfile || last.Path != s.clusterfile() || !last.Detach || last.DryRun {
		t.Errorf("detached apply request = %+v", last)
	}
}

// Ctrl-C stops watching, not the rollout: exit 130 and how to follow it.
func TestApplyInterrupt(t *testing.T) {
	s := startScripted(t)
	started := make(chan struct{})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	s.handle(protocol.AdminApply, func(ctx context.Context, call *plane.AdminCall) (any, error) {
		_ = call.Send(protocol.RolloutEvent{Time: time.Now(), Cluster: "hello", Rollout: "r-9", Type: protocol.RolloutEventStart})
		close(started)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return protocol.ApplyResult{Rollout: "r-9", Cluster: "hello"}, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd, o, e := s.command(ctx, "apply", "-f", s.clusterfile())
	// The interrupt goes in once the CLI has printed the streamed start event.
	cmd.Stdout = nil
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	const startLine = "rollout r-9 of cluster hello started"
	printed := make(chan struct{})
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		var once sync.Once
		buf := make([]byte, 4096)
		for {
			n, err := stdout.Read(buf)
			o.Write(buf[:n])
			if strings.Contains(o.String(), startLine) {
				once.Do(func() { close(printed) })
			}
			if err != nil {
				return
			}
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("apply request did not reach the controller within 30s")
	}
	select {
	case <-printed:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-copied
		t.Fatalf("the CLI did not print the streamed start within 30s\nstdout:\n%s", o)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	<-copied
	code := exitCode(t, cmd.Wait())
	if code != 130 {
		t.Fatalf("exit code %d after Ctrl-C, want 130\nstdout:\n%s\nstderr:\n%s", code, o, e)
	}
	if want := "the rollout goes on in the controller; follow it with: flotilla status hello"; !strings.Contains(e.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, e)
	}
	if !strings.Contains(o.String(), startLine) {
		t.Errorf("stdout lacks the streamed start:\n%s", o)
	}
}

func TestPlanStatusDeleteContract(t *testing.T) {
	s := startScripted(t)
	s.handle(protocol.AdminPlan, func(ctx context.Context, call *plane.AdminCall) (any, error) {
		var req protocol.ApplyRequest
		if err := call.Decode(&req); err != nil {
			return nil, err
		}
		if !req.DryRun {
			return nil, errors.New("plan request without DryRun")
		}
		return protocol.ClusterPlan{Cluster: "hello", Image: "hello:1.0", ImageDigest: "sha256:0123456789abcdef", Phases: []protocol.PlanPhase{{
			Name: "node", Parallelism: 1, Nodes: []protocol.NodePlan{{Node: "n1", IP: "10.0.0.1", Online: true, Roles: []string{"all"}, Action: protocol.ActionCreate,
				Steps: []protocol.PlannedStep{{Kind: protocol.KindRun, Command: "flotilla-hello", Role: "all", Reason: "new"}}}},
		}}}, nil
	})
	s.handle(protocol.AdminStatus, func(ctx context.Context, call *plane.AdminCall) (any, error) {
		var req protocol.StatusRequest
		if err := call.Decode(&req); err != nil {
			return nil, err
		}
		return []protocol.ClusterStatus{{Cluster: "hello", Image: "hello:1.0", ImageDigest: "sha256:0123456789abcdef", Rollout: "r-1", State: "done",
			Nodes: []protocol.NodeStatus{{Node: "n1", Roles: []string{"all"}, Online: true, Applied: "sha256:0123456789abcdef"},
				{Node: "n2", Roles: []string{"all"}, Drift: true, LastError: "offline"}}}}, nil
	})
	s.handle(protocol.AdminDelete, replay(nil, protocol.ApplyResult{Rollout: "d-1", Cluster: "hello", OK: true, Nodes: []protocol.NodeOutcome{
		{Node: "n1", Phase: "remove", Action: "remove", Status: protocol.NodeOK, Ran: 4, Steps: 4}}}))

	tests := []struct {
		name     string
		args     []string
		wantCode int
		stdout   []string
		stderr   []string
	}{
		{name: "plan", args: []string{"plan", "-f", s.clusterfile()},
			stdout: []string{"cluster hello: image hello:1.0", "node   n1    10.0.0.1  all    create", "> run flotilla-hello (role all; new)"}},
		{name: "plan json", args: []string{"plan", "-f", s.clusterfile(), "-o", "json"}, stdout: []string{`"action": "create"`}},
		{name: "dry run is plan", args: []string{"apply", "--dry-run", "-f", s.clusterfile()}, stdout: []string{"> run flotilla-hello"}},
		{name: "status", args: []string{"status", "hello"},
			stdout: []string{"cluster hello: image hello:1.0 (sha256:0123456789ab), rollout r-1 done", "n2    all    no      -", "1 node of 2 drifted"}},
		{name: "status by Clusterfile json", args: []string{"status", "-f", s.clusterfile(), "-o", "json"}, stdout: []string{`"drift": true`}},
		{name: "delete refuses without a terminal", args: []string{"delete", "-f", s.clusterfile()}, wantCode: 1,
			stderr: []string{"refusing to delete cluster hello without confirmation: stdin is not a terminal; pass --yes"}},
		{name: "delete --yes", args: []string{"delete", "-f", s.clusterfile(), "--yes"}, stdout: []string{"n1    remove  remove  ok      4"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := s.run(tc.args...)
			if code != tc.wantCode {
				t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, out, errOut)
			}
			for _, w := range tc.stdout {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.stderr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
	var st protocol.StatusRequest
	reqs := s.requests(protocol.AdminStatus)
	if len(reqs) != 2 {
		t.Fatalf("%d status requests, want 2", len(reqs))
	}
	for i, r := range reqs {
		if err := json.Unmarshal(r, &st); err != nil || st.Cluster != "hello" {
			t.Errorf("status request %d = %s (%v), want cluster hello", i, r, err)
		}
	}
	if n := len(s.requests(protocol.AdminDelete)); n != 1 {
		t.Errorf("%d delete requests reached the controller, want 1 (the refused one must not)", n)
	}
}
