package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/e2e/e2etest"
	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/infra"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/flotilla-dev/flotilla/sandbox"
	"github.com/vishvananda/netlink"
)

// Machines from a count on the sandbox provider (fleet flti, 10.77.12.0/26: the
// bridge only at first; the controller makes every node).
const (
	infraFleet   = "flti"
	infraSubnet  = "10.77.12.0/26"
	infraCluster = "flh"
)

func infraClusterfile(t *testing.T, dir string, masters, nodes int) string {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1
kind: Cluster
metadata: {name: %s}
spec:
  image: hello:1.0
  env: {GREETING: hello from a counted machine}
  infra:
    provider: sandbox
    roles:
      master: {count: %d}
      node: {count: %d, cpus: 1, memory: 512Mi}
  rollout: {parallelism: 4}
`, infraCluster, masters, nodes)
	path := filepath.Join(dir, fmt.Sprintf("Clusterfile-%d-%d", masters, nodes))
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func machineNames(masters, nodes int) []string {
	var out []string
	for i := 1; i <= masters; i++ {
		out = append(out, fmt.Sprintf("%s-master-%d", infraCluster, i))
	}
	for i := 1; i <= nodes; i++ {
		out = append(out, fmt.Sprintf("%s-node-%d", infraCluster, i))
	}
	sort.Strings(out)
	return out
}

// taggedNodes reads fleet.json as the controller left it: the cluster's nodes.
func taggedNodes(t *testing.T) []string {
	t.Helper()
	f, err := sandbox.Open(infraFleet)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range f.Nodes() {
		if n.Tags[infra.ClusterTag] == infraCluster {
			out = append(out, n.Name)
		}
	}
	sort.Strings(out)
	return out
}

var joinedRE = regexp.MustCompile(`(\d+) machine\(s\) of \S+ created and joined in ([0-9.]+m?s)`)

func TestInfraSandbox(t *testing.T) {
	f := fleettest.New(t, sandbox.Options{Name: infraFleet, Subnet: infraSubnet, N: 0})
	e2etest.UseStore(t)
	e2etest.BuildImage(t, "../examples/hello", "hello:1.0")
	c := e2etest.StartControllerArgs(t, f, "--infra-sandbox", infraFleet, "--infra-join-timeout", "3m")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	apply := func(t *testing.T, masters, nodes int) (*protocol.ApplyResult, string) {
		t.Helper()
		res, progress, err := c.Apply(ctx, infraClusterfile(t, dir, masters, nodes))
		if err != nil {
			t.Fatalf("apply %d masters, %d nodes: %v\n%s", masters, nodes, err, progress)
		}
		want := machineNames(masters, nodes)
		if got := taggedNodes(t); !slices.Equal(got, want) {
			t.Fatalf("sandbox nodes of the cluster: %v, want %v", got, want)
		}
		for _, n := range want {
			b, err := os.ReadFile(filepath.Join(f.Root(n), "var/lib/flotilla-hello/hello.txt"))
			if err != nil || !strings.Contains(string(b), "hello from a counted machine from "+n) {
				t.Errorf("%s: hello.txt %q %v", n, b, err)
			}
		}
		return res, progress
	}
	gone := func(t *testing.T, names ...string) {
		t.Helper()
		online, err := c.Online(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if _, ok := online[n]; ok {
				t.Errorf("%s is still in the inventory", n)
			}
			if _, err := os.Stat(f.Root(n)); err == nil {
				t.Errorf("%s: its root %s is still there", n, f.Root(n))
			}
			if m, _ := filepath.Glob(filepath.Join(sandbox.NetnsRoot, infraFleet, "*", n)); len(m) > 0 {
				t.Errorf("%s: netns file left: %v", n, m)
			}
			if m, _ := filepath.Glob("/sys/fs/cgroup/*/" + infraFleet + "-" + n); len(m) > 0 {
				t.Errorf("%s: cgroups left: %v", n, m)
			}
		}
	}
	noTokens := func(t *testing.T) {
		t.Helper()
		out, _, err := c.CLI(ctx, "token", "list", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var toks []protocol.TokenInfo
		if err := json.Unmarshal([]byte(out), &toks); err != nil {
			t.Fatalf("token list: %v: %q", err, out)
		}
		if len(toks) != 0 {
			t.Errorf("%d join tokens left: %+v", len(toks), toks)
		}
	}

	t.Run("SixMachinesFromCounts", func(t *testing.T) {
		start := time.Now()
		res, progress := apply(t, 3, 3)
		total := time.Since(start)
		m := joinedRE.FindStringSubmatch(progress)
		if m == nil || m[1] != "6" {
			t.Fatalf("no '6 machine(s) … created and joined' line:\n%s", progress)
		}
		for _, o := range res.Nodes {
			if o.Status != protocol.NodeOK {
				t.Errorf("%s: %s %s", o.Node, o.Status, o.Error)
			}
		}
		if len(res.Nodes) != 6 {
			t.Errorf("%d nodes in the result, want 6", len(res.Nodes))
		}
		t.Logf("flotilla apply: 6 machines created and joined in %s (driver's figure), image applied, whole apply %s",
			m[2], total.Round(100*time.Millisecond))
		for _, l := range strings.Split(progress, "\n") {
			if strings.Contains(l, "infra: ") {
				t.Log(l)
			}
		}
		g, err := sandbox.Open(infraFleet) // the controller added the nodes: read fleet.json again
		if err != nil {
			t.Fatal(err)
		}
		cpus, mem, err := g.Limits(infraCluster + "-node-1")
		if err != nil || cpus != 1 || mem != 512<<20 {
			t.Errorf("node-1 limits: cpus %v memory %d (%v), want 1 and 512Mi", cpus, mem, err)
		}
		if cpus, mem, _ := g.Limits(infraCluster + "-master-1"); cpus != 0 || mem != 0 {
			t.Errorf("master-1 has limits it did not ask for: %v %d", cpus, mem)
		}
		noTokens(t)
	})

	t.Run("CountDownUndoesThenDestroys", func(t *testing.T) {
		res, progress := apply(t, 3, 1)
		for _, n := range []string{infraCluster + "-node-2", infraCluster + "-node-3"} {
			o := e2etest.Outcome(res, n)
			if o.Action != "remove" || o.Status != protocol.NodeOK {
				t.Errorf("%s: %+v, want its removal ok before the machine goes", n, o)
			}
			if !strings.Contains(progress, "machine "+n+" destroyed") {
				t.Errorf("no destroy line for %s:\n%s", n, progress)
			}
		}
		gone(t, infraCluster+"-node-2", infraCluster+"-node-3")
		links, _ := netlink.LinkList()
		var veths []string
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, infraFleet+"v") {
				veths = append(veths, l.Attrs().Name)
			}
		}
		if len(veths) != 4 {
			t.Errorf("veths %v, want 4 (one per machine left)", veths)
		}
	})

	t.Run("CountUp", func(t *testing.T) {
		res, _ := apply(t, 3, 2)
		if o := e2etest.Outcome(res, infraCluster+"-node-2"); o.Status != protocol.NodeOK || o.Action == "noop" {
			t.Errorf("node-2: %+v", o)
		}
		noTokens(t)
	})

	t.Run("KillControllerBetweenCreatedAndJoined", func(t *testing.T) {
		path := infraClusterfile(t, dir, 3, 4)
		errc := make(chan error, 1)
		go func() {
			_, _, err := c.Apply(ctx, path)
			errc <- err
		}()
		// Wait until a new machine booted (created), then crash the controller
		// before its agent can join.
		target := infraCluster + "-node-4"
		if err := poll.Until(ctx, 2*time.Minute, 50*time.Millisecond, func() bool {
			g, err := sandbox.Open(infraFleet)
			return err == nil && slices.ContainsFunc(g.Nodes(), func(n sandbox.Node) bool { return n.Name == target }) && g.Running(target)
		}); err != nil {
			t.Fatalf("%s never booted: %v", target, err)
		}
		if online, err := c.Online(ctx); err != nil || online[target] {
			t.Fatalf("%s joined before the kill (%v): the test did not hit the window", target, err)
		}
		c.Kill()
		if err := <-errc; err == nil {
			t.Fatal("the apply succeeded although the controller was killed")
		}
		c.Start()
		apply(t, 3, 4) // no duplicate, nothing leaked: the tagged nodes are exactly the wanted ones
		nodes, err := c.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, n := range nodes {
			names = append(names, n.Name)
		}
		sort.Strings(names)
		if !slices.Equal(names, machineNames(3, 4)) {
			t.Errorf("inventory %v, want %v", names, machineNames(3, 4))
		}
		// The agents the kill cut off come back by themselves: they reconnect with
		// back-off, and the restarted controller counts a node online from its first
		// heartbeat (the apply above may finish before every one has sent it).
		var online map[string]bool
		allOnline := func() bool {
			var err error
			if online, err = c.Online(ctx); err != nil {
				return false
			}
			for _, n := range machineNames(3, 4) {
				if !online[n] {
					return false
				}
			}
			return true
		}
		if err := poll.Until(ctx, time.Minute, 250*time.Millisecond, allOnline); err != nil {
			t.Errorf("machines online after the restart: %v, want all of %v (%v)", online, machineNames(3, 4), err)
		}
		noTokens(t)
	})

	t.Run("DeleteLeavesNothing", func(t *testing.T) {
		out, _, err := c.CLI(ctx, "delete", "-f", infraClusterfile(t, dir, 3, 4), "--yes")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if got := taggedNodes(t); len(got) != 0 {
			t.Errorf("machines left: %v", got)
		}
		gone(t, machineNames(3, 4)...)
		if g, _ := sandbox.Open(infraFleet); g != nil && len(g.Nodes()) != 0 {
			t.Errorf("fleet.json still lists %v", g.Nodes())
		}
		links, _ := netlink.LinkList()
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, infraFleet+"v") {
				t.Errorf("link %s left", l.Attrs().Name)
			}
		}
		if nodes, _ := c.Nodes(ctx); len(nodes) != 0 {
			t.Errorf("inventory not empty: %v", nodes)
		}
		noTokens(t)
	})
}
