package infra

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
)

func TestBackoffDelayBounds(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Attempts: 8}
	tests := []struct {
		attempt int
		ceil    time.Duration // d: waits lie in [d/2, d]
	}{
		{0, 100 * time.Millisecond}, {1, 200 * time.Millisecond}, {2, 400 * time.Millisecond},
		{3, 800 * time.Millisecond}, {4, time.Second}, {10, time.Second}, {60, time.Second},
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, tt := range tests {
		lo, hi := tt.ceil, time.Duration(0)
		for range 2000 {
			d := b.Delay(tt.attempt, r.Float64)
			if d < tt.ceil/2 || d > tt.ceil {
				t.Fatalf("attempt %d: delay %s outside [%s, %s]", tt.attempt, d, tt.ceil/2, tt.ceil)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		// Jitter spreads the waits over most of the window.
		if spread := hi - lo; spread < tt.ceil/2*8/10 {
			t.Errorf("attempt %d: waits spread over %s only (window %s)", tt.attempt, spread, tt.ceil/2)
		}
	}
	// The extremes of the random source hit the bounds exactly.
	if d := b.Delay(2, func() float64 { return 0 }); d != 200*time.Millisecond {
		t.Errorf("r=0: %s, want 200ms", d)
	}
	if d := b.Delay(2, func() float64 { return 1 }); d != 400*time.Millisecond {
		t.Errorf("r=1: %s, want 400ms", d)
	}
}

func TestCallerRetriesWithBackoffThenGivesUp(t *testing.T) {
	c := newCaller(1, Backoff{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond, Attempts: 3}, time.Second)
	var waits []time.Duration
	c.onRetry = func(_ string, _ int, w time.Duration, _ error) { waits = append(waits, w) }
	calls := 0
	start := time.Now()
	err := c.do(context.Background(), "op", func(context.Context) error { calls++; return context.DeadlineExceeded })
	if err == nil || !strings.Contains(err.Error(), "gave up after 3 attempts") || calls != 3 {
		t.Fatalf("err=%v calls=%d", err, calls)
	}
	if len(waits) != 2 || waits[0] < 5*time.Millisecond || waits[0] > 10*time.Millisecond || waits[1] < 10*time.Millisecond || waits[1] > 20*time.Millisecond {
		t.Fatalf("waits %v", waits)
	}
	if el := time.Since(start); el < waits[0]+waits[1] {
		t.Fatalf("retried after %s, before the back-off (%v)", el, waits)
	}
	calls = 0
	err = c.do(context.Background(), "op", func(context.Context) error { calls++; return Permanent(context.Canceled) })
	if err == nil || calls != 1 || !IsPermanent(err) {
		t.Fatalf("permanent error retried: calls=%d err=%v", calls, err)
	}
	// Every call runs under the call timeout.
	c.timeout = 20 * time.Millisecond
	c.backoff.Attempts = 1
	err = c.do(context.Background(), "slow", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	if err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("slow call: %v", err)
	}
	// A cancelled apply stops the back-off at once.
	c.backoff = Backoff{Initial: time.Hour, Max: time.Hour, Attempts: 3}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start = time.Now()
	if err := c.do(ctx, "op", func(context.Context) error { return context.DeadlineExceeded }); err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("cancelled back-off: %v after %s", err, time.Since(start))
	}
}

func TestProvideCreatesJoinsAndRevokesTokens(t *testing.T) {
	k := startJetStream(t)
	p := newFakeProvider()
	ctrl := newFakeController(p)
	d := newDriver(t, k, ctrl, fastOptions(p))
	c := cluster(t, "{master: {count: 3}, node: {count: 2, cpus: 1, memory: 512Mi}}")
	var lines []string
	if err := d.Provide(context.Background(), c, func(l string) { lines = append(lines, l) }); err != nil {
		t.Fatal(err)
	}
	want := []string{"demo-master-1", "demo-master-2", "demo-master-3", "demo-node-1", "demo-node-2"}
	if got := p.names(); !slices.Equal(got, want) {
		t.Fatalf("machines %v, want %v", got, want)
	}
	for _, n := range want {
		if p.creations[n] != 1 {
			t.Errorf("%s made %d times", n, p.creations[n])
		}
		ud := string(p.machines[n].userData)
		if !strings.Contains(ud, "--name "+n) || !strings.Contains(ud, "bootstrap.sh") || !strings.Contains(ud, "--ca-hash sha256:ab") {
			t.Errorf("%s user data: %s", n, ud)
		}
	}
	if ctrl.tokenCount() != 0 {
		t.Errorf("%d join tokens left after every machine joined", ctrl.tokenCount())
	}
	recs, _ := d.Machines(context.Background(), "demo")
	for _, r := range recs {
		if r.State != StateJoined || r.Machine.ID == "" || len(r.Tokens) != 0 {
			t.Errorf("record %+v", r)
		}
		if r.Name == "demo-node-1" && (r.CPUs != 1 || r.Memory != 512<<20) {
			t.Errorf("node limits not recorded: %+v", r)
		}
	}
	if n := ctrl.nodes["demo-node-2"]; n.Labels[ClusterTag] != "demo" || n.Labels[RoleTag] != "node" {
		t.Errorf("node labels from the token: %v", n.Labels)
	}
	if !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "5 machine(s) of demo created and joined") }) {
		t.Errorf("progress: %q", lines)
	}
	// Again: nothing to do, no provider create.
	before := p.calls["create"]
	if err := d.Provide(context.Background(), c, nil); err != nil {
		t.Fatal(err)
	}
	if p.calls["create"] != before {
		t.Errorf("a second Provide called Create %d times", p.calls["create"]-before)
	}
}

