package clustertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/internal/natsconn"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// revokeBound is how long after `nodes remove` or a re-join a node's previous
// NATS user may still work anywhere in the cluster (the embedded server
// closes it at once; here the revocation travels to every server).
const revokeBound = 5 * time.Second

// connectTo connects with cr to exactly the server at url, without reconnects.
func connectTo(url string, cr *protocol.Credentials, opts ...nats.Option) (*nats.Conn, error) {
	auth, err := natsconn.Options(cr)
	if err != nil {
		return nil, err
	}
	return nats.Connect(url, append(append(auth, nats.CustomInboxPrefix(protocol.InboxPrefix(cr.Node)),
		nats.NoReconnect(), nats.DontRandomize(), nats.Timeout(3*time.Second)), opts...)...)
}

// authRefused tells a refused login from a server that is not up yet.
func authRefused(err error) bool {
	if err == nil {
		return false
	}
	s := strings.ToLower(err.Error())
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) ||
		strings.Contains(s, "authorization violation") || strings.Contains(s, "authentication")
}

// tap is a thief's connection to one server, subscribed to a node's tasks.
type tap struct {
	server string
	conn   *nats.Conn
	closed chan struct{}
	got    chan *nats.Msg
}

// tapAll connects with stolen credentials to every server of the cluster and
// subscribes to the node's task subjects on each, as a thief would.
func tapAll(t *testing.T, nc *natsCluster, cr *protocol.Credentials) []*tap {
	t.Helper()
	var taps []*tap
	for _, s := range nc.Servers {
		tp := &tap{server: s.Name, closed: make(chan struct{}), got: make(chan *nats.Msg, 16)}
		var once sync.Once
		conn, err := connectTo(s.URL, cr, nats.ClosedHandler(func(*nats.Conn) { once.Do(func() { close(tp.closed) }) }))
		if err != nil {
			t.Fatalf("stolen credentials of %s before the removal, on %s: %v", cr.Node, s.Name, err)
		}
		t.Cleanup(conn.Close)
		if _, err := conn.Subscribe(protocol.ToNode(cr.Node)+".>", func(m *nats.Msg) {
			select {
			case tp.got <- m:
			default:
			}
		}); err != nil {
			t.Fatal(err)
		}
		if err := conn.Flush(); err != nil {
			t.Fatal(err)
		}
		tp.conn = conn
		taps = append(taps, tp)
	}
	return taps
}

// waitClosed fails the test unless every tap's connection was closed by its
// server within revokeBound of since.
func waitClosed(t *testing.T, taps []*tap, since time.Time, what string) {
	t.Helper()
	for _, tp := range taps {
		select {
		case <-tp.closed:
			t.Logf("%s: the thief's connection on %s was closed %.2fs after it", what, tp.server, time.Since(since).Seconds())
		case <-time.After(time.Until(since.Add(revokeBound))):
			t.Errorf("%s: the thief's connection on %s is still open %s after it", what, tp.server, revokeBound)
		}
	}
}

// refusedEverywhere fails the test if cr still logs in on any server; where it
// does, it shows what the thief gets: the node's tasks and its registration.
func refusedEverywhere(t *testing.T, ctx context.Context, nc *natsCluster, cr *protocol.Credentials, what string) {
	t.Helper()
	for _, s := range nc.Servers {
		conn, err := connectTo(s.URL, cr)
		if authRefused(err) {
			continue
		}
		if err != nil {
			t.Errorf("%s: connect to %s: %v (want an authorization refusal)", what, s.Name, err)
			continue
		}
		t.Errorf("%s: the stolen credentials of %s still log in on %s", what, cr.Node, s.Name)
		if _, err := conn.SubscribeSync(protocol.ToNode(cr.Node) + ".>"); err == nil && conn.Flush() == nil {
			t.Errorf("%s: ... and subscribe to %s's tasks there", what, cr.Node)
		}
		r, err := controllertest.Register(ctx, conn, protocol.Register{Name: cr.Node, HeartbeatInterval: time.Second,
			Facts: protocol.Facts{Hostname: "thief", IPs: []string{"10.0.0.66"}, Arch: "amd64", OS: "linux", AgentVersion: "dev"}})
		if err == nil && r.OK {
			t.Errorf("%s: ... and register as %s", what, cr.Node)
		}
		conn.Close()
	}
}

