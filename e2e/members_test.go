package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/e2e/e2etest"
	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/flotilla-dev/flotilla/sandbox"
)

// The membership scenarios of issue 24 on examples/etcd (fleet fltem, 10.77.14.16/28:
// host .17, node1..node6 = .18-.23).
const (
	memberFleet  = "fltem"
	memberSubnet = "10.77.14.16/28"
)

// TestEtcdMembership grows and shrinks examples/etcd's masters one apply at a time
// (3 → 4 → 5 → 4 → 3) with data written before every change read after it; refuses
// 3 → 1; replaces a master whose machine was killed; and kills the controller while
// a master joins: after the restart the member list has each member once.
func TestEtcdMembership(t *testing.T) {
	fleettest.Require(t)
	e2etest.UseStore(t)
	e2etest.BuildImage(t, "../examples/etcd", "e2e/etcd:3.4")
	env := e2etest.Start(t, sandbox.Options{Name: memberFleet, Subnet: memberSubnet, N: 6})
	f, c := env.Fleet, env.Controller
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	dir := t.TempDir()
	clusterfile := func(nodes ...string) string {
		p := filepath.Join(dir, "etcd-"+strings.Join(nodes, "-")+".yaml")
		doc := fmt.Sprintf("apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: e2e-members}\nspec:\n  image: e2e/etcd:3.4\n"+
			"  env: {ETCD_HEALTH_WAIT: \"30\"}\n  rollout: {stepTimeout: 1m}\n  hosts:\n    - names: [%s]\n      roles: [master]\n", strings.Join(nodes, ", "))
		if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ip := func(node string) string {
		a, err := f.IP(node)
		if err != nil {
			t.Fatal(err)
		}
		return a.String()
	}
	etcd := func(node string, args ...string) (string, error) {
		argv := append([]string{etcdctl, "--dial-timeout", "2s", "--command-timeout", "5s", "--endpoints", "http://127.0.0.1:2379"}, args...)
		out, err := f.Exec(ctx, node, argv...)
		return strings.TrimSpace(string(out)), err
	}
	// members returns the peer URLs etcd lists, as node names, each with its status.
	members := func(via string) []string {
		out, err := etcd(via, "member", "list")
		if err != nil {
			t.Fatalf("member list on %s: %v %s", via, err, out)
		}
		var got []string
		for _, line := range strings.Split(out, "\n") {
			fs := strings.Split(line, ", ")
			if len(fs) < 4 {
				continue
			}
			name := fs[3]
			for _, n := range f.Nodes() {
				if fs[3] == "http://"+ip(n.Name)+":2380" {
					name = n.Name
				}
			}
			got = append(got, name+"/"+fs[1])
		}
		return got
	}
	wantMembers := func(via string, names ...string) {
		t.Helper()
		var want []string
		for _, n := range names {
			want = append(want, n+"/started")
		}
		got := members(via)
		if strings.Join(sorted(got), " ") != strings.Join(sorted(want), " ") {
			t.Fatalf("etcd members (on %s) %v, want %v", via, got, want)
		}
	}
	put := func(node, key string) {
		t.Helper()
		if out, err := etcd(node, "put", key, "v-"+key); err != nil || out != "OK" {
			t.Fatalf("put %s on %s: %v %q", key, node, err, out)
		}
	}
	get := func(node string, keys ...string) {
		t.Helper()
		for _, k := range keys {
			if out, err := etcd(node, "get", "--print-value-only", k); err != nil || out != "v-"+k {
				t.Fatalf("get %s on %s: %v %q (want v-%s)", k, node, err, out, k)
			}
		}
	}
	apply := func(what string, nodes ...string) *protocol.ApplyResult {
		t.Helper()
		start := time.Now()
		res, progress, err := c.Apply(ctx, clusterfile(nodes...))
		if err != nil || res == nil || !res.OK {
			t.Fatalf("%s: %v\n%+v\n%s", what, err, res, progress)
		}
		t.Logf("%s: apply to healthy in %s (health: %s)", what, time.Since(start).Round(time.Millisecond), oneLineOf(res.Health))
		return res
	}

	apply("3 masters", "node1", "node2", "node3")
	wantMembers("node1", "node1", "node2", "node3")
	put("node1", "k0")

	apply("a master joins (3 → 4)", "node1", "node2", "node3", "node4")
	wantMembers("node4", "node1", "node2", "node3", "node4")
	get("node4", "k0")
	put("node4", "k1")
	apply("a master joins (4 → 5)", "node1", "node2", "node3", "node4", "node5")
	wantMembers("node1", "node1", "node2", "node3", "node4", "node5")
	get("node5", "k0", "k1")
	put("node5", "k2")

	apply("a master leaves (5 → 4)", "node1", "node2", "node3", "node4")
	wantMembers("node1", "node1", "node2", "node3", "node4")
	apply("a master leaves (4 → 3)", "node1", "node2", "node3")
	wantMembers("node2", "node1", "node2", "node3")
	get("node3", "k0", "k1", "k2")
	if out, err := f.Exec(ctx, "node5", "sh", "-c", "systemctl is-active flotilla-etcd.service; ls /var/lib/flotilla-etcd 2>&1"); !strings.Contains(string(out), "inactive") || !strings.Contains(string(out), "No such file") {
		t.Errorf("node5 after it left: etcd should be stopped and its data gone (CLEANUP): %v %s", err, out)
	}

	t.Run("LosingQuorumRefused", func(t *testing.T) {
		out, stderr, err := c.CLI(ctx, "apply", "-f", clusterfile("node1"))
		if err == nil || !strings.Contains(stderr, "quorum role with 3 members (quorum 2)") || !strings.Contains(stderr, "removes 2 (node2, node3)") {
			t.Fatalf("3 → 1 was not refused with the arithmetic: %v\n%s\n%s", err, out, stderr)
		}
		_, stderr, err = c.CLI(ctx, "plan", "-f", clusterfile("node1"))
		if err == nil || !strings.Contains(stderr, "fewer than a quorum") {
			t.Fatalf("plan of 3 → 1 was not refused: %v\n%s", err, stderr)
		}
		wantMembers("node1", "node1", "node2", "node3")
	})

	t.Run("DeadMasterReplaced", func(t *testing.T) {
		if err := f.Kill("node3"); err != nil {
			t.Fatal(err)
		}
		err := poll.Until(ctx, time.Minute, 250*time.Millisecond, func() bool {
			st, err := c.Online(ctx)
			return err == nil && !st["node3"]
		})
		if err != nil {
			t.Fatalf("the controller still sees node3 online: %v", err)
		}
		put("node1", "k3") // two of three members: still a quorum
		start := time.Now()
		res, progress, err := c.Apply(ctx, clusterfile("node1", "node2", "node4"))
		if err != nil || res == nil || !res.OK {
			t.Fatalf("replacing a dead master: %v\n%+v\n%s", err, res, progress)
		}
		t.Logf("dead master replaced in %s", time.Since(start).Round(time.Millisecond))
		if o := e2etest.Outcome(res, "node3"); o.Status != protocol.NodeUnreachable || !strings.Contains(o.Error, "left the master membership") {
			t.Errorf("node3: %+v, want unreachable and removed from the membership", o)
		}
		for _, n := range []string{"node1", "node2", "node4"} {
			if o := e2etest.Outcome(res, n); o.Status != protocol.NodeOK && o.Status != protocol.NodeNoop {
				t.Errorf("%s: %+v\n%s", n, o, progress)
			}
		}
		wantMembers("node4", "node1", "node2", "node4")
		get("node4", "k0", "k1", "k2", "k3")
	})

	t.Run("ControllerKilledWhileAMasterJoins", func(t *testing.T) {
		cf := clusterfile("node1", "node2", "node4", "node5")
		run := applyAsync(ctx, c, cf)
		peer := "http://" + ip("node5") + ":2380"
		err := poll.Until(ctx, 2*time.Minute, 50*time.Millisecond, func() bool {
			out, err := etcd("node1", "member", "list")
			return err == nil && strings.Contains(out, peer)
		})
		if err != nil {
			t.Fatalf("node5 never became a member: %v", err)
		}
		c.Kill() // right after its JOIN ran: recorded or not
		<-run
		c.Start()
		res, progress, err := c.Apply(ctx, cf) // attaches to the resumed rollout, or finds it done
		if err != nil || res == nil || !res.OK {
			t.Fatalf("after the restart: %v\n%+v\n%s", err, res, progress)
		}
		got := members("node1")
		if len(got) != 4 {
			t.Fatalf("members after the restart: %v, want node1, node2, node4, node5 once each", got)
		}
		wantMembers("node5", "node1", "node2", "node4", "node5")
		get("node5", "k0", "k1", "k2", "k3")
	})
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

func oneLineOf(s string) string { return strings.Join(strings.Fields(s), " ") }
