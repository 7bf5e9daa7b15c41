package plane

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/internal/syncbuf"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

// Issue 23, finding 11c: the controller decoded a node's messages with
// encoding/json, which keeps the last of a key given twice (and matches keys
// regardless of letter case). A node that sends a key twice has two readings
// of one message. Every message a node sends now goes through the strict
// decoder: refused and logged naming the node. Real controller in this
// process (log captured), a node joined over HTTPS speaking on its own NATS
// credentials.

func waitLogLine(t *testing.T, logs *syncbuf.Buffer, parts ...string) {
	t.Helper()
	if err := poll.Until(context.Background(), 5*time.Second, 20*time.Millisecond, func() bool { return linesWith(logs, parts...) > 0 }); err != nil {
		t.Errorf("no log line holds all of %q:\n%s", parts, lastLines(logs.String(), 10))
	}
}

func TestHostileDuplicateKeys(t *testing.T) {
	c, logs := startLoggedController(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tok, err := c.tokens.create(ctx, protocol.TokenCreate{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	nc := joinAndConnect(t, c, tok.Token, "dup", protocol.Facts{})
	if m, err := nc.RequestWithContext(ctx, protocol.RegisterSubject("dup"), registration("dup", "h")); err != nil || !strings.Contains(string(m.Data), `"ok":true`) {
		t.Fatalf("honest registration: %v %v", m, err)
	}

	t.Run("join", func(t *testing.T) {
		body := fmt.Sprintf(`{"token":%q,"name":"dup-join","facts":{},"name":"dup-other"}`, tok.Token)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(c.CAPEM())
		cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		resp, err := cl.Post(c.HTTPURL()+protocol.PathJoin, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(out), "twice") {
			t.Errorf("join with the name twice: HTTP %d %s, want 400 saying a key was given twice", resp.StatusCode, out)
		}
		if _, ok := c.inv.get("dup-other"); ok {
			t.Error("the join admitted the name given second")
		}
	})

	t.Run("registration", func(t *testing.T) {
		data := []byte(`{"name":"dup","facts":{"hostname":"h","arch":"amd64","os":"linux","ips":["10.0.0.7"]},` +
			`"heartbeatInterval":1000000000,"facts":{"hostname":"evil","labels":{"role":"master"}}}`)
		m, err := nc.RequestWithContext(ctx, protocol.RegisterSubject("dup"), data)
		if err != nil {
			t.Fatal(err)
		}
		var r protocol.RegisterReply
		if err := json.Unmarshal(m.Data, &r); err != nil || r.OK || !strings.Contains(r.Error, "twice") {
			t.Errorf("registration with facts twice: %s, want a refusal saying a key was given twice", m.Data)
		}
		waitLogLine(t, logs, "registration refused", "node=dup", "twice")
		if rec, _ := c.inv.get("dup"); rec.Facts.Hostname != "h" || rec.Facts.Labels != nil {
			t.Errorf("the refused registration changed the record: %+v", rec.Facts)
		}
	})

	t.Run("heartbeat", func(t *testing.T) {
		if err := nc.Publish(protocol.HeartbeatSubject("dup"), []byte(`{"name":"dup","interval":1000000000,"running":0,"running":7}`)); err != nil {
			t.Fatal(err)
		}
		waitLogLine(t, logs, "dropping an invalid heartbeat", "node=dup", "twice")
	})

	t.Run("peer certificate request", func(t *testing.T) {
		_, csr := newCSR(t, "dup")
		data := fmt.Sprintf(`{"csr":%q,"CSR":%q}`, base64.StdEncoding.EncodeToString([]byte("x")), base64.StdEncoding.EncodeToString(csr))
		m, err := controllertest.NodeRequest(ctx, nc, "dup", protocol.RequestPeerCert, []byte(data))
		if err != nil {
			t.Fatal(err)
		}
		var rep protocol.PeerCertReply
		if err := json.Unmarshal(m.Data, &rep); err != nil || len(rep.Cert) != 0 || !strings.Contains(rep.Error, "twice") {
			t.Errorf("peer certificate request with the CSR twice: %s, want a refusal saying a key was given twice", m.Data)
		}
		waitLogLine(t, logs, "invalid peer certificate request", "node=dup", "twice")
	})

	// The node's side of a task: ack as told, then send events as told.
	type script struct {
		ack    string
		events []string
	}
	scripts := make(chan script, 2)
	sub, err := nc.Subscribe(protocol.TaskSubject("dup"), func(m *nats.Msg) {
		var env protocol.SignedEnvelope
		var task protocol.Task
		if json.Unmarshal(m.Data, &env) != nil || json.Unmarshal(env.Body, &task) != nil {
			return
		}
		s := <-scripts
		_ = m.Respond([]byte(s.ack))
		for _, ev := range s.events {
			_ = nc.Publish(protocol.EventsSubject("dup", task.ID), []byte(strings.ReplaceAll(ev, "TASK", task.ID)))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.FlushWithContext(ctx); err != nil { // the server knows the subscription before a task comes
		t.Fatal(err)
	}
	hb := func() {
		data, _ := protocol.Encode(protocol.Heartbeat{Name: "dup", Time: time.Now().UTC(), Interval: time.Second})
		_ = nc.Publish(protocol.HeartbeatSubject("dup"), data)
	}
	task := func() *protocol.Task {
		return &protocol.Task{Node: "dup", Steps: []protocol.Step{{Kind: "exec", Command: []string{"true"}}}}
	}

	t.Run("task acknowledgement", func(t *testing.T) {
		hb()
		scripts <- script{ack: `{"accepted":false,"error":"busy","accepted":true}`}
		run, err := c.Dispatch(ctx, task(), nil)
		if err == nil {
			run.Cancel()
			t.Fatal("an acknowledgement with accepted twice started the task")
		}
		if !strings.Contains(err.Error(), "twice") {
			t.Errorf("dispatch: %v, want an error saying a key was given twice", err)
		}
		waitLogLine(t, logs, "invalid acknowledgement", "node=dup", "twice")
	})

	t.Run("event", func(t *testing.T) {
		hb()
		scripts <- script{ack: `{"accepted":true}`, events: []string{
			`{"type":"output","task":"TASK","node":"dup","n":1,"stream":"stdout","line":"shown","line":"hidden"}`,
			`{"type":"task.result","task":"TASK","node":"dup","n":2,"step":-1,"final":{"ok":true,"failedStep":-1}}`,
		}}
		var lines bytes.Buffer
		run, err := c.Dispatch(ctx, task(), func(ev protocol.Event) { lines.WriteString(ev.Line + "\n") })
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if _, err := run.Wait(wctx); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(lines.String(), "shown") || strings.Contains(lines.String(), "hidden") {
			t.Errorf("an event with its line twice reached the dispatcher: %q", lines.String())
		}
		waitLogLine(t, logs, "dropping an invalid event", "node=dup", "twice")
	})
}