// tokenFor creates a join token that re-joins an existing node name.
func tokenFor(t *testing.T, ctx context.Context, f *controllertest.Fleet, name string) string {
	t.Helper()
	out, errOut, code := f.CLI(ctx, "token", "create", "--ttl", "1h", "--for", name, "-o", "json")
	if code != 0 {
		t.Fatalf("token create --for %s: exit %d %s", name, code, errOut)
	}
	var ti protocol.TokenInfo
	if err := json.Unmarshal([]byte(out), &ti); err != nil {
		t.Fatal(err)
	}
	return ti.Token
}

// TestHostileStolenNodeCreds steals a node's credentials file and uses it
// against all three servers of the cluster: after `nodes remove` (and the
// name's re-join with `token create --for`), and after a re-join without a
// removal, the thief's connections are closed on every server within
// revokeBound and the credentials log in nowhere (so they neither read the
// new node's tasks nor register as it); a nats-server that restarts (and
// forgets the revocations it was sent) refuses them again once the
// controller pushed the revocations to it.
func TestHostileStolenNodeCreds(t *testing.T) {
	nc := startNATSCluster(t, nil)
	f := controllertest.StartExternal(t, nc.args...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f.StartAgent("v1")
	f.WaitOnline(60*time.Second, true, "v1")
	stolen := f.AgentCredentials("v1")
	taps := tapAll(t, nc, stolen)

	removing := time.Now()
	if out, errOut, code := f.CLI(ctx, "nodes", "remove", "v1"); code != 0 {
		t.Fatalf("nodes remove v1: exit %d\n%s%s", code, out, errOut)
	}
	waitClosed(t, taps, removing, "nodes remove v1")
	refusedEverywhere(t, ctx, nc, stolen, "after nodes remove v1")

	// The admin re-joins the name on a fresh install.
	f.Agents["v1"].Kill()
	if err := os.RemoveAll(f.AgentDataDir("v1")); err != nil {
		t.Fatal(err)
	}
	f.StartAgent("v1", "--token", tokenFor(t, ctx, f, "v1"))
	f.WaitOnline(60*time.Second, true, "v1")
	if out, errOut, code := f.CLI(ctx, "exec", "--node", "v1", "--", "echo", "new-v1"); code != 0 || !strings.Contains(out, "new-v1") {
		t.Fatalf("exec on the re-joined v1: exit %d\n%s%s", code, out, errOut)
	}
	refusedEverywhere(t, ctx, nc, stolen, "after v1 re-joined")
	for _, tp := range taps {
		select {
		case m := <-tp.got:
			t.Errorf("the thief's connection on %s received %s", tp.server, m.Subject)
		default:
		}
	}

	t.Run("renewal", func(t *testing.T) { hostileRenewal(t, ctx, f, stolen) })

	t.Run("re-join without removal", func(t *testing.T) {
		stolen2 := f.AgentCredentials("v1")
		taps2 := tapAll(t, nc, stolen2)
		joining := time.Now()
		if _, err := f.Join(ctx, tokenFor(t, ctx, f, "v1"), "v1", protocol.Facts{Hostname: "v1", IPs: []string{"10.0.0.7"}, Arch: "amd64", OS: "linux", AgentVersion: "dev"}); err != nil {
			t.Fatal(err)
		}
		waitClosed(t, taps2, joining, "re-join of v1")
		refusedEverywhere(t, ctx, nc, stolen2, "after the second re-join of v1")
	})

	t.Run("restarted nats-server", func(t *testing.T) {
		victim := nc.Servers[1]
		victim.Restart(t)
		up := time.Now()
		t.Logf("restarted nats-server %s", victim.Name)
		var late []string
		err := poll.Until(ctx, 2*revokeBound, 100*time.Millisecond, func() bool {
			closed := make(chan struct{})
			var once sync.Once
			tried := time.Now()
			conn, err := connectTo(victim.URL, stolen, nats.ClosedHandler(func(*nats.Conn) { once.Do(func() { close(closed) }) }))
			if err != nil {
				t.Logf("%.2fs after the restart: %v", tried.Sub(up).Seconds(), err)
				return authRefused(err)
			}
			// Logged in on the freshly started server: the controller must
			// push the revocations to it and the server close this at once.
			select {
			case <-closed:
				t.Logf("%.2fs after the restart: logged in, closed by the server %.2fs later", tried.Sub(up).Seconds(), time.Since(tried).Seconds())
			case <-time.After(2 * time.Second):
				late = append(late, time.Since(up).Round(time.Millisecond).String())
			}
			conn.Close()
			return false
		})
		if err != nil {
			t.Fatalf("the restarted %s still lets the revoked credentials log in %s after its restart: %v", victim.Name, 2*revokeBound, err)
		}
		if took := time.Since(up); took > revokeBound {
			t.Errorf("the restarted %s refused the revoked credentials only %s after its restart, want within %s", victim.Name, took, revokeBound)
		} else {
			t.Logf("the restarted %s refuses the revoked credentials %.2fs after its restart", victim.Name, took.Seconds())
		}
		if len(late) > 0 {
			t.Errorf("connections of the revoked user on the restarted %s stayed open over 2s (at %v after the restart)", victim.Name, late)
		}
	})
}

// TestHostileExpiredNodeJWT runs node and admin users with a lifetime of a
// few seconds: the agent renews its JWT (same key) and stays online for three
// lifetimes and more, exec (with admin.creds the controller renews) still
// answers, and a copy of the node's first JWT no longer logs in anywhere.
func TestHostileExpiredNodeJWT(t *testing.T) {
	const ttl = 6 * time.Second
	nc := startNATSCluster(t, nil)
	// --join-rate 1 --join-burst 2: renewals get ten times that per source.
	f := controllertest.StartExternal(t, append(append([]string{}, nc.args...), "--nats-user-ttl", ttl.String(), "--nats-admin-ttl", ttl.String(),
		"--join-rate", "1", "--join-burst", "2")...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f.StartAgent("e1")
	f.WaitOnline(60*time.Second, true, "e1")
	// A flood of renewal requests from one address is cut at the burst (20).
	limited := 0
	for range 40 {
		if code, _ := postRenewal(t, ctx, f, protocol.PathNATSNonce, nil); code == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited == 0 {
		t.Errorf("40 renewal requests from one address at once: none refused with 429, want the burst of 20 enforced")
	}
	first := f.AgentCredentials("e1")
	uc, err := jwt.DecodeUserClaims(first.JWT)
	if err != nil {
		t.Fatal(err)
	}
	if life := time.Duration(uc.Expires-uc.IssuedAt) * time.Second; uc.Expires == 0 || life > ttl {
		t.Fatalf("e1's user JWT lives %s (exp %d), want at most %s", life, uc.Expires, ttl)
	}
	admin := adminClaims(t, f)
	if life := time.Duration(admin.Expires-admin.IssuedAt) * time.Second; admin.Expires == 0 || life > ttl {
		t.Fatalf("the admin JWT lives %s (exp %d), want at most %s", life, admin.Expires, ttl)
	}

	// Three lifetimes and more: the agent's credentials file changes at
	// each renewal (about twice a lifetime).
	seen := map[string]bool{first.JWT: true}
	err = poll.Until(ctx, 6*ttl, 200*time.Millisecond, func() bool {
		cr := f.AgentCredentials("e1")
		if cr.NKeySeed != first.NKeySeed {
			t.Fatalf("e1's renewal changed its key")
		}
		seen[cr.JWT] = true
		last, err := jwt.DecodeUserClaims(cr.JWT)
		return err == nil && len(seen) >= 6 && time.Unix(last.IssuedAt, 0).After(time.Unix(uc.Expires, 0).Add(2*ttl))
	})
	if err != nil {
		t.Fatalf("e1 renewed its JWT %d times in %s: %v\nagent log:\n%s", len(seen)-1, 6*ttl, err, f.Agents["e1"].Tail())
	}
	f.WaitOnline(10*time.Second, true, "e1")
	var out, errOut string
	code := -1
	// A renewal reconnects the agent (NATS has no re-login on a live
	// connection), like a network blip: a dispatch in that instant finds no
	// subscriber and exec says so; a second try finds the agent back.
	for try := 0; try < 3 && code != 0; try++ {
		out, errOut, code = f.CLI(ctx, "exec", "--node", "e1", "--", "echo", "still-here")
	}
	if code != 0 || !strings.Contains(out, "still-here") {
		t.Fatalf("exec on e1 after three lifetimes of its first JWT: exit %d\n%s%s", code, out, errOut)
	}
	if a := adminClaims(t, f); a.Subject != admin.Subject || a.IssuedAt <= admin.IssuedAt {
		t.Errorf("admin.creds: key %s issued %d, want the same key %s renewed after %d", a.Subject, a.IssuedAt, admin.Subject, admin.IssuedAt)
	}
	for _, s := range nc.Servers {
		conn, err := connectTo(s.URL, first)
		if err == nil {
			conn.Close()
			t.Errorf("e1's first JWT (expired %s ago) still logs in on %s", time.Since(time.Unix(uc.Expires, 0)).Round(time.Second), s.Name)
		} else if !authRefused(err) {
			t.Errorf("e1's expired JWT on %s: %v, want an authorization refusal", s.Name, err)
		}
	}
	if !strings.Contains(f.Agents["e1"].Output(), "renewed its NATS user JWT") {
		t.Errorf("the agent did not log its renewals")
	}
	if !f.Controller.WaitLog(time.Second, "renewed a node's NATS user JWT", "node=e1", "from=nats") {
		t.Errorf("the connected agent did not renew over NATS")
	}

	// The agent is off until its JWT expired: at its restart it renews over
	// HTTPS (its JWT no longer logs in) and comes back online.
	f.Agents["e1"].Kill()
	off := f.AgentCredentials("e1")
	if err := poll.Until(ctx, 3*ttl, 200*time.Millisecond, func() bool {
		conn, err := connectTo(nc.Servers[0].URL, off)
		if err == nil {
			conn.Close()
		}
		return authRefused(err)
	}); err != nil {
		t.Fatalf("e1's last JWT still logs in %s after the agent stopped: %v", 3*ttl, err)
	}
	p := f.RestartAgent("e1")
	f.WaitOnline(60*time.Second, true, "e1")
	if !p.WaitLog(5*time.Second, "renewed its NATS user JWT") {
		t.Errorf("the restarted agent came online without renewing its expired JWT?\n%s", p.Tail())
	}
	if !f.Controller.WaitLog(time.Second, "renewed a node's NATS user JWT", "node=e1", "from=127.0.0.1:") {
		t.Errorf("the agent with an expired JWT did not renew over HTTPS")
	}
}

// adminClaims decodes the admin user JWT from the controller's admin.creds.
func adminClaims(t *testing.T, f *controllertest.Fleet) *jwt.UserClaims {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(f.ControllerDir(), protocol.AdminCredsFile))
	if err != nil {
		t.Fatal(err)
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(data, &cr); err != nil {
		t.Fatal(err)
	}
	uc, err := jwt.DecodeUserClaims(cr.JWT)
	if err != nil {
		t.Fatalf("admin.creds JWT: %v", err)
	}
	return uc
}

// natsNonce gets a renewal nonce from the controller.
func natsNonce(t *testing.T, ctx context.Context, f *controllertest.Fleet) string {
	t.Helper()
	code, body := postRenewal(t, ctx, f, protocol.PathNATSNonce, nil)
	var n protocol.NATSNonce
	if code != http.StatusOK || json.Unmarshal(body, &n) != nil || n.Nonce == "" {
		t.Fatalf("nonce: HTTP %d %s", code, body)
	}
	return n.Nonce
}

func postRenewal(t *testing.T, ctx context.Context, f *controllertest.Fleet, path string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.HTTPURL()+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := f.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, data
}

// hostileRenewal asks the controller to renew NATS user JWTs the way a thief
// can: the removed node's key (its seed stolen), the current key signed by
// another, a forged nonce, an oversized body. Only the node's own current
// key, signed by it, gets a JWT.
func hostileRenewal(t *testing.T, ctx context.Context, f *controllertest.Fleet, stolen *protocol.Credentials) {
	seedKey := func(cr *protocol.Credentials) (nkeys.KeyPair, string) {
		kp, err := nkeys.FromSeed([]byte(cr.NKeySeed))
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		return kp, pub
	}
	thief, thiefKey := seedKey(stolen)
	owner, ownerKey := seedKey(f.AgentCredentials("v1"))
	if thiefKey == ownerKey {
		t.Fatal("the re-joined v1 has the key it had before its removal")
	}
	for _, tc := range []struct {
		name   string
		key    string
		signer nkeys.KeyPair
		nonce  string // "": a fresh one
		want   int
	}{
		{"the removed key, signed with its stolen seed", thiefKey, thief, "", http.StatusForbidden},
		{"the node's current key, signed by the thief", ownerKey, thief, "", http.StatusForbidden},
		{"a forged nonce", ownerKey, owner, strings.Repeat("A", protocol.NATSNonceLen), http.StatusUnauthorized},
		{"the node's current key, signed by it", ownerKey, owner, "", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nonce := tc.nonce
			if nonce == "" {
				nonce = natsNonce(t, ctx, f)
			}
			sig, err := tc.signer.Sign(protocol.NATSRenewMessage("v1", tc.key, nonce))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := json.Marshal(protocol.NATSRenewRequest{Node: "v1", UserKey: tc.key, Nonce: nonce, Sig: sig})
			code, data := postRenewal(t, ctx, f, protocol.PathNATSRenew, body)
			if code != tc.want {
				t.Fatalf("HTTP %d %s, want %d", code, data, tc.want)
			}
			var rep protocol.NATSRenewReply
			if err := json.Unmarshal(data, &rep); err != nil {
				t.Fatal(err)
			}
			if code != http.StatusOK {
				if rep.JWT != "" {
					t.Errorf("a refusal carries a JWT")
				}
				return
			}
			uc, err := jwt.DecodeUserClaims(rep.JWT)
			if err != nil || uc.Subject != ownerKey || uc.Expires == 0 {
				t.Errorf("renewed JWT: %v %+v, want one for %s with an expiry", err, uc, ownerKey)
			}
		})
	}
	// Over NATS, the node's own connection: another node's renewal is
	// refused, and a flood is cut at the per-node burst.
	conn, err := f.ConnectNode(f.AgentCredentials("v1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	natsNonce := func() protocol.NATSNonce {
		m, err := controllertest.NodeRequest(ctx, conn, "v1", protocol.RequestNATSNonce, nil)
		if err != nil {
			t.Fatalf("nonce over NATS: %v", err)
		}
		var n protocol.NATSNonce
		if err := protocol.Decode(m.Data, &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	n := natsNonce()
	sig, _ := owner.Sign(protocol.NATSRenewMessage("v2", ownerKey, n.Nonce))
	data, _ := protocol.Encode(protocol.NATSRenewRequest{Node: "v2", UserKey: ownerKey, Nonce: n.Nonce, Sig: sig})
	m, err := controllertest.NodeRequest(ctx, conn, "v1", protocol.RequestNATSRenew, data)
	if err != nil {
		t.Fatal(err)
	}
	var rep protocol.NATSRenewReply
	if err := protocol.Decode(m.Data, &rep); err != nil || rep.Status != http.StatusForbidden || rep.JWT != "" {
		t.Errorf("v1 renewing v2's user over NATS: %+v %v, want 403", rep, err)
	}
	limited := false
	for range 20 {
		if natsNonce().Status == http.StatusTooManyRequests {
			limited = true
			break
		}
	}
	if !limited {
		t.Errorf("20 renewal requests over NATS at once: none refused, want the per-node burst enforced")
	}
	code, _ := postRenewal(t, ctx, f, protocol.PathNATSRenew, bytes.Repeat([]byte(" "), protocol.MaxNATSRenewBytes+1))
	if code != http.StatusRequestEntityTooLarge {
		t.Errorf("a renewal request of %d bytes: HTTP %d, want 413", protocol.MaxNATSRenewBytes+1, code)
	}
	if !f.Controller.WaitLog(5*time.Second, "NATS user renewal refused", "node=v1") {
		t.Errorf("refused renewals are not logged naming the node")
	}
}
