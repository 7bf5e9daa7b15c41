package client

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/syncbuf"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// These tests put the client against a real NATS server with hand-made
// controllers (the consumer's interface: admin subjects), to drive what a
// failover looks like from the client: nobody answering, a controller that
// stops mid-request.

func startNATS(t *testing.T) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

func connect(t *testing.T, ns *server.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func testClient(t *testing.T, ns *server.Server) (*Client, *syncbuf.Buffer) {
	var logs syncbuf.Buffer
	return &Client{nc: connect(t, ns), log: slog.New(slog.NewTextHandler(&logs, nil))}, &logs
}

// serve answers every admin request on nc with reply (streaming first, when
// asked, the given events and keepalives until stop is closed).
func serve(t *testing.T, nc *nats.Conn, name string, body any, stream []protocol.RolloutEvent, hold <-chan struct{}) *nats.Subscription {
	t.Helper()
	sub, err := nc.Subscribe(protocol.AdminSubject(name), func(m *nats.Msg) {
		var req protocol.AdminRequest
		if err := json.Unmarshal(m.Data, &req); err != nil {
			t.Errorf("request: %v", err)
			return
		}
		send := func(hdr string, data []byte) {
			out := nats.NewMsg(req.Stream)
			out.Header.Set(protocol.HeaderStream, "1")
			if hdr != "" {
				out.Header.Set(hdr, "1")
			}
			out.Data = data
			_ = nc.PublishMsg(out)
		}
		if req.Stream != "" {
			send(protocol.HeaderKeepalive, nil)
			for _, ev := range stream {
				data, _ := json.Marshal(ev)
				send("", data)
			}
		}
		if hold != nil {
			<-hold // a controller that dies here sends nothing more
			return
		}
		b, _ := json.Marshal(body)
		data, _ := json.Marshal(protocol.AdminReply{OK: true, Body: b})
		_ = m.Respond(data)
	})
	if err != nil {
		t.Error(err)
		return nil
	}
	if err := nc.Flush(); err != nil {
		t.Error(err)
	}
	return sub
}

// TestNoLeaderYetRetries: a request sent while no controller serves admin
// requests waits for one (and says so) instead of failing.
func TestNoLeaderYetRetries(t *testing.T) {
	ns := startNATS(t)
	c, logs := testClient(t, ns)
	leader := connect(t, ns)
	go func() {
		time.Sleep(time.Second) // the standby takes the lease a second later
		serve(t, leader, protocol.AdminNodes, []protocol.NodeInfo{{Name: "n1"}}, nil, nil)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nodes, err := c.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].Name != "n1" {
		t.Fatalf("Nodes during a failover = %v, %v; want the new leader's answer", nodes, err)
	}
	if !strings.Contains(logs.String(), "no controller is serving admin requests yet") || !strings.Contains(logs.String(), "a controller answers now") {
		t.Errorf("the wait was not reported; log:\n%s", logs)
	}
}

// TestNoLeaderTimeout: when no controller ever answers, the call ends at its
// deadline with ErrNoLeader, not "unknown admin request" or a hang.
func TestNoLeaderTimeout(t *testing.T) {
	ns := startNATS(t)
	c, _ := testClient(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Nodes(ctx)
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("Nodes with no controller = %v; want ErrNoLeader", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %s for a 1 s timeout", d)
	}
}

// TestApplyFollowsNextLeader: the controller serving an apply dies mid-rollout
// (keepalives stop, NATS stays); the client sends the apply again, the next
// leader answers it, and Apply returns that answer with every event shown.
func TestApplyFollowsNextLeader(t *testing.T) {
	ns := startNATS(t)
	c, logs := testClient(t, ns)
	old := connect(t, ns)
	dead := make(chan struct{})
	defer close(dead)
	oldSub := serve(t, old, protocol.AdminApply, nil, []protocol.RolloutEvent{{Cluster: "c", Rollout: "r1", Line: "from the old leader"}}, dead)
	var (
		mu    sync.Mutex
		lines []string
	)
	onEvent := func(ev protocol.RolloutEvent) {
		mu.Lock()
		lines = append(lines, ev.Line)
		mu.Unlock()
		if ev.Line == "from the old leader" {
			// The old leader dies: it stops answering; a new one leads.
			_ = oldSub.Unsubscribe()
			serve(t, connect(t, ns), protocol.AdminApply, protocol.ApplyResult{Cluster: "c", Rollout: "r1", OK: true},
				[]protocol.RolloutEvent{{Cluster: "c", Rollout: "r1", Line: "from the new leader"}}, nil)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	res, err := c.Apply(ctx, protocol.ApplyRequest{Clusterfile: []byte("x")}, onEvent)
	if err != nil || !res.OK || res.Rollout != "r1" {
		t.Fatalf("Apply across a failover = %+v, %v; want the new leader's result", res, err)
	}
	mu.Lock()
	got := strings.Join(lines, "|")
	mu.Unlock()
	if got != "from the old leader|from the new leader" {
		t.Errorf("events = %q", got)
	}
	if !strings.Contains(logs.String(), "sending it to the next leader") {
		t.Errorf("the failover was not reported; log:\n%s", logs)
	}
	// Detected by missed keepalives: not much later than that silence.
	if d, max := time.Since(start), protocol.AdminKeepaliveMisses*protocol.AdminKeepaliveInterval+5*time.Second; d > max {
		t.Errorf("took %s, want under %s", d, max)
	}
}

// TestControllerDiesBeforeAnswering: the controller took the request and died
// before a keepalive left it. A request sent once (exec) ends with
// ErrControllerLost, saying it may have been carried out; one that may be
// sent again (nodes) goes to the next leader.
func TestControllerDiesBeforeAnswering(t *testing.T) {
	ns := startNATS(t)
	c, _ := testClient(t, ns)
	dead := connect(t, ns)
	for _, name := range []string{protocol.AdminExec, protocol.AdminNodes} {
		var once sync.Once
		if _, err := dead.Subscribe(protocol.AdminSubject(name), func(*nats.Msg) {
			// The next leader takes over once the request reached this one.
			once.Do(func() { serve(t, connect(t, ns), protocol.AdminNodes, []protocol.NodeInfo{{Name: "n1"}}, nil, nil) })
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := dead.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Exec(ctx, protocol.ExecRequest{Selector: protocol.Selector{All: true}, Command: []string{"true"}}, nil)
	if !errors.Is(err, ErrControllerLost) || !strings.Contains(err.Error(), "may or may not have been carried out") {
		t.Errorf("Exec at a controller that died = %v; want ErrControllerLost saying it may have run", err)
	}
	silence := protocol.AdminKeepaliveMisses * protocol.AdminKeepaliveInterval
	if d := time.Since(start); d < silence || d > silence+3*time.Second {
		t.Errorf("Exec noticed the loss after %s; want about %s", d, silence)
	}
	// The dead controller still holds its subscription here (in real life
	// NATS drops it with the connection): drop it as NATS would.
	dead.Close()
	if nodes, err := c.Nodes(ctx); err != nil || len(nodes) != 1 {
		t.Errorf("Nodes after the controller died = %v, %v; want the next leader's answer", nodes, err)
	}
}
