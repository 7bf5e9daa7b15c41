package plane

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go/jetstream"
)

// Issue 23, finding 10: a token's use is counted only for a join that
// admitted the node. Real controller (in this process), real NATS and
// JetStream, real HTTPS joins on loopback.

func tokenUsesOf(t *testing.T, c *Controller, id string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, _, err := c.tokens.get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return rec.Uses
}

// TestHostileJoinFailureGivesTheUseBack: a join whose token checked out but
// whose admission failed (here: the inventory's KV bucket is gone, as when
// JetStream is unavailable) answers 5xx and leaves the token's uses as they
// were; a `--uses 1` token then still admits one node, and only one.
func TestHostileJoinFailureGivesTheUseBack(t *testing.T) {
	c := startPeerCertController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := c.tokens.create(ctx, protocol.TokenCreate{TTL: time.Hour, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.js.DeleteKeyValue(ctx, NodesBucket); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"n1", "n1", "n2"} {
		code, body := postJoin(t, c, protocol.JoinRequest{Token: tok.Token, Name: name})
		if code < 500 {
			t.Fatalf("join %s without an inventory bucket: HTTP %d %s, want a 5xx", name, code, body)
		}
		if n := tokenUsesOf(t, c, tok.ID); n != 0 {
			t.Fatalf("a failed join of %s counted a use of the token: %d of 1 used", name, n)
		}
	}
	if _, ok := c.inv.get("n1"); ok {
		t.Fatal("a failed join left n1 in the inventory")
	}
	if _, err := c.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: NodesBucket, History: 1, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	if code, body := postJoin(t, c, protocol.JoinRequest{Token: tok.Token, Name: "n1"}); code != http.StatusOK {
		t.Fatalf("join with the --uses 1 token after the failures: HTTP %d %s", code, body)
	}
	if code, body := postJoin(t, c, protocol.JoinRequest{Token: tok.Token, Name: "n3"}); code != http.StatusForbidden {
		t.Fatalf("second join with a --uses 1 token: HTTP %d %s, want 403", code, body)
	}
	if n := tokenUsesOf(t, c, tok.ID); n != 1 {
		t.Fatalf("token used %d times, want 1", n)
	}
}

// TestHostileConcurrentJoinsOneUse: eight joins under different names race
// with one `--uses 1` token; exactly one node is admitted.
func TestHostileConcurrentJoinsOneUse(t *testing.T) {
	c := startPeerCertController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := c.tokens.create(ctx, protocol.TokenCreate{TTL: time.Hour, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"r0", "r1", "r2.example.com", "r3", "r4", "r5.example.com", "r6", "r7"}
	codes := make([]int, len(names))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, name := range names {
		wg.Go(func() {
			<-start
			codes[i], _ = postJoin(t, c, protocol.JoinRequest{Token: tok.Token, Name: name})
		})
	}
	close(start)
	wg.Wait()
	admitted := 0
	for i, code := range codes {
		switch code {
		case http.StatusOK:
			admitted++
		case http.StatusForbidden:
		default:
			t.Errorf("join %s: HTTP %d, want 200 or 403", names[i], code)
		}
	}
	if admitted != 1 || len(c.inv.list()) != 1 {
		t.Fatalf("%d joins answered 200 and %d nodes are in the inventory, want 1 and 1 (codes %v)", admitted, len(c.inv.list()), codes)
	}
	if n := tokenUsesOf(t, c, tok.ID); n != 1 {
		t.Fatalf("token used %d times, want 1", n)
	}
}
