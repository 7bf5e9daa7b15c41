package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
	"github.com/flotilla-dev/flotilla/protocol"
)

func TestNormalizeControllerURL(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1":                 "https://10.0.0.1:9443",
		"10.0.0.1:9000":            "https://10.0.0.1:9000",
		"https://ctl.example":      "https://ctl.example:9443",
		"https://ctl.example:1/x/": "https://ctl.example:1",
		"[::1]:9443":               "https://[::1]:9443",
		"":                         "",
		"tls://10.0.0.1:4222":      "",
	} {
		got, err := NormalizeControllerURL(in)
		if (err != nil) != (want == "") || got != want {
			t.Errorf("NormalizeControllerURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestAppliedStatePersists(t *testing.T) {
	dir := t.TempDir()
	a, err := loadApplied(dir)
	if err != nil {
		t.Fatal(err)
	}
	if a.has("sha256:1") {
		t.Fatal("empty state has a digest")
	}
	if err := a.add("sha256:1", AppliedStep{Task: "t"}); err != nil {
		t.Fatal(err)
	}
	b, err := loadApplied(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !b.has("sha256:1") || b.has("sha256:2") {
		t.Errorf("reloaded state: %+v", b.m)
	}
	if err := b.forget("sha256:1"); err != nil {
		t.Fatal(err)
	}
	if c, _ := loadApplied(dir); c.has("sha256:1") {
		t.Error("forgotten digest came back")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
	if err := os.WriteFile(filepath.Join(dir, fileApplied), []byte("{broken"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadApplied(dir); err == nil || !strings.Contains(err.Error(), "applied.json") {
		t.Errorf("broken applied.json: %v", err)
	}
}

type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) emit(ev protocol.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.l = append(l.l, ev.Stream+":"+ev.Line)
}

func TestExecStep(t *testing.T) {
	cases := []struct {
		name    string
		step    protocol.Step
		code    int
		timeout time.Duration
		want    []string
	}{
		{"argv", protocol.Step{Command: []string{"echo", "a b"}}, 0, 0, []string{"stdout:a b"}},
		{"shell with both streams", protocol.Step{Shell: "echo out; echo err >&2; exit 3"}, 3, 0, []string{"stdout:out", "stderr:err"}},
		{"env and root", protocol.Step{Shell: `echo "$FOO $FLOTILLA_ROOT"; pwd`, Env: map[string]string{"FOO": "bar"}}, 0, 0, nil},
		{"missing binary", protocol.Step{Command: []string{"/nonexistent/bin"}}, 127, 0, nil},
		{"timeout kills the group", protocol.Step{Shell: "sleep 30 & sleep 30"}, -1, 200 * time.Millisecond, nil},
		{"background child keeps stdout", protocol.Step{Shell: "sleep 3 & echo started"}, 0, 0, []string{"stdout:started"}},
	}
	root := t.TempDir()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := &lines{}
			task := &protocol.Task{ID: "t", Node: "n"}
			sc := &StepContext{Task: task, Step: &tc.step, Root: root, Env: stepEnv(root, root, task, &tc.step), emit: l.emit}
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			start := time.Now()
			err := ExecStep(ctx, sc)
			if d := time.Since(start); d > 8*time.Second {
				t.Errorf("took %s", d)
			}
			var ee *ExitError
			switch {
			case tc.code == -1:
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("err = %v, want deadline exceeded", err)
				}
			case tc.code == 0 && err != nil:
				t.Errorf("err = %v", err)
			case tc.code != 0 && (!errors.As(err, &ee) || ee.Code != tc.code):
				t.Errorf("err = %v, want exit code %d", err, tc.code)
			}
			if tc.name == "env and root" {
				want := []string{"stdout:bar " + root, "stdout:" + root}
				if strings.Join(l.l, "|") != strings.Join(want, "|") {
					t.Errorf("lines %q, want %q", l.l, want)
				}
			}
			for _, w := range tc.want {
				if !strings.Contains(strings.Join(l.l, "|"), w) {
					t.Errorf("lines %q lack %q", l.l, w)
				}
			}
		})
	}
}

// TestExecutorsOption: an agent runs the executors its Options name, beside
// the built-in "exec" unless they replace it, and keeps its own copy of them.
func TestExecutorsOption(t *testing.T) {
	custom := ExecutorFunc(func(context.Context, *StepContext) error { return nil })
	for _, tc := range []struct {
		name        string
		executors   map[string]Executor
		want        []string
		builtinExec bool
	}{
		{"nil: exec alone", nil, []string{"exec"}, true},
		{"kinds added", map[string]Executor{"x": custom}, []string{"exec", "x"}, true},
		{"exec replaced", map[string]Executor{"exec": custom}, []string{"exec"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			a, err := New(t.Context(), Options{Name: "n1", DataDir: filepath.Join(dir, "data"), Root: filepath.Join(dir, "root"),
				Credentials: &protocol.Credentials{Node: "n1", SigningKey: make([]byte, ed25519.PublicKeySize)}, Executors: tc.executors})
			if err != nil {
				t.Fatal(err)
			}
			if tc.executors != nil {
				tc.executors["late"] = custom // the caller's map is not the agent's
			}
			if got := slices.Sorted(maps.Keys(a.opts.Executors)); !slices.Equal(got, tc.want) {
				t.Fatalf("executors %v, want %v", got, tc.want)
			}
			step := &protocol.Step{Kind: "exec", Command: []string{"false"}}
			err = a.opts.Executors["exec"].Execute(t.Context(), NewStepContext(&protocol.Task{}, step, dir, dir, nil))
			var ee *ExitError
			if tc.builtinExec != errors.As(err, &ee) {
				t.Errorf("exec of `false`: %v; built-in exec expected: %v", err, tc.builtinExec)
			}
		})
	}
}

func TestReadStatus(t *testing.T) {
	dir := t.TempDir()
	if _, err := ReadStatus(dir); err == nil {
		t.Fatal("no status file, no error")
	}
	st := Status{Name: "n", Registered: true, Connected: true, Updated: time.Now().UTC()}
	data, _ := protocolJSON(st)
	if err := atomicfile.Write(filepath.Join(dir, fileStatus), data, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ReadStatus(dir)
	if err != nil || got.Name != "n" || !got.Registered {
		t.Errorf("ReadStatus = %+v, %v", got, err)
	}
}

func TestStatusMirrorProblem(t *testing.T) {
	for _, tc := range []struct {
		st   Status
		want string // substring; "" for none
	}{
		{Status{}, ""},
		{Status{RegistryListen: "127.0.0.1:505", Registry: "127.0.0.1:505"}, ""},
		{Status{RegistryListen: "127.0.0.1:505"}, "has not started on 127.0.0.1:505"},
		{Status{RegistryListen: "127.0.0.1:505", RegistryError: "the address is taken"}, "does not serve on 127.0.0.1:505: the address is taken"},
	} {
		got := tc.st.MirrorProblem()
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%+v: MirrorProblem() = %q, want %q", tc.st, got, tc.want)
		}
	}
}
