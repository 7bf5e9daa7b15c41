package plane_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

var threeNodes = []string{"a1", "a2", "a3"}

// TestControlPlane drives a controller and three agents, all separate processes,
// through join, listing, exec, an agent crash and a controller crash.
func TestControlPlane(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts processes")
	}
	ctx := context.Background()
	f := controllertest.Start(t)
	for _, n := range threeNodes {
		f.StartAgent(n, "--labels", "role=r-"+n+",zone=z1")
	}
	f.WaitOnline(20*time.Second, true, threeNodes...)

	t.Run("nodes lists three online nodes", func(t *testing.T) {
		nodes, err := f.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) != 3 {
			t.Fatalf("got %d nodes, want 3: %+v", len(nodes), nodes)
		}
		for i, n := range nodes {
			if n.Name != threeNodes[i] || !n.Online || n.Facts.Arch == "" || n.Labels["zone"] != "z1" {
				t.Errorf("node %d = %+v, want %s online with facts and labels", i, n, threeNodes[i])
			}
		}
		out, _, code := f.CLI(ctx, "nodes")
		if code != 0 || !strings.Contains(out, "a2") || !strings.Contains(out, "online") {
			t.Errorf("nodes table (exit %d):\n%s", code, out)
		}
	})

	t.Run("exec --all returns each node's output and exit code", func(t *testing.T) {
		out, errOut, code := f.CLI(ctx, "exec", "--all", "--", "sh", "-c", `echo "hello from $FLOTILLA_NODE"; echo "warn $FLOTILLA_NODE" >&2`)
		if code != 0 {
			t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
		for _, n := range threeNodes {
			if !strings.Contains(out, n+" | hello from "+n) {
				t.Errorf("stdout lacks %q:\n%s", n+" | hello from "+n, out)
			}
			if !strings.Contains(errOut, n+" | warn "+n) {
				t.Errorf("stderr lacks %s's line:\n%s", n, errOut)
			}
		}
		if !strings.Contains(out, "3 nodes: 3 ok, 0 failed") {
			t.Errorf("summary missing:\n%s", out)
		}
		js, _, code := f.CLI(ctx, "exec", "--role", "r-a3", "-o", "json", "--", "sh", "-c", "exit 0")
		var res []map[string]any
		if code != 0 || json.Unmarshal([]byte(js), &res) != nil || len(res) != 1 || res[0]["node"] != "a3" {
			t.Errorf("exec --role r-a3 -o json (exit %d): %s", code, js)
		}
	})

	t.Run("a failing command gives a non-zero exit and names the node", func(t *testing.T) {
		out, errOut, code := f.CLI(ctx, "exec", "--all", "--", "sh", "-c", `[ "$FLOTILLA_NODE" != a2 ] || exit 7`)
		if code == 0 {
			t.Fatalf("exit 0 although a2 failed:\n%s", out)
		}
		if !strings.Contains(out, "a2") || !strings.Contains(out, "exit 7") || !strings.Contains(errOut, "a2") {
			t.Errorf("output does not name a2 with exit 7:\nstdout:\n%s\nstderr:\n%s", out, errOut)
		}
		out, _, code = f.CLI(ctx, "exec", "--node", "a1", "--timeout", "500ms", "--", "sleep", "30")
		if code == 0 || !strings.Contains(out, "TIMEOUT") {
			t.Errorf("timed-out command: exit %d\n%s", code, out)
		}
		_, errOut, code = f.CLI(ctx, "exec", "--node", "nope", "--", "true")
		if code == 0 || !strings.Contains(errOut, `no node named "nope"`) {
			t.Errorf("unknown node: exit %d: %s", code, errOut)
		}
	})

	t.Run("an agent killed with SIGKILL comes back and runs the next command", func(t *testing.T) {
		f.Agents["a1"].Kill()
		f.WaitOnline(10*time.Second, false, "a1")
		out, _, code := f.CLI(ctx, "exec", "--node", "a1", "--", "true")
		if code == 0 || !strings.Contains(out, "offline") {
			t.Errorf("exec on a dead node: exit %d\n%s", code, out)
		}
		f.RestartAgent("a1") // no token: the data dir holds its credentials
		f.WaitOnline(20*time.Second, true, "a1")
		out, errOut, code := f.CLI(ctx, "exec", "--node", "a1", "--", "echo", "back")
		if code != 0 || !strings.Contains(out, "a1 | back") {
			t.Errorf("exec after restart: exit %d\n%s\n%s", code, out, errOut)
		}
	})

	t.Run("a restarted controller keeps its inventory and agents reconnect", func(t *testing.T) {
		f.KillController()
		f.StartController()
		nodes, err := f.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) != 3 {
			t.Fatalf("after restart the inventory has %d nodes: %+v", len(nodes), nodes)
		}
		f.WaitOnline(30*time.Second, true, threeNodes...)
		out, errOut, code := f.CLI(ctx, "exec", "--all", "--", "echo", "again")
		if code != 0 || strings.Count(out, "| again") != 3 {
			t.Errorf("exec after controller restart: exit %d\n%s\n%s", code, out, errOut)
		}
	})

	t.Run("agent status reports the joined agent", func(t *testing.T) {
		out, code := f.RunAgentOnce(ctx, "agent", "status", "-o", "json", "--data-dir", f.AgentDataDir("a2"))
		if code != 0 || !strings.Contains(out, `"registered": true`) {
			t.Errorf("agent status: exit %d: %s", code, out)
		}
		out, code = f.RunAgentOnce(ctx, "agent", "status", "--data-dir", filepath.Join(f.Dir, "never-started"))
		if code == 0 {
			t.Errorf("agent status of a missing agent: exit 0: %s", out)
		}
	})

	t.Run("bad input", func(t *testing.T) { testBadInput(t, f) })
}