func TestProvideRetriesTransientErrors(t *testing.T) {
	k := startJetStream(t)
	p := newFakeProvider()
	p.failNext["demo-master-1"] = 2
	d := newDriver(t, k, newFakeController(p), fastOptions(p))
	if err := d.Provide(context.Background(), cluster(t, "{master: {count: 1}}"), nil); err != nil {
		t.Fatal(err)
	}
	if p.calls["create"] != 3 || p.creations["demo-master-1"] != 1 {
		t.Fatalf("create calls %d, machines made %d", p.calls["create"], p.creations["demo-master-1"])
	}
	// More failures than attempts: the apply fails and says how to resume.
	p.failNext["demo-node-1"] = 10
	err := d.Provide(context.Background(), cluster(t, "{master: {count: 1}, node: {count: 1}}"), nil)
	if err == nil || !strings.Contains(err.Error(), "gave up after 4 attempts") || !strings.Contains(err.Error(), "apply again") {
		t.Fatalf("err = %v", err)
	}
	// A permanent error is not retried.
	p.permanent["demo-node-2"] = true
	before := p.calls["create"]
	p.failNext["demo-node-1"] = 0
	err = d.Provide(context.Background(), cluster(t, "{node: {count: 2}}"), nil)
	if err == nil || !strings.Contains(err.Error(), "quota exceeded") {
		t.Fatalf("err = %v", err)
	}
	if n := p.calls["create"] - before; n != 2 { // node-1 once, node-2 once
		t.Errorf("%d create calls, want 2 (no retry of a permanent error)", n)
	}
}

func TestProvideBoundsConcurrentProviderCalls(t *testing.T) {
	k := startJetStream(t)
	p := newFakeProvider()
	p.delay = 30 * time.Millisecond
	o := fastOptions(p)
	o.MaxConcurrent = 3
	d := newDriver(t, k, newFakeController(p), o)
	if err := d.Provide(context.Background(), cluster(t, "{node: {count: 10}}"), nil); err != nil {
		t.Fatal(err)
	}
	if p.maxFlight != 3 {
		t.Fatalf("at most %d provider calls at once, want exactly the bound 3", p.maxFlight)
	}
	if err := d.Release(context.Background(), "demo", nil, nil); err != nil {
		t.Fatal(err)
	}
	if p.maxFlight != 3 || len(p.names()) != 0 {
		t.Fatalf("release: max in flight %d, left %v", p.maxFlight, p.names())
	}
}

