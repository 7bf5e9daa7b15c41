package e2e_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/mirror"
	"github.com/flotilla-dev/flotilla/e2e/busyboximage"
	"github.com/flotilla-dev/flotilla/e2e/e2etest"
	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/internal/registrytest"
	"github.com/flotilla-dev/flotilla/internal/testbin"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/flotilla-dev/flotilla/sandbox"
)

// The containers scenario's fleet: 3 nodes (fleet fltec, 10.77.10.160/28: host .161,
// node1..node3 = .162-.164).
const (
	containersFleet  = "fltec"
	containersSubnet = "10.77.10.160/28"
)

// TestContainers delivers examples/containers offline: the container image (Debian's
// busybox-static, built here) is pushed to a throwaway registry, carried into the
// cluster image, and the registry is stopped before any node exists. On every node
// containerd then pulls it by its original name, by tag and by digest, from the
// agent's mirror (the digest equals the upstream one) and runs it; a re-apply does
// nothing and delete empties the mirror.
func TestContainers(t *testing.T) {
	fleettest.Require(t)
	e2etest.UseStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()

	img, err := busyboximage.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg := registrytest.Start(t, registrytest.Options{})
	ref := reg.Host + "/flotilla-examples/hello:1"
	digest, err := busyboximage.Push(ctx, img, ref)
	if err != nil {
		t.Fatal(err)
	}
	byDigest := reg.Host + "/flotilla-examples/hello@" + digest.String()
	buildContainers(t, ref)
	reg.Stop() // the nodes never see the upstream registry
	t.Logf("container image and examples/containers built in %s", time.Since(start).Round(time.Millisecond))

	boot := time.Now()
	env := e2etest.Start(t, sandbox.Options{Name: containersFleet, Subnet: containersSubnet, N: 3})
	f, c := env.Fleet, env.Controller
	nodes := []string{"node1", "node2", "node3"}
	t.Logf("fleet of 3 booted and joined in %s", time.Since(boot).Round(time.Millisecond))
	cf := filepath.Join(t.TempDir(), "Clusterfile")
	doc := "apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: e2e-containers}\nspec:\n  image: e2e/containers:1\n" +
		"  hosts:\n    - names: [node1, node2, node3]\n      roles: [node]\n  rollout: {parallelism: {node: 3}, stepTimeout: 1m}\n"
	if err := os.WriteFile(cf, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}

	apply := time.Now()
	out, progress, err := c.CLI(ctx, "apply", "-v", "-f", cf)
	if err != nil {
		t.Fatalf("apply: %v\n%s\n%s", err, out, progress)
	}
	t.Logf("examples/containers applied to 3 nodes in %s", time.Since(apply).Round(time.Millisecond))
	for _, n := range nodes {
		if !strings.Contains(out+progress, n+" | "+busyboximage.Greeting) {
			t.Errorf("the run step on %s did not print the container's greeting:\n%s\n%s", n, out, progress)
		}
	}

	run := func(node string, argv ...string) (string, error) {
		out, err := f.Exec(ctx, node, argv...)
		return strings.TrimSpace(string(out)), err
	}
	ctr := func(node string, args ...string) (string, error) {
		return run(node, append([]string{"/usr/local/bin/ctr", "--namespace", "k8s.io"}, args...)...)
	}
	for _, n := range nodes {
		// Drop what the step pulled so that both pulls below fetch through the mirror.
		if out, err := ctr(n, "images", "rm", "--sync", ref); err != nil {
			t.Fatalf("%s: ctr images rm: %v\n%s", n, err, out)
		}
		for _, r := range []string{byDigest, ref} {
			if out, err := ctr(n, "images", "pull", "--hosts-dir", "/etc/containerd/certs.d", r); err != nil {
				t.Fatalf("%s: ctr images pull %s (upstream registry stopped): %v\n%s", n, r, err, out)
			}
			out, err := ctr(n, "images", "ls", "name=="+r)
			if err != nil || !strings.Contains(out, digest.String()) {
				t.Errorf("%s: %s is not %s in containerd: %v\n%s", n, r, digest, err, out)
			}
		}
		out, err := ctr(n, "run", "--rm", ref, fmt.Sprintf("e2e-hello-%d", time.Now().UnixNano()))
		if err != nil || out != busyboximage.Greeting {
			t.Errorf("%s: ctr run %s: %v %q, want %q", n, ref, err, out, busyboximage.Greeting)
		}
	}

	res, progress, err := c.Apply(ctx, cf)
	if err != nil || res == nil || !res.OK {
		t.Fatalf("re-apply: %v\n%+v\n%s", err, res, progress)
	}
	for _, n := range nodes {
		if o := e2etest.Outcome(res, n); o.Status != protocol.NodeNoop || o.Ran != 0 {
			t.Errorf("re-apply: %s %+v, want noop", n, o)
		}
	}

	if out, errOut, err := c.CLI(ctx, "delete", "-f", cf, "--yes"); err != nil {
		t.Fatalf("delete: %v\n%s\n%s", err, out, errOut)
	}
	// The mirror answers over HTTPS with a certificate of the agent's own CA.
	url := "https://" + mirror.DefaultListen + "/v2/flotilla-examples/hello/manifests/1?ns=" + reg.Host
	ca := filepath.Join(agent.MirrorDir("/var/lib/flotilla-agent"), mirror.CAFile)
	for _, n := range nodes {
		if code, err := run(n, "curl", "-s", "--cacert", ca, "-o", "/dev/null", "-w", "%{http_code}", url); err != nil || code != "404" {
			t.Errorf("%s: the mirror answers %q (%v) after delete, want 404", n, code, err)
		}
	}
	t.Logf("TestContainers took %s", time.Since(start).Round(time.Millisecond))
}

// buildContainers builds examples/containers as e2e/containers:1 carrying ref.
func buildContainers(t *testing.T, ref string) {
	t.Helper()
	bin, err := testbin.Path()
	if err != nil {
		t.Fatalf("flotilla binary: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "build", "-q", "-t", "e2e/containers:1", "--build-arg", "APP_IMAGE="+ref, "../examples/containers").CombinedOutput()
	if err != nil {
		t.Fatalf("flotilla build examples/containers: %v\n%s", err, out)
	}
}
