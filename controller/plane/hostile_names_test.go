package plane_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Issue 23, finding 10: a node named by its FQDN (what os.Hostname gives on
// many real machines) could never join: the name passed validation, the
// inventory's KV key did not, and the join answered 500 after it had counted
// a use of the token, so typos and retries used up a `--uses N` token.

// tokenUses returns how often the token id was used, from `token list`.
func tokenUses(t *testing.T, f *controllertest.Fleet, id string) int {
	t.Helper()
	out, errOut, code := f.CLI(context.Background(), "token", "list", "-o", "json")
	var list []protocol.TokenInfo
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
		t.Fatalf("token list: exit %d %s %s", code, out, errOut)
	}
	for _, ti := range list {
		if ti.ID == id {
			return ti.Uses
		}
	}
	t.Fatalf("token %s not listed: %s", id, out)
	return 0
}

// TestHostileFQDNJoin: a real agent named web1.example.com joins, comes
// online and runs a command (its subjects carry the name as one token); names
// a KV key or a host name cannot be are refused at validation, before the
// token is touched, with a message naming the rule; the token counts one use.
func TestHostileFQDNJoin(t *testing.T) {
	skipShort(t)
	ctx := context.Background()
	f := controllertest.Start(t)
	ti := createToken(t, f, "--ttl", "1h", "--uses", "2")
	const fqdn = "web1.example.com"
	f.StartAgent(fqdn, "--token", ti.Token)
	f.WaitOnline(30*time.Second, true, fqdn)
	out, errOut, code := f.CLI(ctx, "exec", "--node", fqdn, "--", "echo", "fqdn-ok")
	if code != 0 || !strings.Contains(out, fqdn+" | fqdn-ok") {
		t.Fatalf("exec on %s: exit %d\n%s\n%s", fqdn, code, out, errOut)
	}
	if n := tokenUses(t, f, ti.ID); n != 1 {
		t.Errorf("token used %d times after one join, want 1", n)
	}
	for _, name := range []string{"web2..example.com", "web2.example.com.", ".web2", "web2.example~com"} {
		code, body, err := f.PostJoin(ctx, protocol.JoinRequest{Token: ti.Token, Name: name, Facts: honestFacts()})
		if err != nil {
			t.Fatal(err)
		}
		if code != http.StatusBadRequest || !strings.Contains(string(body), "node name") {
			t.Errorf("join as %q: HTTP %d %s, want 400 naming the node name rule", name, code, body)
		}
		if !f.Controller.WaitLog(5*time.Second, "join refused: invalid report", "field=name") {
			t.Errorf("join as %q: refusal not logged", name)
		}
	}
	if n := tokenUses(t, f, ti.ID); n != 1 {
		t.Errorf("token used %d times after one join and refused names, want 1", n)
	}
	// The token's second use is still there for a real second node.
	if _, err := f.Join(ctx, ti.Token, "web2.example.com", honestFacts()); err != nil {
		t.Errorf("second FQDN join with the --uses 2 token: %v", err)
	}
}