// The controller is killed after the machines were made and before they
// joined: the next controller (same KV) finishes the apply with the same
// machines, makes none twice and leaves no token behind.
func TestResumeAfterKillBetweenCreatedAndJoined(t *testing.T) {
	k := startJetStream(t)
	p := newFakeProvider()
	ctrl := newFakeController(p)
	ctrl.setJoining(false) // the agents have not come up yet
	o := fastOptions(p)
	o.JoinTimeout = 100 * time.Millisecond
	c := cluster(t, "{master: {count: 3}, node: {count: 3}}")
	d := newDriver(t, k, ctrl, o)
	err := d.Provide(context.Background(), c, nil)
	if err == nil || !strings.Contains(err.Error(), "not online within") {
		t.Fatalf("err = %v", err)
	}
	recs, _ := d.Machines(context.Background(), "demo")
	if len(recs) != 6 || recs[0].State != StateCreated || len(recs[0].Tokens) != 1 {
		t.Fatalf("records after the kill: %+v", recs)
	}

	k.restart() // the controller comes back: same KV, a new driver
	ctrl.setJoining(true)
	d = newDriver(t, k, ctrl, fastOptions(p))
	if err := d.Provide(context.Background(), c, nil); err != nil {
		t.Fatal(err)
	}
	if len(p.names()) != 6 {
		t.Fatalf("machines %v", p.names())
	}
	for n, c := range p.creations {
		if c != 1 {
			t.Errorf("%s made %d times", n, c)
		}
	}
	if ctrl.tokenCount() != 0 {
		t.Errorf("%d tokens left", ctrl.tokenCount())
	}
	// And delete leaves nothing: machines, nodes, tokens, records.
	if err := d.Release(context.Background(), "demo", nil, nil); err != nil {
		t.Fatal(err)
	}
	recs, _ = d.Machines(context.Background(), "")
	if len(p.names()) != 0 || len(ctrl.nodes) != 0 || ctrl.tokenCount() != 0 || len(recs) != 0 {
		t.Fatalf("left: machines %v nodes %v tokens %d records %v", p.names(), ctrl.nodes, ctrl.tokenCount(), recs)
	}
}

// The provider made the machine but the answer was lost (and the controller
// died before it could retry): the record says "creating", and the next apply
// finds the machine instead of making a second one.
func TestResumeAfterLostCreateAnswer(t *testing.T) {
	k := startJetStream(t)
	p := newFakeProvider()
	p.lostReply["demo-master-1"] = 1
	ctrl := newFakeController(p)
	o := fastOptions(p)
	o.Backoff.Attempts = 1
	d := newDriver(t, k, ctrl, o)
	c := cluster(t, "{master: {count: 1}}")
	if err := d.Provide(context.Background(), c, nil); err == nil {
		t.Fatal("no error from a lost answer with one attempt")
	}
	recs, _ := d.Machines(context.Background(), "demo")
	if len(recs) != 1 || recs[0].State != StateCreating {
		t.Fatalf("records: %+v", recs)
	}
	k.restart()
	d = newDriver(t, k, ctrl, fastOptions(p))
	if err := d.Provide(context.Background(), c, nil); err != nil {
		t.Fatal(err)
	}
	if p.creations["demo-master-1"] != 1 || len(p.names()) != 1 {
		t.Fatalf("made %d times; machines %v", p.creations["demo-master-1"], p.names())
	}
	if ctrl.tokenCount() != 0 {
		t.Errorf("%d tokens left", ctrl.tokenCount())
	}
}

// A machine with the cluster's tag and no record (its record was lost) is
// adopted: used if wanted, destroyed by Release if not. Nothing leaks.
func TestAdoptsUntrackedMachines(t *testing.T) {
	k := startJetStream(t)
	p := newFakeProvider()
	ctrl := newFakeController(p)
	d := newDriver(t, k, ctrl, fastOptions(p))
	p.machines["demo-node-1"] = fakeMachine{m: Machine{Name: "demo-node-1", Cluster: "demo", Role: "node", ID: "i-x"}}
	p.machines["demo-node-7"] = fakeMachine{m: Machine{Name: "demo-node-7", Cluster: "demo", Role: "node", ID: "i-y"}}
	p.machines["other-node-1"] = fakeMachine{m: Machine{Name: "other-node-1", Cluster: "other", ID: "i-z"}}
	ctrl.nodes["demo-node-1"] = protocol.NodeInfo{Name: "demo-node-1", Online: true, Labels: map[string]string{ClusterTag: "demo"}}
	c := cluster(t, "{node: {count: 2}}")
	if err := d.Provide(context.Background(), c, nil); err != nil {
		t.Fatal(err)
	}
	if p.creations["demo-node-1"] != 0 || p.creations["demo-node-2"] != 1 {
		t.Fatalf("creations %v", p.creations)
	}
	keep := func(n string) bool { return n == "demo-node-1" || n == "demo-node-2" }
	if err := d.Release(context.Background(), "demo", keep, nil); err != nil {
		t.Fatal(err)
	}
	if got := p.names(); !slices.Equal(got, []string{"demo-node-1", "demo-node-2", "other-node-1"}) {
		t.Fatalf("machines after release: %v (the surplus untracked one must go, another cluster's must stay)", got)
	}
}

