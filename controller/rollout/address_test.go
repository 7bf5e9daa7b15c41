package rollout_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/protocol"
)

// TestHostileAddressClaim: a worker joins from its own address and reports a
// master's address (and one nobody has) as its own, to be selected by the
// Clusterfile entry that names the masters by IP and so receive their env.
// Against a real controller: the master entry still selects the master alone
// (the worker's claim neither selects it nor breaks the plan), the unverified
// address selects nothing and `plan` says why and what to do, and an admin pin
// makes it select the worker. The address of the worker's NATS connection is
// verified too.
func TestHostileAddressClaim(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FLOTILLA_STORE", filepath.Join(dir, "store"))
	f := controllertest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	buildHello(t, f, filepath.Join(dir, "store"))

	token, _ := f.NewToken("1h")
	master, worker := netip.MustParseAddr("127.0.0.11"), netip.MustParseAddr("127.0.0.12")
	facts := func(ips ...string) protocol.Facts {
		return protocol.Facts{Hostname: "h", IPs: ips, Arch: "amd64", OS: "linux", AgentVersion: "test"}
	}
	if _, err := f.JoinFrom(ctx, master, token, "m1", facts("127.0.0.11")); err != nil {
		t.Fatal(err)
	}
	wcr, err := f.JoinFrom(ctx, worker, token, "w1", facts("127.0.0.12", "127.0.0.11", "10.99.0.5"))
	if err != nil {
		t.Fatal(err)
	}
	// Its NATS connection comes from a third address: verified as well.
	nc, err := f.ConnectNode(wcr, controllertest.DialFrom(netip.MustParseAddr("127.0.0.13")))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	c, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	plan := func(hosts string) (*protocol.ClusterPlan, error) {
		cf := "apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: addr}\nspec:\n  image: hello:addr\n  hosts:\n" + hosts
		return c.Plan(ctx, protocol.ApplyRequest{Clusterfile: []byte(cf), Path: "Clusterfile"})
	}
	nodesOf := func(p *protocol.ClusterPlan) []string {
		var out []string
		for _, ph := range p.Phases {
			for _, n := range ph.Nodes {
				out = append(out, n.Node)
			}
		}
		slices.Sort(out)
		return out
	}

	p, err := plan("    - {names: [127.0.0.11], roles: [master], env: {MASTER_SECRET: s3cret}}\n")
	if err != nil {
		t.Fatalf("plan by the master's address: %v", err)
	}
	if got := nodesOf(p); !slices.Equal(got, []string{"m1"}) {
		t.Errorf("the master's address selects %v; want [m1] (w1 only claims it)", got)
	}
	_, err = plan("    - {names: [10.99.0.5], roles: [master]}\n")
	if err == nil || !strings.Contains(err.Error(), "agent w1 reports this address but the controller has not verified it") ||
		!strings.Contains(err.Error(), "flotilla nodes address w1 --pin") {
		t.Fatalf("plan by an address only claimed = %v; want it refused, naming w1 and the pin command", err)
	}

	out, errOut, code := f.CLI(ctx, "nodes", "address", "w1", "--pin", "10.99.0.5")
	if code != 0 || !strings.Contains(out, "10.99.0.5 (admin)") {
		t.Fatalf("nodes address --pin: exit %d\n%s%s", code, out, errOut)
	}
	p, err = plan("    - {names: [10.99.0.5], roles: [master]}\n")
	if err != nil || !slices.Equal(nodesOf(p), []string{"w1"}) {
		t.Fatalf("plan by the pinned address = %v, %v; want w1", p, err)
	}

	out, _, code = f.CLI(ctx, "nodes", "-o", "json")
	var nodes []protocol.NodeInfo
	if code != 0 || json.Unmarshal([]byte(out), &nodes) != nil {
		t.Fatalf("nodes -o json: exit %d\n%s", code, out)
	}
	for _, n := range nodes {
		if n.Name != "w1" {
			continue
		}
		want := []protocol.VerifiedIP{{IP: "10.99.0.5", By: protocol.VerifiedByAdmin}, {IP: "127.0.0.12", By: protocol.VerifiedByJoin},
			{IP: "127.0.0.13", By: protocol.VerifiedByConnection}}
		if !slices.Equal(n.VerifiedIPs, want) {
			t.Errorf("w1 verified addresses = %+v; want %+v", n.VerifiedIPs, want)
		}
	}
}

// buildHello builds examples/hello as hello:addr into store with the CLI.
func buildHello(t *testing.T, f *controllertest.Fleet, store string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.Bin, "build", "-t", "hello:addr", filepath.Join("..", "..", "examples", "hello"))
	cmd.Env = append(os.Environ(), "FLOTILLA_STORE="+store)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("flotilla build: %v\n%s", err, out)
	}
}