func testBadInput(t *testing.T, f *controllertest.Fleet) {
	ctx := context.Background()
	_, hash := f.Token()
	join := func(name, token string) (string, int) {
		return f.RunAgentOnce(ctx, "agent", "--controller", f.HTTPURL(), "--token", token, "--ca-hash", hash,
			"--name", name, "--data-dir", filepath.Join(f.Dir, "bad", name))
	}
	// Every bad token gets the same answer (finding 9 of issue 12): a caller
	// learns nothing about which token ids exist.
	var answers []string
	refused := func(t *testing.T, what, out string, code int) {
		t.Helper()
		i := strings.Index(out, "invalid join token")
		if code == 0 || i < 0 {
			t.Errorf("%s: exit %d, output:\n%s", what, code, out)
			return
		}
		line, _, _ := strings.Cut(out[i:], "\n")
		answers = append(answers, line)
	}
	t.Run("wrong token", func(t *testing.T) {
		for _, tok := range []string{"garbage", "0123abcd.0123", strings.Split(mustToken(f), ".")[0] + ".wrongsecret"} {
			out, code := join("bad1", tok)
			refused(t, "token "+tok, out, code)
		}
	})
	t.Run("expired token", func(t *testing.T) {
		tok, _ := f.NewToken("1ms")
		time.Sleep(20 * time.Millisecond) // only time passing expires a token
		out, code := join("bad2", tok)
		refused(t, "expired token", out, code)
	})
	t.Run("revoked token", func(t *testing.T) {
		tok, _ := f.NewToken("1h")
		id := strings.Split(tok, ".")[0]
		list, _, code := f.CLI(ctx, "token", "list")
		if code != 0 || !strings.Contains(list, id) {
			t.Fatalf("token list (exit %d) lacks %s:\n%s", code, id, list)
		}
		if out, errOut, code := f.CLI(ctx, "token", "revoke", id); code != 0 {
			t.Fatalf("revoke: exit %d %s %s", code, out, errOut)
		}
		out, code := join("bad4", tok)
		refused(t, "revoked token", out, code)
		if len(answers) != 5 {
			t.Fatalf("%d refusals, want 5: %q", len(answers), answers)
		}
		for _, a := range answers[1:] {
			if a != answers[0] {
				t.Errorf("bad tokens get different answers: %q and %q", answers[0], a)
			}
		}
		if _, errOut, code := f.CLI(ctx, "token", "revoke", id); code == 0 || !strings.Contains(errOut, "token list") {
			t.Errorf("revoking twice: exit %d: %s", code, errOut)
		}
	})
	t.Run("wrong CA hash", func(t *testing.T) {
		out, code := f.RunAgentOnce(ctx, "agent", "--controller", f.HTTPURL(), "--token", mustToken(f),
			"--ca-hash", "sha256:"+strings.Repeat("0", 64), "--name", "bad3", "--data-dir", filepath.Join(f.Dir, "bad", "bad3"))
		if code == 0 || !strings.Contains(out, "not the pinned") {
			t.Errorf("exit %d, output:\n%s", code, out)
		}
	})

	caPEM, err := os.ReadFile(filepath.Join(f.ControllerDir(), "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tlsOpt := nats.Secure(&tls.Config{RootCAs: pool})

	t.Run("a client without credentials cannot connect", func(t *testing.T) {
		for name, opts := range map[string][]nats.Option{
			"no user":        {tlsOpt},
			"wrong password": {tlsOpt, nats.UserInfo("flotilla-admin", "nope")},
			"unknown node":   {tlsOpt, nats.UserInfo("node/ghost", "nope")},
		} {
			nc, err := nats.Connect(f.NATSURL(), append(opts, nats.Timeout(5*time.Second), nats.NoReconnect())...)
			if err == nil {
				nc.Close()
				t.Errorf("%s: connected", name)
			} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
				t.Errorf("%s: error %v, want an authorization violation", name, err)
			}
		}
		_, errOut, code := f.CLI(ctx, "nodes", "--credentials", filepath.Join(f.Dir, "missing.creds"))
		if code == 0 || !strings.Contains(errOut, "--credentials") {
			t.Errorf("CLI without credentials: exit %d: %s", code, errOut)
		}
	})

	t.Run("an agent's credentials cannot reach another node", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join(f.AgentDataDir("a1"), "credentials.json"))
		if err != nil {
			t.Fatal(err)
		}
		var cr protocol.Credentials
		if err := json.Unmarshal(data, &cr); err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 10)
		nc, err := nats.Connect(f.NATSURL(), tlsOpt, nats.UserInfo(cr.User, cr.Password), nats.NoReconnect(),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
		if err != nil {
			t.Fatalf("a1's own credentials: %v", err)
		}
		defer nc.Close()
		for _, subj := range []string{protocol.TaskSubject("a2"), protocol.AdminSubject(protocol.AdminExec), protocol.HeartbeatSubject("a2")} {
			if err := nc.Publish(subj, []byte("{}")); err != nil {
				t.Fatal(err)
			}
			_ = nc.Flush()
			select {
			case err := <-errs:
				if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(err.Error(), "Permissions Violation") {
					t.Errorf("publish %s: %v, want a permissions violation", subj, err)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("publish %s as a1 was not refused", subj)
			}
		}
		if _, err := nc.SubscribeSync(protocol.TaskSubject("a2")); err == nil {
			_ = nc.Flush()
			select {
			case err := <-errs:
				if !strings.Contains(err.Error(), "Permissions Violation") {
					t.Errorf("subscribe to a2's tasks: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("a1 may subscribe to a2's tasks")
			}
		}

		// Malformed messages on the subjects a1 may use are dropped, the controller keeps working.
		for _, subj := range []string{protocol.RegisterSubject("a1"), protocol.HeartbeatSubject("a1"), protocol.EventsSubject("a1", "x")} {
			if err := nc.Publish(subj, []byte("\x00not json{")); err != nil {
				t.Fatal(err)
			}
		}
		_ = nc.Flush()
		out, errOut, code := f.CLI(ctx, "exec", "--all", "--", "true")
		if code != 0 {
			t.Errorf("controller after malformed messages: exit %d\n%s\n%s", code, out, errOut)
		}
		if exited, err := f.Controller.Exited(); exited {
			t.Errorf("controller exited: %v", err)
		}
	})
}

func mustToken(f *controllertest.Fleet) string {
	tok, _ := f.Token()
	return tok
}