func TestReleaseScaleDown(t *testing.T) {
	k := startJetStream(t)
	p := newFakeProvider()
	ctrl := newFakeController(p)
	d := newDriver(t, k, ctrl, fastOptions(p))
	if err := d.Provide(context.Background(), cluster(t, "{master: {count: 1}, node: {count: 3}}"), nil); err != nil {
		t.Fatal(err)
	}
	c := cluster(t, "{master: {count: 1}, node: {count: 1}}")
	if err := d.Provide(context.Background(), c, nil); err != nil {
		t.Fatal(err)
	}
	if len(p.names()) != 4 {
		t.Fatalf("Provide destroyed machines before the undo: %v", p.names())
	}
	want := map[string]bool{}
	for _, m := range c.Machines() {
		want[m.Name] = true
	}
	var lines []string
	if err := d.Release(context.Background(), "demo", func(n string) bool { return want[n] }, func(l string) { lines = append(lines, l) }); err != nil {
		t.Fatal(err)
	}
	if got := p.names(); !slices.Equal(got, []string{"demo-master-1", "demo-node-1"}) {
		t.Fatalf("machines %v", got)
	}
	slices.Sort(ctrl.removed)
	if !slices.Equal(ctrl.removed, []string{"demo-node-2", "demo-node-3"}) {
		t.Fatalf("nodes removed from the inventory: %v", ctrl.removed)
	}
	if len(lines) != 2 || !strings.Contains(lines[0], "destroyed") {
		t.Errorf("progress %q", lines)
	}
	// Count up again: the names come back as new machines.
	if err := d.Provide(context.Background(), cluster(t, "{master: {count: 1}, node: {count: 2}}"), nil); err != nil {
		t.Fatal(err)
	}
	if p.creations["demo-node-2"] != 2 || len(p.names()) != 3 {
		t.Fatalf("creations %v machines %v", p.creations, p.names())
	}
}

// A node that joined under a machine's name without that machine's token is
// not taken for the machine, and the error says how to clear it.
func TestNodeWithAMachineNameIsNotTaken(t *testing.T) {
	k := startJetStream(t)
	p := newFakeProvider()
	ctrl := newFakeController(p)
	ctrl.nodes["demo-master-1"] = protocol.NodeInfo{Name: "demo-master-1", Online: true, Labels: map[string]string{"rack": "r1"}}
	o := fastOptions(p)
	o.JoinTimeout = 100 * time.Millisecond
	d := newDriver(t, k, ctrl, o)
	err := d.Provide(context.Background(), cluster(t, "{master: {count: 1}}"), nil)
	if err == nil || !strings.Contains(err.Error(), "did not join with its machine's token") || !strings.Contains(err.Error(), "flotilla nodes remove demo-master-1") {
		t.Fatalf("err = %v", err)
	}
	recs, _ := d.Machines(context.Background(), "demo")
	if len(recs) != 1 || recs[0].State == StateJoined {
		t.Fatalf("the impostor was taken for the machine: %+v", recs)
	}
	// Release must not remove the impostor's node: it is not the cluster's.
	if err := d.Release(context.Background(), "demo", nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := ctrl.nodes["demo-master-1"]; !ok || len(ctrl.removed) != 0 {
		t.Fatalf("release removed a node that did not join for the cluster: %v", ctrl.removed)
	}
}

func TestProvideUnknownProviderNamesTheField(t *testing.T) {
	k := startJetStream(t)
	d := newDriver(t, k, newFakeController(newFakeProvider()), Options{})
	err := d.Provide(context.Background(), cluster(t, "{master: {count: 1}}"), nil)
	if err == nil || !strings.Contains(err.Error(), `Clusterfile:7: spec.infra.provider: this controller has no provider "fake" (it has: none)`) {
		t.Fatalf("err = %v", err)
	}
}

func TestUserDataQuotesValues(t *testing.T) {
	ud := string(UserData(protocol.TokenInfo{Token: "ab.c'd; rm -rf /", CAHash: "sha256:00", JoinURL: "https://h:9443"}, "n-1"))
	if !strings.Contains(ud, `--token 'ab.c'"'"'d; rm -rf /'`) {
		t.Fatalf("user data does not quote the token:\n%s", ud)
	}
}
