package plane_test

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

// Issue 12, findings 1 and 2: a token holder or a node with its own
// credentials reports hostile facts, takes over another node's name, or
// relabels itself. Real controller, real agents, real NATS; the hostile side
// speaks the real protocol with credentials from a real join.

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts processes")
	}
}

func honestFacts() protocol.Facts {
	return protocol.Facts{Hostname: "evil", IPs: []string{"10.0.0.66"}, Arch: "amd64", OS: "linux", AgentVersion: "dev", Labels: map[string]string{"rack": "r1"}}
}

// hostileFacts are reports that each carry one value meant for another
// node's shell, unit file or the controller's log.
var hostileFacts = []struct {
	field  string
	mutate func(*protocol.Facts)
}{
	{"facts.ips[0]", func(f *protocol.Facts) { f.IPs = []string{"fe80::1%x;touch${IFS}/PWNED;#"} }},
	{"facts.ips[1]", func(f *protocol.Facts) { f.IPs = []string{"10.0.0.66", "224.0.0.1"} }},
	{"facts.ips[0]", func(f *protocol.Facts) { f.IPs = []string{"0.0.0.0"} }},
	{`facts.labels["rack"]`, func(f *protocol.Facts) { f.Labels = map[string]string{"rack": "r1;touch /PWNED"} }},
	{`facts.labels["rack"]`, func(f *protocol.Facts) { f.Labels = map[string]string{"rack": "$(touch /PWNED)"} }},
	{`facts.labels["rack"]`, func(f *protocol.Facts) { f.Labels = map[string]string{"rack": "`touch /PWNED`"} }},
	{`facts.labels["rack"]`, func(f *protocol.Facts) { f.Labels = map[string]string{"rack": "r1\nExecStartPre=/bin/touch /PWNED"} }},
	{`facts.labels["rack"]`, func(f *protocol.Facts) { f.Labels = map[string]string{"rack": `r1'";touch /PWNED;"'`} }},
	{"facts.labels key", func(f *protocol.Facts) { f.Labels = map[string]string{"role;touch /PWNED": "x"} }},
	{"facts.hostname", func(f *protocol.Facts) { f.Hostname = "evil\ntime=2026 level=INFO msg=forged" }},
	{"facts.arch", func(f *protocol.Facts) { f.Arch = "amd64 $(touch /PWNED)" }},
	{"facts.kernel", func(f *protocol.Facts) { f.Kernel = strings.Repeat("k", 10000) }},
}

// logged is a field name as the controller's text log quotes it.
func logged(field string) string { return strings.ReplaceAll(field, `"`, `\"`) }

