package plane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/syncbuf"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

// Issue 23, finding 5: every node's registrations go through one
// subscription. One node flooding it delayed another node's registration by
// seconds and wrote a KV revision and a log line per message. Real
// controller (in this process, its log captured), real NATS, nodes joined
// over HTTPS and connected with their own credentials.

// startLoggedController runs a controller whose log (debug and up) the test reads.
func startLoggedController(t *testing.T) (*Controller, *syncbuf.Buffer) {
	t.Helper()
	var logs syncbuf.Buffer
	c, err := New(Options{DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Advertise: "127.0.0.1",
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, &logs
}

// joinAndConnect joins name with token over HTTPS and connects to NATS with
// the credentials it got, as that node's agent does.
func joinAndConnect(t *testing.T, c *Controller, token, name string, facts protocol.Facts) *nats.Conn {
	t.Helper()
	code, body := postJoin(t, c, protocol.JoinRequest{Token: token, Name: name, Facts: facts})
	if code != http.StatusOK {
		t.Fatalf("join %s: HTTP %d %s", name, code, body)
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(body, &cr); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cr.CAPEM)
	nc, err := nats.Connect(c.NATSURL(), nats.UserInfo(cr.User, cr.Password), nats.Secure(&tls.Config{RootCAs: pool}),
		nats.CustomInboxPrefix(protocol.InboxPrefix(name)), nats.NoReconnect(), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatalf("connect as %s: %v", name, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// nodeWrites is how many values the inventory's bucket has stored so far.
func nodeWrites(t *testing.T, c *Controller) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.js.Stream(ctx, "KV_"+NodesBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

func linesWith(logs *syncbuf.Buffer, parts ...string) int {
	n := 0
	for line := range strings.Lines(logs.String()) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

func registration(name, hostname string) []byte {
	data, _ := protocol.Encode(protocol.Register{Name: name, HeartbeatInterval: time.Second,
		Facts: protocol.Facts{Hostname: hostname, Arch: "amd64", OS: "linux", IPs: []string{"10.0.0.7"}}})
	return data
}

// TestHostileRegistrationFlood: one node sends 20,000 registrations as fast
// as NATS takes them, alternating between two reports so that each one would
// change its record. Another node's registration is still answered within
// 2 s, the flooder's record is written a bounded number of times, the log
// holds a bounded number of lines about it (one of them naming the flood),
// and registrations identical to the stored record write and log nothing.
func TestHostileRegistrationFlood(t *testing.T) {
	c, logs := startLoggedController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tok, err := c.tokens.create(ctx, protocol.TokenCreate{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	flooder := joinAndConnect(t, c, tok.Token, "flooder", protocol.Facts{})
	honest := joinAndConnect(t, c, tok.Token, "honest.example.com", protocol.Facts{})
	register := func(nc *nats.Conn, name string, data []byte) (protocol.RegisterReply, time.Duration) {
		t.Helper()
		start := time.Now()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		m, err := nc.RequestWithContext(rctx, protocol.RegisterSubject(name), data)
		if err != nil {
			t.Fatalf("registration of %s: %v", name, err)
		}
		var r protocol.RegisterReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatal(err)
		}
		return r, time.Since(start)
	}
	if r, _ := register(honest, "honest.example.com", registration("honest.example.com", "h")); !r.OK {
		t.Fatalf("honest registration: %+v", r)
	}

	t.Run("identical registrations are coalesced", func(t *testing.T) {
		writes, lines := nodeWrites(t, c), linesWith(logs, "honest.example.com")
		for range 5 {
			if r, _ := register(honest, "honest.example.com", registration("honest.example.com", "h")); !r.OK {
				t.Fatalf("identical registration refused: %+v", r)
			}
		}
		if w := nodeWrites(t, c) - writes; w != 0 {
			t.Errorf("5 registrations identical to the stored record wrote %d KV values, want 0", w)
		}
		if l := linesWith(logs, "honest.example.com") - lines; l != 0 {
			t.Errorf("5 registrations identical to the stored record logged %d lines, want 0:\n%s", l, lastLines(logs.String(), 5))
		}
	})

	const flood = 20000
	var answered atomic.Int64
	inbox := protocol.InboxPrefix("flooder") + ".flood"
	sub, err := flooder.Subscribe(inbox, func(*nats.Msg) { answered.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	writes := nodeWrites(t, c)
	variants := [][]byte{registration("flooder", "f-a"), registration("flooder", "f-b")}
	start := time.Now()
	for i := range flood {
		if err := flooder.PublishRequest(protocol.RegisterSubject("flooder"), inbox, variants[i%2]); err != nil {
			t.Fatalf("flood message %d: %v", i, err)
		}
	}
	if err := flooder.FlushWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d registrations published in %s", flood, time.Since(start).Round(time.Millisecond))

	// The honest registration queues behind every flooded one (the server has
	// them all, and the controller reads one subscription in order): once it
	// is answered, the controller has handled the whole flood.
	r, took := register(honest, "honest.example.com", registration("honest.example.com", "h2"))
	elapsed := time.Since(start)
	t.Logf("the honest node's registration behind the flood took %s; the flooder got %d answers", took.Round(time.Millisecond), answered.Load())
	if !r.OK {
		t.Errorf("honest registration during the flood: %+v", r)
	}
	if took > 2*time.Second {
		t.Errorf("the honest node's registration took %s behind the flood, want at most 2s", took)
	}
	// The honest node's changed registration is one write; the flooder's get
	// the burst and the rate over the flood's time, and not one more.
	bound := 1 + DefaultNodeRegisterBurst + int(elapsed.Seconds()*DefaultNodeRegisterRate) + 1
	if w := nodeWrites(t, c) - writes; w > uint64(bound) {
		t.Errorf("%d flooded registrations wrote %d KV values in %s, want at most %d", flood, w, elapsed.Round(time.Millisecond), bound)
	}
	if l := linesWith(logs, "node=flooder"); l > 2*bound+5 {
		t.Errorf("%d log lines about the flooder, want at most %d", l, 2*bound+5)
	}
	if linesWith(logs, "node=flooder", "registers faster than its limit") != 1 {
		t.Errorf("the flood is not logged once naming the node:\n%s", lastLines(logs.String(), 20))
	}
	if n := answered.Load(); n > int64(bound) {
		t.Errorf("the controller answered %d flooded registrations, want at most %d", n, bound)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
