package rollouttest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/protocol"
)

// helloFiles are what examples/hello leaves under an agent's root.
var helloFiles = []string{"usr/local/bin/flotilla-hello", "etc/flotilla-hello/hello.conf", "var/lib/flotilla-hello/hello.txt"}

// TestHelloFiveAgents drives the whole rollout through the CLI: a real controller and
// five agents (each with its own root) apply examples/hello, re-apply it (nothing
// runs), show status, refuse a bad Clusterfile and delete it again.
func TestHelloFiveAgents(t *testing.T) {
	store := t.TempDir()
	t.Setenv("FLOTILLA_STORE", store) // the controller started below resolves images here
	f := controllertest.Start(t)
	build := exec.Command(f.Bin, "build", "-t", "hello:1.0", filepath.Join("..", "..", "..", "examples", "hello"))
	build.Env = append(os.Environ(), "FLOTILLA_STORE="+store)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("flotilla build examples/hello: %v\n%s", err, out)
	}
	names := []string{"hello-1", "hello-2", "hello-3", "hello-4", "hello-5"}
	for _, n := range names {
		f.StartAgent(n)
	}
	f.WaitOnline(60*time.Second, true, names...)

	dir := t.TempDir()
	cf := filepath.Join(dir, "Clusterfile")
	writeFile(t, cf, fmt.Sprintf(`apiVersion: flotilla.dev/v1
kind: Cluster
metadata: {name: hello}
spec:
  image: hello:1.0
  hosts:
    - names: [%s]
      roles: [master]
    - names: [%s]
      roles: [node]
  rollout: {parallelism: {master: 1, node: 4}, onFailure: halt}
`, names[0], strings.Join(names[1:], ", ")))
	ctx := context.Background()
	cli := func(wantCode int, args ...string) (string, string) {
		t.Helper()
		start := time.Now()
		out, errOut, code := f.CLI(ctx, args...)
		t.Logf("flotilla %s: exit %d in %s", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond))
		if (wantCode == 0) != (code == 0) {
			t.Fatalf("flotilla %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, wantCode, out, errOut)
		}
		return out, errOut
	}

	out, _ := cli(0, "plan", "-f", cf)
	for _, n := range names {
		if !strings.Contains(out, n) {
			t.Errorf("plan does not name %s:\n%s", n, out)
		}
	}
	if strings.Contains(out, "noop") || !strings.Contains(out, "create") {
		t.Errorf("plan of a fresh cluster: want every node created:\n%s", out)
	}
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(f.Dir, "roots", n, helloFiles[0])); err == nil {
			t.Fatalf("plan placed files on %s", n)
		}
	}

	out, _ = cli(0, "apply", "-f", cf)
	t.Logf("apply output:\n%s", out)
	if !strings.Contains(out, "5 nodes: 5 ok") {
		t.Errorf("apply summary: want 5 nodes ok:\n%s", out)
	}
	for _, n := range names {
		for _, p := range helloFiles {
			if _, err := os.Stat(filepath.Join(f.Dir, "roots", n, p)); err != nil {
				t.Errorf("after apply: %v", err)
			}
		}
	}

	out, _ = cli(0, "apply", "-f", cf, "-o", "json")
	var res protocol.ApplyResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("apply -o json: %v\n%s", err, out)
	}
	if len(res.Nodes) != len(names) {
		t.Errorf("re-apply reports %d nodes, want %d", len(res.Nodes), len(names))
	}
	for _, o := range res.Nodes {
		if o.Status != protocol.NodeNoop || o.Ran != 0 {
			t.Errorf("re-apply: node %s status %s ran %d, want noop with nothing run", o.Node, o.Status, o.Ran)
		}
	}

	out, _ = cli(0, "status", "-o", "json")
	var st []protocol.ClusterStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if len(st) != 1 || st[0].Cluster != "hello" || len(st[0].Nodes) != len(names) {
		t.Fatalf("status: want cluster hello with 5 nodes, got %s", out)
	}
	for _, n := range st[0].Nodes {
		if n.Drift || n.Applied != st[0].ImageDigest || !n.Online {
			t.Errorf("status of %s: drift %t, applied %q (desired %q), online %t", n.Node, n.Drift, n.Applied, st[0].ImageDigest, n.Online)
		}
	}
	out, _ = cli(0, "status", "hello")
	if !strings.Contains(out, "cluster hello: image hello:1.0") {
		t.Errorf("status table header:\n%s", out)
	}

	bad := filepath.Join(dir, "Clusterfile.bad")
	writeFile(t, bad, fmt.Sprintf(`apiVersion: flotilla.dev/v1
kind: Cluster
metadata: {name: hello}
spec:
  image: hello:1.0
  hosts:
    - names: [%s]
      roles: [mastr]
`, names[0]))
	_, errOut := cli(1, "apply", "-f", bad)
	if !strings.Contains(errOut, "spec.hosts[0].roles[0]") || !strings.Contains(errOut, "mastr") {
		t.Errorf("apply of an unknown role: the error should name spec.hosts[0].roles[0] and the role:\n%s", errOut)
	}

	cli(0, "delete", "-f", cf, "--yes")
	for _, n := range names {
		for _, p := range helloFiles[:2] { // what the layer and the file placed; hello.txt is the run step's own
			if _, err := os.Stat(filepath.Join(f.Dir, "roots", n, p)); err == nil {
				t.Errorf("after delete: %s still has %s", n, p)
			}
		}
	}
	out, _ = cli(0, "status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st) != 0 {
		t.Errorf("status after delete: want no clusters, got %s (%v)", out, err)
	}

	// A run step that fails: exit 1, the summary names the step, its exit code and its
	// last output lines, and onFailure halt leaves the next node not started.
	badDir := filepath.Join(dir, "failing")
	if err := os.MkdirAll(badDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(badDir, "Kubefile"), "FROM scratch\nCOPY --chmod=0755 fail.sh /usr/local/bin/fail\nON all RUN \"${FLOTILLA_ROOT:-}/usr/local/bin/fail\"\n")
	writeFile(t, filepath.Join(badDir, "fail.sh"), "#!/bin/sh\necho checking the disk\necho the disk is full >&2\nexit 3\n")
	build = exec.Command(f.Bin, "build", "-t", "failing:1.0", badDir)
	build.Env = append(os.Environ(), "FLOTILLA_STORE="+store)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("flotilla build %s: %v\n%s", badDir, err, out)
	}
	failing := filepath.Join(dir, "Clusterfile.failing")
	writeFile(t, failing, fmt.Sprintf(`apiVersion: flotilla.dev/v1
kind: Cluster
metadata: {name: failing}
spec:
  image: failing:1.0
  hosts:
    - names: [%s]
      roles: [master]
    - names: [%s]
      roles: [node]
  rollout: {onFailure: halt}
`, names[0], names[1]))
	out, errOut = cli(1, "apply", "-f", failing)
	t.Logf("failing apply output:\n%s%s", out, errOut)
	for _, w := range []string{
		names[0] + " | checking the disk", // the failing step's output, shown live
		"2 nodes: 1 failed, 1 not-started",
		names[0] + ` failed at step "run: \"${FLOTILLA_ROOT:-}/usr/local/bin/fail\"" with exit code 3`,
		"  | the disk is full",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("failing apply: stdout lacks %q", w)
		}
	}
	if want := "2 of 2 nodes of cluster failing did not finish: " + names[0] + " (failed), " + names[1] + " (not-started)"; !strings.Contains(errOut, want) {
		t.Errorf("failing apply: stderr lacks %q:\n%s", want, errOut)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