// TestHostileFacts: joins and registrations that report hostile facts are
// refused, the inventory keeps what it had, and the controller's log names
// the node and the field.
func TestHostileFacts(t *testing.T) {
	skipShort(t)
	ctx := context.Background()
	f := controllertest.Start(t)
	tok, _ := f.Token()

	t.Run("join", func(t *testing.T) {
		for i, hf := range hostileFacts {
			facts := honestFacts()
			hf.mutate(&facts)
			name := "evil-join-" + string(rune('a'+i))
			code, body, err := f.PostJoin(ctx, protocol.JoinRequest{Token: tok, Name: name, Facts: facts})
			if err != nil {
				t.Fatal(err)
			}
			var je protocol.JoinError
			_ = json.Unmarshal(body, &je)
			if code != http.StatusBadRequest || !strings.Contains(je.Error, hf.field) {
				t.Errorf("%s: HTTP %d %s, want 400 naming the field", hf.field, code, body)
			}
			if _, ok := f.Node(ctx, name); ok {
				t.Errorf("%s: node %s admitted", hf.field, name)
			}
			if !f.Controller.WaitLog(5*time.Second, "join refused: invalid report", "node="+name, logged(hf.field)) {
				t.Errorf("%s: no log line naming node %s and the field", hf.field, name)
			}
		}
		for _, name := range []string{"evil;touch /PWNED", "$(id)", "`id`", "a\nb", `a"b`} {
			code, body, _ := f.PostJoin(ctx, protocol.JoinRequest{Token: tok, Name: name, Facts: honestFacts()})
			if code != http.StatusBadRequest || !strings.Contains(string(body), "node name") {
				t.Errorf("name %q: HTTP %d %s", name, code, body)
			}
		}
	})

	t.Run("registration", func(t *testing.T) {
		cr, err := f.Join(ctx, tok, "evil", honestFacts())
		if err != nil {
			t.Fatal(err)
		}
		nc, err := f.ConnectNode(cr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if r, err := controllertest.Register(ctx, nc, protocol.Register{Name: "evil", Facts: honestFacts(), HeartbeatInterval: time.Second}); err != nil || !r.OK {
			t.Fatalf("honest registration: %+v %v", r, err)
		}
		before, _ := f.Node(ctx, "evil")
		for _, hf := range hostileFacts {
			facts := honestFacts()
			hf.mutate(&facts)
			r, err := controllertest.Register(ctx, nc, protocol.Register{Name: "evil", Facts: facts, HeartbeatInterval: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if r.OK || !strings.Contains(r.Error, hf.field) {
				t.Errorf("%s: registration answered %+v, want a refusal naming the field", hf.field, r)
			}
			if !f.Controller.WaitLog(5*time.Second, "registration refused: invalid report", "node=evil", logged(hf.field)) {
				t.Errorf("%s: no log line naming node evil and the field", hf.field)
			}
		}
		after, _ := f.Node(ctx, "evil")
		if !reflect.DeepEqual(before.Facts, after.Facts) || !maps.Equal(before.Labels, after.Labels) {
			t.Errorf("inventory changed by refused reports:\nbefore %+v %v\nafter  %+v %v", before.Facts, before.Labels, after.Facts, after.Labels)
		}
		if strings.Contains(strings.Join(after.Facts.IPs, ","), "%") {
			t.Errorf("a zoned address reached the inventory: %v", after.Facts.IPs)
		}
	})
	if _, err := os.Stat("/PWNED"); err == nil {
		t.Error("/PWNED exists")
	}
}

// TestHostileJoinReplacesNode: a second join under an existing node's name
// with a valid token is refused; the real agent keeps its credentials and
// connection and exec still works on it. Only an admin's `token create --for`
// or `nodes remove` lets the name join again.
func TestHostileJoinReplacesNode(t *testing.T) {
	skipShort(t)
	ctx := context.Background()
	f := controllertest.Start(t)
	f.StartAgent("a1", "--labels", "role=worker")
	f.WaitOnline(20*time.Second, true, "a1")
	tok, _ := f.Token()
	credsBefore := f.AgentCredentials("a1")
	nodeBefore, _ := f.Node(ctx, "a1")

	facts := honestFacts()
	facts.Labels = map[string]string{"role": "master"}
	code, body, err := f.PostJoin(ctx, protocol.JoinRequest{Token: tok, Name: "a1", Facts: facts})
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusConflict || !strings.Contains(string(body), "nodes remove a1") {
		t.Fatalf("join as a1 with a valid token: HTTP %d %s, want 409 naming the way out", code, body)
	}
	if !f.Controller.WaitLog(5*time.Second, "join refused", "node=a1", "already in the inventory") {
		t.Error("the refused takeover is not logged with the node's name")
	}
	// The real agent: same credentials, still connected, still runs commands.
	if now := f.AgentCredentials("a1"); now.Password != credsBefore.Password {
		t.Fatal("a1's credentials changed")
	}
	nc, err := f.ConnectNode(credsBefore)
	if err != nil {
		t.Fatalf("a1's own credentials no longer work: %v", err)
	}
	nc.Close()
	f.WaitOnline(10*time.Second, true, "a1")
	out, errOut, code2 := f.CLI(ctx, "exec", "--node", "a1", "--", "echo", "still-mine")
	if code2 != 0 || !strings.Contains(out, "a1 | still-mine") {
		t.Fatalf("exec on a1 after the takeover attempt: exit %d\n%s\n%s", code2, out, errOut)
	}
	nodeAfter, _ := f.Node(ctx, "a1")
	if !maps.Equal(nodeAfter.Labels, nodeBefore.Labels) || nodeAfter.Labels["role"] != "worker" {
		t.Errorf("a1's labels changed: %v -> %v", nodeBefore.Labels, nodeAfter.Labels)
	}

	t.Run("token --for NAME re-joins that name only", func(t *testing.T) {
		forTok := createToken(t, f, "--ttl", "1h", "--for", "b1")
		if _, err := f.Join(ctx, tok, "b1", honestFacts()); err != nil {
			t.Fatal(err)
		}
		// The --for token joins no other name, with the answer every bad token gets.
		code, body, _ := f.PostJoin(ctx, protocol.JoinRequest{Token: forTok.Token, Name: "b2", Facts: honestFacts()})
		if code != http.StatusForbidden || !strings.Contains(string(body), "invalid join token") {
			t.Errorf("--for b1 token used for b2: HTTP %d %s", code, body)
		}
		if _, err := f.Join(ctx, forTok.Token, "b1", honestFacts()); err != nil {
			t.Fatalf("re-join b1 with a token --for b1: %v", err)
		}
	})

	t.Run("nodes remove frees the name and revokes the credentials", func(t *testing.T) {
		cr, err := f.Join(ctx, tok, "c1", honestFacts())
		if err != nil {
			t.Fatal(err)
		}
		nc, err := f.ConnectNode(cr)
		if err != nil {
			t.Fatal(err)
		}
		closed := make(chan struct{})
		nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
		if out, errOut, code := f.CLI(ctx, "nodes", "remove", "c1"); code != 0 {
			t.Fatalf("nodes remove: exit %d %s %s", code, out, errOut)
		}
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Error("c1's connection stays open after nodes remove")
		}
		if _, err := f.ConnectNode(cr); err == nil {
			t.Error("c1's credentials still connect after nodes remove")
		}
		if _, ok := f.Node(ctx, "c1"); ok {
			t.Error("c1 still listed")
		}
		if _, err := f.Join(ctx, tok, "c1", honestFacts()); err != nil {
			t.Errorf("join c1 after remove: %v", err)
		}
		if _, errOut, code := f.CLI(ctx, "nodes", "remove", "nope"); code == 0 || !strings.Contains(errOut, `no node named "nope"`) {
			t.Errorf("removing an unknown node: exit %d %s", code, errOut)
		}
	})
}

// TestHostileRelabel: a node that registers again with role=master keeps its
// approved labels (the ones selectors match); the report is logged, shown as a
// fact, and only an admin's `nodes label` changes the labels.
func TestHostileRelabel(t *testing.T) {
	skipShort(t)
	ctx := context.Background()
	f := controllertest.Start(t)
	f.StartAgent("a2", "--labels", "role=worker")
	f.WaitOnline(20*time.Second, true, "a2")
	nc, err := f.ConnectNode(f.AgentCredentials("a2"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	facts := honestFacts()
	facts.Labels = map[string]string{"role": "master"}
	r, err := controllertest.Register(ctx, nc, protocol.Register{Name: "a2", Facts: facts, HeartbeatInterval: controllertest.HeartbeatInterval})
	if err != nil || !r.OK {
		t.Fatalf("registration with other labels: %+v %v", r, err)
	}
	n, _ := f.Node(ctx, "a2")
	if n.Labels["role"] != "worker" || n.Facts.Labels["role"] != "master" {
		t.Fatalf("after relabel: labels %v, reported %v; want labels role=worker, reported role=master", n.Labels, n.Facts.Labels)
	}
	if !f.Controller.WaitLog(5*time.Second, "differ from its approved labels", "node=a2", `reported="role=master"`) {
		t.Error("the relabel is not logged with the node's name")
	}
	if _, errOut, code := f.CLI(ctx, "exec", "--role", "master", "--", "true"); code == 0 || !strings.Contains(errOut, "no node has the labels role=master") {
		t.Errorf("--role master selects a node that only says it is one: exit %d %s", code, errOut)
	}
	out, errOut, code := f.CLI(ctx, "nodes", "label", "a2", "role=web", "zone-")
	if code != 0 || !strings.Contains(out, "role=web") {
		t.Fatalf("nodes label: exit %d %s %s", code, out, errOut)
	}
	out, _, code = f.CLI(ctx, "exec", "--role", "web", "--", "echo", "web")
	if code != 0 || !strings.Contains(out, "a2 | web") {
		t.Errorf("exec --role web after nodes label: exit %d %s", code, out)
	}
	if _, errOut, code := f.CLI(ctx, "nodes", "label", "a2", "role=$(id)"); code == 0 || !strings.Contains(errOut, "role") {
		t.Errorf("nodes label with a hostile value: exit %d %s", code, errOut)
	}
}

// TestTokenUsesForAndRevoke: --uses N allows N joins, then every join gets the
// one bad-token answer; token list shows uses, the name and labels; revoke works.
func TestTokenUsesForAndRevoke(t *testing.T) {
	skipShort(t)
	ctx := context.Background()
	f := controllertest.Start(t)
	ti := createToken(t, f, "--ttl", "1h", "--uses", "2", "--labels", "rack=r9")
	for _, name := range []string{"u1", "u2"} {
		facts := honestFacts()
		facts.Labels = map[string]string{"rack": "mine", "zone": "z1"}
		if _, err := f.Join(ctx, ti.Token, name, facts); err != nil {
			t.Fatalf("join %d of 2: %v", len(name), err)
		}
	}
	n, _ := f.Node(ctx, "u1")
	if !maps.Equal(n.Labels, map[string]string{"rack": "r9"}) {
		t.Errorf("labels at first join: %v, want only the token's rack=r9", n.Labels)
	}
	code, body, _ := f.PostJoin(ctx, protocol.JoinRequest{Token: ti.Token, Name: "u3", Facts: honestFacts()})
	if code != http.StatusForbidden || !strings.Contains(string(body), "invalid join token") {
		t.Errorf("third join with --uses 2: HTTP %d %s", code, body)
	}
	if !f.Controller.WaitLog(5*time.Second, "join refused", "node=u3", "used up") {
		t.Error("the used-up token is not logged as such")
	}
	out, _, _ := f.CLI(ctx, "token", "list", "-o", "json")
	var list []protocol.TokenInfo
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || list[0].Uses != 2 || list[0].MaxUses != 2 || list[0].Labels["rack"] != "r9" {
		t.Errorf("token list -o json: %s (%v)", out, err)
	}
	if table, _, _ := f.CLI(ctx, "token", "list"); !strings.Contains(table, "used up") || !strings.Contains(table, "2/2") {
		t.Errorf("token list:\n%s", table)
	}
	other := createToken(t, f, "--ttl", "1h")
	if _, errOut, code := f.CLI(ctx, "token", "revoke", other.ID); code != 0 {
		t.Fatalf("revoke: %s", errOut)
	}
	code, body, _ = f.PostJoin(ctx, protocol.JoinRequest{Token: other.Token, Name: "u4", Facts: honestFacts()})
	if code != http.StatusForbidden || !strings.Contains(string(body), "invalid join token") {
		t.Errorf("join with a revoked token: HTTP %d %s", code, body)
	}
	if _, errOut, code := f.CLI(ctx, "token", "create", "--for", "a;b"); code == 0 || !strings.Contains(errOut, "--for") {
		t.Errorf("token create --for with a hostile name: exit %d %s", code, errOut)
	}
}

// TestHostileTokenLabels: a token created with --labels fixes the whole
// label set of the node that joins with it. A joiner that asks for more keys
// (a control-plane role, a tier a Clusterfile selects on) or another value of
// the token's keys gets exactly the token's labels, no selector picks it by
// what it added, and the controller logs what it did not apply, naming the
// node. A token without --labels keeps the first join's labels (the
// documented default: whoever holds such a token chooses them).
func TestHostileTokenLabels(t *testing.T) {
	skipShort(t)
	ctx := context.Background()
	f := controllertest.Start(t)
	ti := createToken(t, f, "--ttl", "1h", "--labels", "rack=r1")
	f.StartAgent("l1", "--token", ti.Token, "--labels", "rack=r1,tier=control,node-role.kubernetes.io/control-plane=true")
	code, body, err := f.PostJoin(ctx, protocol.JoinRequest{Token: ti.Token, Name: "l2", Facts: protocol.Facts{Arch: "amd64", OS: "linux",
		Labels: map[string]string{"rack": "r2", "tier": "control"}}})
	if err != nil || code != http.StatusOK {
		t.Fatalf("join l2: HTTP %d %s %v", code, body, err)
	}
	f.WaitOnline(30*time.Second, true, "l1")
	for _, name := range []string{"l1", "l2"} {
		n, _ := f.Node(ctx, name)
		if !maps.Equal(n.Labels, map[string]string{"rack": "r1"}) {
			t.Errorf("%s: labels %v, want only the token's rack=r1", name, n.Labels)
		}
	}
	if !f.Controller.WaitLog(5*time.Second, "labels the join asked for", "node=l1", `notApplied="node-role.kubernetes.io/control-plane=true,tier=control"`) {
		t.Error("the refused labels of l1 are not logged with its name")
	}
	if !f.Controller.WaitLog(5*time.Second, "labels the join asked for", "node=l2", `notApplied="rack=r2,tier=control"`) {
		t.Error("the refused labels of l2 are not logged with its name")
	}
	for _, sel := range []string{"tier=control", "node-role.kubernetes.io/control-plane=true", "rack=r2"} {
		if out, errOut, code := f.CLI(ctx, "exec", "--selector", sel, "--", "true"); code == 0 || !strings.Contains(errOut, "no node") {
			t.Errorf("exec --selector %s picks a node by a label the joiner chose: exit %d\n%s\n%s", sel, code, out, errOut)
		}
	}
	// The admin may add the label afterwards; that is the one way in.
	if out, errOut, code := f.CLI(ctx, "nodes", "label", "l1", "tier=control"); code != 0 {
		t.Fatalf("nodes label: exit %d %s %s", code, out, errOut)
	}
	if n, _ := f.Node(ctx, "l1"); !maps.Equal(n.Labels, map[string]string{"rack": "r1", "tier": "control"}) {
		t.Errorf("after nodes label: %v", n.Labels)
	}
	// Without --labels on the token, the first join's labels are the node's.
	free, _ := f.Token()
	if _, err := f.Join(ctx, free, "l3", protocol.Facts{Arch: "amd64", OS: "linux", Labels: map[string]string{"tier": "edge"}}); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.Node(ctx, "l3"); !maps.Equal(n.Labels, map[string]string{"tier": "edge"}) {
		t.Errorf("join with a token without labels: %v, want the first join's tier=edge", n.Labels)
	}
}

func createToken(t *testing.T, f *controllertest.Fleet, args ...string) protocol.TokenInfo {
	t.Helper()
	out, errOut, code := f.CLI(context.Background(), append(append([]string{"token", "create"}, args...), "-o", "json")...)
	if code != 0 {
		t.Fatalf("token create %v: exit %d %s", args, code, errOut)
	}
	var ti protocol.TokenInfo
	if err := json.Unmarshal([]byte(out), &ti); err != nil {
		t.Fatal(err)
	}
	return ti
}
