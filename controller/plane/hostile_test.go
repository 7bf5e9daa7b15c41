package plane_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

// hostileNode joins name for real (an agent process with a token), stops that
// agent and returns a NATS connection made with its credentials: an attacker
// who owns that node. The connection keeps the default inbox, so the attacker
// chooses every reply subject itself.
func hostileNode(t *testing.T, f *controllertest.Fleet, name string) *nats.Conn {
	t.Helper()
	f.StartAgent(name)
	f.WaitOnline(20*time.Second, true, name)
	f.Agents[name].Kill()
	data, err := os.ReadFile(filepath.Join(f.AgentDataDir(name), "credentials.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(data, &cr); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cr.CAPEM)
	nc, err := nats.Connect(f.NATSURL(), nats.UserInfo(cr.User, cr.Password), nats.Secure(&tls.Config{RootCAs: pool}),
		nats.NoReconnect(), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatalf("connect with %s's credentials: %v", name, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func adminConn(t *testing.T, f *controllertest.Fleet) *nats.Conn {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(f.ControllerDir(), plane.FileAdminCreds))
	if err != nil {
		t.Fatal(err)
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(data, &cr); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cr.CAPEM)
	nc, err := nats.Connect(f.NATSURL(), nats.UserInfo(cr.User, cr.Password), nats.Secure(&tls.Config{RootCAs: pool}), nats.NoReconnect())
	if err != nil {
		t.Fatalf("admin connection: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// waitLog waits until the process log has a line containing every one of parts.
func waitLog(t *testing.T, p *controllertest.Proc, timeout time.Duration, parts ...string) {
	t.Helper()
	logged := func() bool {
		for line := range strings.Lines(p.Output()) {
			if !slices.ContainsFunc(parts, func(s string) bool { return !strings.Contains(line, s) }) {
				return true
			}
		}
		return false
	}
	if err := poll.Until(context.Background(), timeout, 100*time.Millisecond, logged); err != nil {
		t.Fatalf("no log line of %s contains all of %q (%v); tail:\n%s", p.Name, parts, err, p.Tail())
	}
}

func nodeNames(t *testing.T, f *controllertest.Fleet) []string {
	t.Helper()
	nodes, err := f.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	return names
}

// TestHostileReplySubject: a node's credentials make the controller answer on
// reply subjects the node picked (JetStream KV, JetStream API, another node's
// inbox, controller subjects). The controller must answer only inside the
// node's own inbox: no KV write, no stream deleted, no faked heartbeat, and a
// warning naming the node.
func TestHostileReplySubject(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts processes")
	}
	ctx := context.Background()
	f := controllertest.Start(t)
	f.StartAgent("a1")
	f.StartAgent("a2")
	f.WaitOnline(20*time.Second, true, "a1", "a2")
	if out, errOut, code := f.CLI(ctx, "exec", "--node", "a1", "--", "echo", "before-attack"); code != 0 {
		t.Fatalf("exec before the attack: exit %d\n%s\n%s", code, out, errOut)
	}
	evil := hostileNode(t, f, "evil")
	firstController := f.Controller
	f.Agents["a2"].Kill() // a faked heartbeat would bring it back online
	f.WaitOnline(10*time.Second, false, "a2", "evil")
	before := nodeNames(t, f)

	reg, _ := protocol.Encode(protocol.Register{Name: "evil", Facts: protocol.Facts{Hostname: "evil", Arch: "amd64", OS: "linux"},
		HeartbeatInterval: time.Second})
	cert, _ := protocol.Encode(protocol.PeerCertRequest{CSR: []byte("not a csr")})

	// Positive control: inside its own inbox, the node gets its answer.
	m, err := controllertest.NodeRequest(ctx, evil, "evil", "register", reg)
	if err != nil {
		t.Fatalf("register with a reply in the node's own inbox: %v", err)
	}
	var rr protocol.RegisterReply
	if err := protocol.Decode(m.Data, &rr); err != nil || !rr.OK {
		t.Fatalf("register reply %+v %v", rr, err)
	}

	hostile := []string{
		"$KV." + plane.NodesBucket + ".ghost",
		"$KV." + plane.NodesBucket + ".a1",
		"$KV." + plane.StateBucket + ".seq",
		"$KV." + plane.TokensBucket + ".x",
		"$JS.API.STREAM.DELETE." + plane.EventsStream,
		"$JS.API.STREAM.PURGE." + plane.EventsStream,
		protocol.InboxPrefix("a1") + ".stolen",
		protocol.InboxPrefix("evil2") + ".x",
		protocol.HeartbeatSubject("a2"),
		protocol.TaskSubject("a1"),
		protocol.RegisterSubject("a2"),
		"_INBOX.controller",
	}
	for _, reply := range hostile {
		for subj, data := range map[string][]byte{
			protocol.RegisterSubject("evil"):                              reg,
			protocol.NodeRequestSubject("evil", protocol.RequestPeerCert): cert,
			protocol.HeartbeatSubject("evil"):                             []byte("{}"),
		} {
			if err := evil.PublishRequest(subj, reply, data); err != nil {
				t.Fatalf("publish %s reply %s: %v", subj, reply, err)
			}
		}
	}
	if err := evil.Flush(); err != nil {
		t.Fatal(err)
	}
	// Admin credentials may only send admin requests: they must not lend the
	// controller's permissions either (reply or stream subject outside _INBOX.>).
	admin := adminConn(t, f)
	nodesReq, _ := json.Marshal(protocol.AdminRequest{})
	if err := admin.PublishRequest(protocol.AdminSubject(protocol.AdminNodes), "$KV."+plane.StateBucket+".seq", nodesReq); err != nil {
		t.Fatal(err)
	}
	execReq, _ := json.Marshal(protocol.AdminRequest{Stream: "$KV." + plane.NodesBucket + ".ghost2",
		Body: json.RawMessage(`{"selector":{"names":["a1"]},"command":["echo","streamed"]}`)})
	m, err = admin.Request(protocol.AdminSubject(protocol.AdminExec), execReq, 10*time.Second)
	var ar protocol.AdminReply
	if err != nil || json.Unmarshal(m.Data, &ar) != nil || ar.OK || !strings.Contains(ar.Error, "outside _INBOX") {
		t.Errorf("admin exec streaming into KV: %v %+v", err, ar)
	}

	t.Run("no ghost node, no faked heartbeat, KV unchanged", func(t *testing.T) {
		time.Sleep(time.Second) // a wrongly answered request would land within this; there is no event for "nothing happened"
		if after := nodeNames(t, f); !slices.Equal(after, before) {
			t.Errorf("nodes after the attack %v, before %v", after, before)
		}
		nodes, _ := f.Nodes(ctx)
		for _, n := range nodes {
			if n.Name == "a2" && n.Online {
				t.Error("a2 is online although its agent is dead: a heartbeat was faked")
			}
		}
	})
	t.Run("the event stream survived", func(t *testing.T) {
		out, errOut, code := f.CLI(ctx, "logs", "a1")
		if code != 0 || !strings.Contains(out, "before-attack") {
			t.Errorf("logs a1: exit %d\n%s\n%s", code, out, errOut)
		}
	})
	t.Run("a well-behaved agent still works, also after a controller restart", func(t *testing.T) {
		if out, errOut, code := f.CLI(ctx, "exec", "--node", "a1", "--", "echo", "still-fine"); code != 0 || !strings.Contains(out, "a1 | still-fine") {
			t.Errorf("exec on a1: exit %d\n%s\n%s", code, out, errOut)
		}
		f.KillController()
		f.StartController()
		f.WaitOnline(30*time.Second, true, "a1")
		if after := nodeNames(t, f); !slices.Equal(after, before) {
			t.Errorf("nodes after restart %v, before %v", after, before)
		}
		if out, errOut, code := f.CLI(ctx, "exec", "--node", "a1", "--", "echo", "after-restart"); code != 0 || !strings.Contains(out, "a1 | after-restart") {
			t.Errorf("exec on a1 after restart: exit %d\n%s\n%s", code, out, errOut)
		}
	})
	t.Run("the controller logged the refusal naming the node", func(t *testing.T) {
		waitLog(t, firstController, 10*time.Second, "outside the node's inbox", "node=evil", "replySubject="+hostile[0])
		waitLog(t, firstController, 10*time.Second, "admin request whose reply subject is outside", "replySubject=$KV.")
	})
}

// TestHostileEventFlood: one node floods events, for a task it was given and
// for made-up tasks. The other node's exec still works during the flood and its
// events stay in the history; the flooder keeps at most its own share, and the
// controller logs the flood naming it.
func TestHostileEventFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts processes")
	}
	ctx := context.Background()
	const history = 200
	f := controllertest.Start(t, "--node-event-rate", "100", "--node-event-burst", "100", "--node-event-history", fmt.Sprint(history))
	f.StartAgent("a1")
	f.WaitOnline(20*time.Second, true, "a1")
	evil := hostileNode(t, f, "evil")

	// The attacker keeps "evil" online, accepts its tasks and floods their events.
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go func() {
		for hbCtx.Err() == nil {
			hb, _ := protocol.Encode(protocol.Heartbeat{Name: "evil", Time: time.Now().UTC(), Interval: time.Second})
			_ = evil.Publish(protocol.HeartbeatSubject("evil"), hb)
			select {
			case <-hbCtx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	f.WaitOnline(10*time.Second, true, "evil")
	var flooded atomic.Int64
	flood := func(subj string, n int) {
		line := strings.Repeat("x", 1024)
		for i := range n {
			task, _ := protocol.TaskFromEventsSubject(subj)
			ev, _ := protocol.Encode(protocol.Event{Type: protocol.EventOutput, Task: task, Node: "evil", N: uint64(i + 1), Stream: "stdout", Line: line})
			if evil.Publish(subj, ev) == nil {
				flooded.Add(1)
			}
		}
	}
	_, err := evil.Subscribe(protocol.TaskSubject("evil"), func(m *nats.Msg) {
		var env protocol.SignedEnvelope
		var task protocol.Task
		if json.Unmarshal(m.Data, &env) != nil || json.Unmarshal(env.Body, &task) != nil {
			return
		}
		ack, _ := protocol.Encode(protocol.TaskAck{Accepted: true})
		_ = m.Respond(ack)
		go func() {
			subj := protocol.EventsSubject("evil", task.ID)
			// First a line that claims to come from a1: exec prints "NODE | line".
			spoof, _ := protocol.Encode(protocol.Event{Type: protocol.EventOutput, Task: task.ID, Node: "a1", N: 1, Stream: "stdout", Line: "spoofed-by-evil"})
			_ = evil.Publish(subj, spoof)
			flood(subj, 10000)
			for i := range 5000 {
				flood(protocol.EventsSubject("evil", fmt.Sprintf("made-up-%d", i%500)), 1)
			}
			final, _ := protocol.Encode(protocol.Event{Type: protocol.EventTaskResult, Task: task.ID, Node: "evil", Step: -1,
				Final: &protocol.TaskResult{OK: true, FailedStep: -1}})
			_ = evil.Publish(subj, final)
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = evil.Flush()

	floodDone := make(chan struct{})
	go func() {
		defer close(floodDone)
		out, errOut, code := f.CLI(ctx, "exec", "--node", "evil", "--timeout", "60s", "--", "true")
		t.Logf("exec on the flooding node: exit %d %s", code, lastLine(errOut))
		if strings.Contains(out, "spoofed-by-evil") {
			t.Error("exec printed an output line the flooding node attributed to a1")
		}
	}()
	_ = poll.Until(context.Background(), 20*time.Second, 20*time.Millisecond, func() bool { return flooded.Load() >= 1000 })
	for i := range 3 {
		want := fmt.Sprintf("good-%d", i)
		out, errOut, code := f.CLI(ctx, "exec", "--node", "a1", "--", "echo", want)
		if code != 0 || !strings.Contains(out, "a1 | "+want) {
			t.Errorf("exec on a1 during the flood (%d events sent so far): exit %d\n%s\n%s", flooded.Load(), code, out, errOut)
		}
	}
	select {
	case <-floodDone:
	case <-time.After(90 * time.Second):
		t.Fatal("exec on the flooding node did not end")
	}
	t.Logf("the attacker published %d events", flooded.Load())

	waitLog(t, f.Controller, 10*time.Second, "faster than its limit", "node=evil")
	waitLog(t, f.Controller, 10*time.Second, "has not dispatched to this node", "node=evil")
	waitLog(t, f.Controller, 10*time.Second, "dropping an invalid event", "node=evil", `names node \"a1\" but came from node \"evil\"`)

	var a1, evilLog []protocol.Event
	for name, dst := range map[string]*[]protocol.Event{"a1": &a1, "evil": &evilLog} {
		out, errOut, code := f.CLI(ctx, "logs", name, "-n", "0", "-o", "json")
		if code != 0 || json.Unmarshal([]byte(out), dst) != nil {
			t.Fatalf("logs %s: exit %d\n%s\n%s", name, code, out, errOut)
		}
	}
	results := 0
	for i := range 3 {
		if !slices.ContainsFunc(a1, func(ev protocol.Event) bool { return ev.Line == fmt.Sprintf("good-%d", i) }) {
			t.Errorf("a1's output good-%d is not in its history (%d events kept)", i, len(a1))
		}
	}
	for _, ev := range a1 {
		if ev.Type == protocol.EventTaskResult {
			results++
		}
	}
	if results != 3 {
		t.Errorf("a1's history holds %d task results, want 3", results)
	}
	if len(evilLog) > history {
		t.Errorf("the flooding node has %d events in the history, limit %d", len(evilLog), history)
	}
	for _, ev := range evilLog {
		if strings.HasPrefix(ev.Task, "made-up") {
			t.Fatalf("an event for a task never dispatched was kept: %+v", ev.Task)
		}
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	return s[strings.LastIndex(s, "\n")+1:]
}
