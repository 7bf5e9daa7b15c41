package rollout_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/protocol"
)

// countKubefile extends examples/hello with steps that append a line to runs.log each
// time they execute (so the test counts executions), a layer the upgrade changes, and
// a step after it whose duration SLOW sets (it logs "slow" as it starts, so a test can
// act while it runs).
const countKubefile = `FROM scratch
ENV  GREETING=hello SLOW=0
COPY --chmod=0755 hello.sh /usr/local/bin/flotilla-hello
COPY hello.conf.tmpl /etc/flotilla-hello/
ON all RUN "${FLOTILLA_ROOT:-}/usr/local/bin/flotilla-hello" && echo hello >> "${FLOTILLA_ROOT:-}/var/lib/flotilla-hello/runs.log"
COPY extra.txt /opt/flotilla-test/
ON all RUN echo slow >> "${FLOTILLA_ROOT:-}/var/lib/flotilla-hello/runs.log"; sleep "$SLOW"; echo "extra $(cat "${FLOTILLA_ROOT:-}/opt/flotilla-test/extra.txt")" >> "${FLOTILLA_ROOT:-}/var/lib/flotilla-hello/runs.log"
`

// buildDir builds a context dir (files copied from examples/hello plus extra) into st.
func buildDir(t *testing.T, st *store.Store, tag, kubefile string, extra map[string]string) {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join("..", "..", "examples", "hello")
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range extra {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if kubefile != "" {
		if err := os.WriteFile(filepath.Join(dir, "Kubefile"), []byte(kubefile), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := build.Build(ctx, st, build.Options{ContextDir: dir, Tags: []string{tag}}); err != nil {
		t.Fatalf("build %s: %v", tag, err)
	}
}

type fleetT struct {
	*controllertest.Fleet
	t   *testing.T
	dir string
}

func (f *fleetT) root(node string, p ...string) string {
	return filepath.Join(append([]string{f.Dir, "roots", node}, p...)...)
}

func (f *fleetT) clusterfile(name, image string, masters, nodes []string, env string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: %s}\nspec:\n  image: %s\n", name, image)
	if env != "" {
		fmt.Fprintf(&b, "  env: %s\n", env)
	}
	fmt.Fprintf(&b, "  hosts:\n    - names: [%s]\n      roles: [master]\n", strings.Join(masters, ", "))
	if len(nodes) > 0 {
		fmt.Fprintf(&b, "    - names: [%s]\n      roles: [node]\n", strings.Join(nodes, ", "))
	}
	b.WriteString("  rollout: {parallelism: {node: 5}, onFailure: halt, retries: 3}\n")
	path := filepath.Join(f.dir, fmt.Sprintf("%s-%d.yaml", name, time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		f.t.Fatal(err)
	}
	return path
}

// apply runs flotilla apply -o json and returns the result and how long it took.
func (f *fleetT) apply(args ...string) (*protocol.ApplyResult, time.Duration) {
	f.t.Helper()
	res, took, err := f.tryApply(args...)
	if err != nil {
		f.t.Fatal(err)
	}
	return res, took
}

func (f *fleetT) tryApply(args ...string) (*protocol.ApplyResult, time.Duration, error) {
	start := time.Now()
	out, errOut, code := f.CLI(context.Background(), append([]string{"apply", "-o", "json"}, args...)...)
	took := time.Since(start)
	var res protocol.ApplyResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return nil, took, fmt.Errorf("flotilla apply %v: exit %d, output not JSON (%v):\n%s\n%s", args, code, err, out, errOut)
	}
	return &res, took, nil
}

func (f *fleetT) mustApply(args ...string) (*protocol.ApplyResult, time.Duration) {
	f.t.Helper()
	res, took := f.apply(args...)
	if !res.OK {
		f.t.Fatalf("apply %v failed: %s", args, outcomeLine(res))
	}
	return res, took
}

func outcomeLine(res *protocol.ApplyResult) string {
	var parts []string
	for _, o := range res.Nodes {
		s := fmt.Sprintf("%s=%s(ran %d, skipped %d, attempts %d)", o.Node, o.Status, o.Ran, o.Skipped, o.Attempts)
		if o.Error != "" {
			s += " " + o.FailedStep + ": " + o.Error + " " + strings.Join(o.LastOutput, " | ")
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// runs counts the lines of a node's runs.log starting with each word.
func (f *fleetT) runs(node string) map[string]int {
	out := map[string]int{}
	fh, err := os.Open(f.root(node, "var/lib/flotilla-hello/runs.log"))
	if err != nil {
		return out
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		out[strings.Fields(sc.Text() + " x")[0]]++
	}
	return out
}

func (f *fleetT) status(cluster string) protocol.ClusterStatus {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := f.Status(ctx, cluster)
	if err != nil || len(st) != 1 {
		f.t.Fatalf("status %s: %v (%d clusters)", cluster, err, len(st))
	}
	return st[0]
}

func startFleet(t *testing.T, names ...string) (*fleetT, *store.Store) {
	dir := t.TempDir()
	t.Setenv(store.EnvStore, filepath.Join(dir, "store")) // the controller resolves images here
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fleetT{Fleet: controllertest.Start(t), t: t, dir: dir}
	for _, n := range names {
		f.StartAgent(n)
	}
	f.WaitOnline(60*time.Second, true, names...)
	return f, st
}

// TestFiveAgents drives the engine through a real controller and five agent processes:
// examples/hello to all five, a no-op re-apply, delete; then an image that counts its
// step executions: upgrade of one layer, scale up and down, a controller SIGKILL in the
// middle of a rollout, an agent SIGKILL in the middle of a step, and bad inputs.
func TestFiveAgents(t *testing.T) {
	names := []string{"a1", "a2", "a3", "a4", "a5"}
	f, st := startFleet(t, names...)
	buildDir(t, st, "hello:1", "", nil)
	buildDir(t, st, "count:1", countKubefile, map[string]string{"extra.txt": "v1\n"})
	buildDir(t, st, "count:2", countKubefile, map[string]string{"extra.txt": "v2\n"})

	t.Logf("%s: %s", time.Now().Format("15:04:05.000"), "examples/hello: fresh apply")
	// examples/hello: fresh apply to five agents, then nothing to do.
	hello := f.clusterfile("hello", "hello:1", names[:1], names[1:], "")
	res, fresh := f.mustApply("-f", hello)
	for _, n := range names {
		for _, p := range []string{"usr/local/bin/flotilla-hello", "etc/flotilla-hello/hello.conf", "var/lib/flotilla-hello/hello.txt"} {
			if _, err := os.Stat(f.root(n, p)); err != nil {
				t.Errorf("after apply: %v", err)
			}
		}
	}
	if len(res.Nodes) != 5 {
		t.Fatalf("fresh apply: %s", outcomeLine(res))
	}
	res, noop := f.mustApply("-f", hello)
	for _, o := range res.Nodes {
		if o.Status != protocol.NodeNoop || o.Ran != 0 {
			t.Errorf("re-apply: %s %s ran %d, want noop", o.Node, o.Status, o.Ran)
		}
	}
	t.Logf("examples/hello to 5 agents: fresh apply %s, no-op re-apply %s (CLI round trip included)", fresh.Round(time.Millisecond), noop.Round(time.Millisecond))
	out, errOut, code := f.CLI(context.Background(), "delete", "-f", hello, "--yes", "-o", "json")
	if code != 0 {
		t.Fatalf("delete: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, n := range names {
		if _, err := os.Stat(f.root(n, "etc/flotilla-hello/hello.conf")); err == nil {
			t.Errorf("%s: hello.conf still there after delete", n)
		}
	}

	t.Logf("%s: %s", time.Now().Format("15:04:05.000"), "Counting image on four agents.")
	// Counting image on four agents.
	four := names[:4]
	res, _ = f.mustApply("-f", f.clusterfile("count", "count:1", four[:1], four[1:], ""))
	for _, n := range four {
		if got := f.runs(n); got["hello"] != 1 || got["extra"] != 1 {
			t.Errorf("%s after apply: runs %v, want hello 1 extra 1", n, got)
		}
	}
	res, _ = f.mustApply("-f", f.clusterfile("count", "count:1", four[:1], four[1:], ""))
	for _, o := range res.Nodes {
		if o.Ran != 0 {
			t.Errorf("re-apply ran %d steps on %s", o.Ran, o.Node)
		}
	}

	t.Logf("%s: %s", time.Now().Format("15:04:05.000"), "Upgrade of the extra layer")
	// Upgrade of the extra layer: only the step after it runs again.
	res, upgrade := f.mustApply("-f", f.clusterfile("count", "count:2", four[:1], four[1:], ""))
	t.Logf("one-layer upgrade of 4 agents: %s", upgrade.Round(time.Millisecond))
	for _, n := range four {
		if got := f.runs(n); got["hello"] != 1 || got["extra"] != 2 {
			t.Errorf("%s after upgrade: runs %v, want hello 1 extra 2", n, got)
		}
		if b, _ := os.ReadFile(f.root(n, "opt/flotilla-test/extra.txt")); string(b) != "v2\n" {
			t.Errorf("%s: extra.txt %q after upgrade", n, b)
		}
	}

	t.Logf("%s: %s", time.Now().Format("15:04:05.000"), "Scale up (a5 joins)")
	// Scale up (a5 joins) and down (a4 leaves).
	res, _ = f.mustApply("-f", f.clusterfile("count", "count:2", []string{"a1"}, []string{"a2", "a3", "a5"}, ""))
	for _, o := range res.Nodes {
		want := map[string]string{"a4": "remove", "a5": "create"}[o.Node]
		if want == "" {
			want = "noop"
		}
		if o.Action != want {
			t.Errorf("scale: %s action %s, want %s", o.Node, o.Action, want)
		}
	}
	if got := f.runs("a5"); got["hello"] != 1 || got["extra"] != 1 {
		t.Errorf("a5 after scale up: runs %v", got)
	}
	for _, p := range []string{"opt/flotilla-test/extra.txt", "etc/flotilla-hello/hello.conf", "usr/local/bin/flotilla-hello"} {
		if _, err := os.Stat(f.root("a4", p)); err == nil {
			t.Errorf("a4 left the cluster but %s is still there", p)
		}
	}
	members := []string{"a1", "a2", "a3", "a5"}
	before := map[string]map[string]int{}
	for _, n := range members {
		before[n] = f.runs(n)
	}

	t.Logf("%s: %s", time.Now().Format("15:04:05.000"), "Controller SIGKILL")
	// Controller SIGKILL in the middle of a slow rollout, then restart: it resumes and
	// no step that succeeded runs twice.
	slow := f.clusterfile("count", "count:2", []string{"a1"}, []string{"a2", "a3", "a5"}, "{SLOW: '2'}")
	type cliRun struct {
		out, errOut string
		code        int
	}
	watching := make(chan cliRun, 1)
	go func() {
		out, errOut, code := f.CLI(context.Background(), "apply", "-f", slow)
		watching <- cliRun{out, errOut, code}
	}()
	// The kill lands while a1 (master0) is inside its 2 s step.
	if err := poll.Until(context.Background(), 30*time.Second, 20*time.Millisecond, func() bool { return f.runs("a1")["slow"] != before["a1"]["slow"] }); err != nil {
		t.Fatalf("a1 never started the slow step: %v", err)
	}
	f.KillController()
	// The apply that was watching says what happened and how to follow it again.
	select {
	case r := <-watching:
		if r.code == 0 || !strings.Contains(r.errOut, "flotilla apply --attach count") || !strings.Contains(r.errOut, "resumes the rollout") {
			t.Errorf("apply watching a controller that died: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.errOut)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("apply kept waiting after the controller died")
	}
	f.StartController()
	f.WaitOnline(60*time.Second, true, members...)
	// Re-attach: the resumed rollout's result, exit 0.
	out, errOut, code = f.CLI(context.Background(), "apply", "--attach", "count", "-o", "json")
	var attached protocol.ApplyResult
	if code != 0 || json.Unmarshal([]byte(out), &attached) != nil || !attached.OK || attached.Cluster != "count" || len(attached.Nodes) != 4 {
		t.Errorf("apply --attach count after the restart: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if _, errOut, code := f.CLI(context.Background(), "apply", "--attach", "no-such-cluster"); code == 0 || !strings.Contains(errOut, "no-such-cluster has no rollout") {
		t.Errorf("attach to an unknown cluster: exit %d: %s", code, errOut)
	}
	var state string
	resumed := func() bool {
		state = f.status("count").State
		// "interrupted" only until the restarted controller's engine resumed it.
		return state == "done" || state != "running" && state != "interrupted"
	}
	if err := poll.Until(context.Background(), 60*time.Second, 200*time.Millisecond, resumed); err != nil || state != "done" {
		t.Fatalf("after the controller restart: rollout %s, want it resumed to done (%v)", state, err)
	}
	for _, n := range members {
		got := f.runs(n)
		// SLOW is in the env of both steps: each runs again exactly once.
		if got["hello"] != before[n]["hello"]+1 || got["extra"] != before[n]["extra"]+1 {
			t.Errorf("%s after the resumed rollout: runs %v, before %v: want each step once more", n, got, before[n])
		}
		before[n] = got
	}

	t.Logf("%s: %s", time.Now().Format("15:04:05.000"), "Agent SIGKILL")
	// Agent SIGKILL in the middle of its step: retried once it is back, never lost.
	slower := f.clusterfile("count", "count:2", []string{"a1"}, []string{"a2", "a3", "a5"}, "{SLOW: '3'}")
	type result struct {
		res *protocol.ApplyResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		r, _, err := f.tryApply("-f", slower)
		done <- result{r, err}
	}()
	// The kill lands while a2 is inside its 3 s step.
	if err := poll.Until(context.Background(), 30*time.Second, 20*time.Millisecond, func() bool { return f.runs("a2")["slow"] != before["a2"]["slow"] }); err != nil {
		t.Fatalf("a2 never started the slow step: %v", err)
	}
	f.Agents["a2"].Kill()
	time.Sleep(time.Second) // the controller must see the agent gone before it comes back
	f.RestartAgent("a2")
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !r.res.OK {
		t.Fatalf("apply with a killed agent: %s", outcomeLine(r.res))
	}
	for _, o := range r.res.Nodes {
		if o.Node == "a2" && (o.Status != protocol.NodeOK || o.Attempts < 2) {
			t.Errorf("a2: %s after %d attempts, want ok after a retry", o.Status, o.Attempts)
		}
	}
	for _, n := range members {
		got := f.runs(n)
		// The killed agent's step shell dies with it (Pdeathsig), so the killed step
		// completes exactly once: in the retry.
		if got["hello"] != before[n]["hello"]+1 || got["extra"] != before[n]["extra"]+1 {
			t.Errorf("%s after the agent kill: runs %v, before %v: want each step exactly once more", n, got, before[n])
		}
	}

	t.Logf("%s: %s", time.Now().Format("15:04:05.000"), "Bad inputs fail")
	// Bad inputs fail before anything runs.
	for _, tc := range []struct {
		cf, want string
	}{
		{f.clusterfile("count", "count:2", []string{"a1"}, []string{"nosuch"}, ""), "nosuch matches no agent"},
		{f.clusterfile("count", "missing:1", []string{"a1"}, nil, ""), "flotilla pull/load it on the controller host"},
		{f.clusterfile("count", "count:2", []string{"a1"}, []string{"a1"}, ""), "duplicate host"},
	} {
		out, errOut, code := f.CLI(context.Background(), "plan", "-f", tc.cf)
		if code == 0 || !strings.Contains(errOut, tc.want) {
			t.Errorf("plan of a bad Clusterfile: exit %d, stderr %q, want %q\n%s", code, errOut, tc.want, out)
		}
	}
}

// BenchmarkNoopReapply measures `flotilla apply` of examples/hello to five agent
// processes when everything is applied already (CLI process and round trip included).
func BenchmarkNoopReapply(b *testing.B) {
	dir := b.TempDir()
	b.Setenv(store.EnvStore, filepath.Join(dir, "store"))
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := build.Build(ctx, st, build.Options{ContextDir: filepath.Join("..", "..", "examples", "hello"), Tags: []string{"hello:1"}}); err != nil {
		b.Fatal(err)
	}
	f := controllertest.Start(b)
	names := []string{"a1", "a2", "a3", "a4", "a5"}
	for _, n := range names {
		f.StartAgent(n)
	}
	f.WaitOnline(60*time.Second, true, names...)
	cf := filepath.Join(dir, "Clusterfile")
	text := "apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: hello}\nspec:\n  image: hello:1\n  hosts:\n" +
		"    - names: [a1]\n      roles: [master]\n    - names: [a2, a3, a4, a5]\n      roles: [node]\n"
	if err := os.WriteFile(cf, []byte(text), 0o644); err != nil {
		b.Fatal(err)
	}
	apply := func() *protocol.ApplyResult {
		out, errOut, code := f.CLI(context.Background(), "apply", "-f", cf, "-o", "json")
		var res protocol.ApplyResult
		if err := json.Unmarshal([]byte(out), &res); err != nil || !res.OK {
			b.Fatalf("apply: exit %d %v\n%s\n%s", code, err, out, errOut)
		}
		return &res
	}
	apply()
	for b.Loop() {
		res := apply()
		for _, o := range res.Nodes {
			if o.Status != protocol.NodeNoop {
				b.Fatalf("re-apply: %s is %s", o.Node, o.Status)
			}
		}
	}
}
