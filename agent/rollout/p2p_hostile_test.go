package rollout_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
	"github.com/flotilla-dev/flotilla/p2p/tracker"
	"github.com/flotilla-dev/flotilla/protocol"
)

// hostileClient is an HTTPS client with node's real peer certificate: what a
// compromised agent holds. It trusts the cluster CA for the controller and
// takes any server (an attacker does not care who answers).
func (e *p2pEnv) hostileClient(cert tls.Certificate) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}}}
}

func do(t *testing.T, cl *http.Client, method, url string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	resp, err := cl.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// TestHostileTrackerAnnounce: a node with its own valid peer certificate
// tries to announce for another node (and for the seed) through the
// controller's real tracker over mTLS, smuggling the other name past the
// self-announce check in trailing data, a second object, a duplicate key, a
// key in another letter case or an unknown field. Nothing is recorded for
// the victim, and each refusal is logged naming the sender.
func TestHostileTrackerAnnounce(t *testing.T) {
	e := newP2PEnv(t, 300<<10)
	e.peerCert("n1") // the victim, a node of the inventory
	evil := e.hostileClient(e.peerCert("evil"))
	const evilAddr = "https://127.0.0.1:6666"
	d := e.list.Digest.String()
	obj := func(id string) string {
		return `{"peer":{"id":"` + id + `","addr":"` + evilAddr + `"},"digest":"` + d + `","have":"/w==","complete":true}`
	}
	url := e.c.HTTPURL() + "/v1/tracker/announce"
	for _, tc := range []struct{ name, body string }{
		{"the victim's name", obj("n1")},
		{"the seed's name", obj(tracker.SeedID)},
		{"trailing data after the victim's announcement", obj("n1") + "x"},
		{"the victim's announcement after its own", obj("evil") + obj("n1")},
		{"the victim's peer as a duplicate key", `{"peer":{"id":"evil","addr":"` + evilAddr + `"},"peer":{"id":"n1","addr":"` + evilAddr + `"},"digest":"` + d + `"}`},
		{"the victim's peer in another letter case", `{"peer":{"id":"evil","addr":"` + evilAddr + `"},"Peer":{"id":"n1","addr":"` + evilAddr + `"},"digest":"` + d + `"}`},
		{"the victim's id in another letter case", `{"peer":{"id":"evil","ID":"n1","addr":"` + evilAddr + `"},"digest":"` + d + `"}`},
		{"an unknown field", `{"peer":{"id":"evil","addr":"` + evilAddr + `"},"digest":"` + d + `","onBehalfOf":"n1"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := do(t, evil, "POST", url, []byte(tc.body))
			if code != http.StatusBadRequest && code != http.StatusForbidden {
				t.Fatalf("announce: %d %s, want 400 or 403", code, msg)
			}
		})
	}
	for _, p := range e.tr.Peers(e.list.Digest) {
		if p.Addr == evilAddr || p.ID == "n1" {
			t.Fatalf("the tracker recorded %+v from the hostile node", p)
		}
	}
	if !e.logs.has("refused", "node=evil") {
		t.Fatalf("no refusal naming node evil was logged:\n%s", e.logs.buf.String())
	}
	// The same client may announce itself: the refusals were for the smuggling.
	if code, msg := do(t, evil, "POST", url, []byte(obj("evil"))); code != http.StatusNoContent {
		t.Fatalf("a node announcing itself: %d %s", code, msg)
	}
}

// TestHostileRemovedPeer: a node removed from the inventory keeps a peer
// certificate that is still within its validity; with it, it no longer
// reaches the tracker or the seed, other agents stop serving it pieces, it
// is no longer anyone's peer, and it cannot renew the certificate.
func TestHostileRemovedPeer(t *testing.T) {
	e := newP2PEnv(t, 2<<20)
	n1 := e.startAgent("n1", "")
	e.dispatch("n1", e.payload).wait(t, "n1")
	goneCert := e.peerCert("gone")
	if left := time.Until(goneCert.Leaf.NotAfter); left > 25*time.Hour {
		t.Errorf("a peer certificate is valid for %v more: want a day at most", left)
	}
	gone := e.hostileClient(goneCert)
	d := e.list.Digest.String()
	announce := []byte(`{"peer":{"id":"gone","addr":"https://127.0.0.1:6667"},"digest":"` + d + `","have":"AA=="}`)
	urls := map[string]string{
		"tracker peers": e.c.HTTPURL() + "/v1/tracker/peers/" + d,
		"seed piece":    e.c.HTTPURL() + "/v1/pieces/" + d + "/0",
		"n1's piece":    n1.peer().URL() + "/v1/pieces/" + d + "/0",
	}
	// While a member, it gets everything (the test would prove nothing otherwise).
	if code, msg := do(t, gone, "POST", e.c.HTTPURL()+"/v1/tracker/announce", announce); code != http.StatusNoContent {
		t.Fatalf("announce as a member: %d %s", code, msg)
	}
	for what, u := range urls {
		if code, msg := do(t, gone, "GET", u, nil); code != http.StatusOK {
			t.Fatalf("%s as a member: %d %.200s", what, code, msg)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.c.RemoveNode(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	if code, _ := do(t, gone, "POST", e.c.HTTPURL()+"/v1/tracker/announce", announce); code != http.StatusForbidden {
		t.Errorf("announce after removal: %d, want 403", code)
	}
	for _, what := range []string{"tracker peers", "seed piece"} {
		if code, _ := do(t, gone, "GET", urls[what], nil); code != http.StatusForbidden {
			t.Errorf("%s after removal: %d, want 403", what, code)
		}
	}
	// Other agents learn it from the tracker within seconds.
	waitFor(t, 10*time.Second, "n1 refusing the removed node", func() bool {
		code, _ := do(t, gone, "GET", urls["n1's piece"], nil)
		return code == http.StatusForbidden
	})
	t.Logf("n1 refused the removed node %v after its removal", time.Since(removed).Round(time.Millisecond))
	// It is no longer anyone's peer, though its announcement has not expired.
	code, body := do(t, e.hostileClient(e.peerCert("n2")), "GET", urls["tracker peers"], nil)
	var pr tracker.PeersResponse
	if code != http.StatusOK || json.Unmarshal([]byte(body), &pr) != nil {
		t.Fatalf("peers as n2: %d %s", code, body)
	}
	for _, p := range pr.Peers {
		if p.ID == "gone" {
			t.Fatalf("the tracker still lists the removed node: %+v", pr.Peers)
		}
	}
	// Nor does it get a fresh certificate.
	data, _ := protocol.Encode(protocol.PeerCertRequest{CSR: []byte("-")})
	m, err := controllertest.NodeRequest(ctx, e.c.Conn(), "gone", protocol.RequestPeerCert, data)
	if err != nil {
		t.Fatal(err)
	}
	var rep protocol.PeerCertReply
	if protocol.Decode(m.Data, &rep) != nil || !strings.Contains(rep.Error, "inventory") {
		t.Errorf("renewal for the removed node: %+v, want a refusal", rep)
	}
	for _, want := range [][]string{
		{"agent endpoint refused", "node=gone"},
		{"refused a piece request", "node=gone"},
	} {
		if !e.logs.has(want...) {
			t.Errorf("no log line with %q:\n%s", want, e.logs.buf.String())
		}
	}
}

// junkServer is a hostile node's HTTPS server with its real peer
// certificate: it claims to be the tracker (listing itself as the seed and
// as a peer) and to hold every piece, and serves random bytes.
type junkServer struct {
	srv      *httptest.Server
	requests atomic.Int64
}

func (e *p2pEnv) startJunkServer(cert tls.Certificate, asPeer string) *junkServer {
	js := &junkServer{}
	js.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		js.requests.Add(1)
		switch {
		case strings.HasPrefix(r.URL.Path, "/v1/tracker/announce"):
			w.WriteHeader(http.StatusNoContent)
		case strings.HasPrefix(r.URL.Path, "/v1/tracker/peers/"):
			full := pieces.FullBitfield(e.list.Count())
			json.NewEncoder(w).Encode(tracker.PeersResponse{Peers: []pieces.PeerState{
				{Peer: pieces.Peer{ID: tracker.SeedID, Addr: js.srv.URL}, Have: full, Complete: true},
				{Peer: pieces.Peer{ID: asPeer, Addr: js.srv.URL}, Have: full, Complete: true},
			}})
		default:
			parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v1/pieces/"), "/")
			if len(parts) != 2 {
				w.Write(pieces.FullBitfield(e.list.Count()))
				return
			}
			i, _ := strconv.Atoi(parts[1])
			junk := bytes.Repeat([]byte{0xee}, int(e.list.Len(i)))
			w.Header().Set("Content-Length", strconv.Itoa(len(junk)))
			w.Write(junk)
		}
	}))
	js.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	js.srv.StartTLS()
	e.t.Cleanup(js.srv.Close)
	return js
}

// TestHostileFakeTracker: a node uses its own valid peer certificate to pose
// as the tracker (the controller's address, taken over) and as another
// node's piece server. An agent refuses the fake tracker before sending it
// anything, and drops a piece server whose certificate is not the node the
// real tracker named, before reading a byte from it.
func TestHostileFakeTracker(t *testing.T) {
	e := newP2PEnv(t, 2<<20)
	evilCert := e.peerCert("evil")

	t.Run("an agent certificate as the tracker", func(t *testing.T) {
		fake := e.startJunkServer(evilCert, "n9")
		a := e.startAgentWith("n1", "", func(o *agent.Options) {
			o.Credentials.HTTPURL = fake.srv.URL // the tracker's address now answers with evil's certificate
		})
		e.dispatch("n1", e.payload).wait(t, "n1")
		e.checkPlaced(a)
		if n := fake.requests.Load(); n != 0 {
			t.Fatalf("the fake tracker got %d requests: the agent talked to it", n)
		}
		if e.urlHits.Load() == 0 {
			t.Fatal("the layer did not come from the controller's URL: where did it come from?")
		}
		if !e.logs.has("refusing the tracker", "evil.peer.flotilla.invalid") {
			t.Fatalf("no refusal of the fake tracker naming its certificate was logged:\n%s", e.logs.buf.String())
		}
	})

	t.Run("an agent certificate as another node's piece server", func(t *testing.T) {
		fake := e.startJunkServer(evilCert, "n2")
		e.peerCert("n2") // n2 is a node of the inventory
		// n2's address as the tracker knows it now answers with evil's certificate.
		if err := e.tr.Announce(pieces.Announcement{Peer: pieces.Peer{ID: "n2", Addr: fake.srv.URL}, Digest: e.list.Digest,
			Have: pieces.FullBitfield(e.list.Count()), Complete: true}); err != nil {
			t.Fatal(err)
		}
		a := e.startAgent("n3", "")
		before := e.urlHits.Load()
		e.dispatch("n3", e.payload).wait(t, "n3")
		e.checkPlaced(a)
		if e.urlHits.Load() != before {
			t.Error("fell back to the controller URL; want the pieces from the seed")
		}
		if !e.logs.has("dropped peer", "peer=n2", "node evil") {
			t.Fatalf("no log dropping the impostor of n2:\n%s", e.logs.buf.String())
		}
		t.Logf("the impostor got %d requests before it was dropped (none of its bytes read)", fake.requests.Load())
	})
}

// TestHostileTrackerForeignAddress: a node with its own valid peer
// certificate announces itself at addresses that are not its own (the cloud
// metadata service, another host, loopback of another kind, a host name,
// multicast, unspecified) through the controller's real tracker, to send
// other agents there. Every one is refused (403), nothing is recorded, and
// the refusal is logged naming the node and the address. Its own address
// (the one it connects from) is accepted.
func TestHostileTrackerForeignAddress(t *testing.T) {
	e := newP2PEnv(t, 300<<10)
	evil := e.hostileClient(e.peerCert("evil"))
	d := e.list.Digest.String()
	url := e.c.HTTPURL() + "/v1/tracker/announce"
	body := func(addr string) []byte {
		return []byte(`{"peer":{"id":"evil","addr":"` + addr + `"},"digest":"` + d + `","have":"/w==","complete":true}`)
	}
	foreign := []string{
		"https://169.254.169.254:443",          // the cloud metadata service
		"https://10.1.2.3:9444",                // another host
		"https://[::1]:9444",                   // loopback, but not the one it connects from
		"https://metadata.google.internal:443", // a host name
		"https://224.0.0.1:9444",               // multicast
		"https://0.0.0.0:9444",                 // unspecified
		"https://[fe80::1%25lo]:9444",          // link-local with a zone
	}
	for _, addr := range foreign {
		t.Run(addr, func(t *testing.T) {
			if code, msg := do(t, evil, "POST", url, body(addr)); code != http.StatusForbidden {
				t.Fatalf("announce at %s: %d %s, want 403", addr, code, msg)
			}
		})
	}
	for _, p := range e.tr.Peers(e.list.Digest) {
		if p.ID == "evil" {
			t.Fatalf("the tracker recorded the hostile node at %s", p.Addr)
		}
	}
	if !e.logs.has("refused an announced address", "node=evil", "169.254.169.254") {
		t.Fatalf("no refusal naming node evil and the metadata address was logged:\n%s", e.logs.buf.String())
	}
	// Its own address, the one it connects from, is fine.
	if code, msg := do(t, evil, "POST", url, body("https://127.0.0.1:6666")); code != http.StatusNoContent {
		t.Fatalf("announcing its own address: %d %s", code, msg)
	}
}

// liarServer is a hostile node's piece server with its real peer
// certificate: it answers every piece request 404, whatever its node
// announced.
type liarServer struct {
	srv      *httptest.Server
	requests atomic.Int64
}

func (e *p2pEnv) startLiarServer(cert tls.Certificate) *liarServer {
	ls := &liarServer{}
	ls.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ls.requests.Add(1)
		http.NotFound(w, r)
	}))
	ls.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ls.srv.StartTLS()
	e.t.Cleanup(ls.srv.Close)
	return ls
}

// TestHostileLyingPeer: a node announces, at its own address, that it holds
// the whole blob, and serves none of it; it announces again as soon as it
// disappears from the tracker. Real agents fetching the layer ask it first
// (it is upstream in their pipeline), get 404, and report it to the
// controller's tracker: the first report drops its record, the second
// (another agent) refuses its announcements of that blob. Both agents still
// get the layer, and the refusal is logged naming the liar and its reporters.
func TestHostileLyingPeer(t *testing.T) {
	e := newP2PEnv(t, 2<<20)
	evilCert := e.peerCert("evil")
	liar := e.startLiarServer(evilCert)
	evil := e.hostileClient(evilCert)
	lie := []byte(`{"peer":{"id":"evil","addr":"` + liar.srv.URL + `"},"digest":"` + e.list.Digest.String() + `","have":"` +
		base64.StdEncoding.EncodeToString(pieces.FullBitfield(e.list.Count())) + `","complete":true}`)
	announce := func() int {
		code, _ := do(t, evil, "POST", e.c.HTTPURL()+"/v1/tracker/announce", lie)
		return code
	}
	listed := func() bool {
		for _, p := range e.tr.Peers(e.list.Digest) {
			if p.ID == "evil" {
				return true
			}
		}
		return false
	}
	// The liar keeps announcing, as a hostile node would.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var lastCode atomic.Int64
	go func() {
		for ctx.Err() == nil {
			lastCode.Store(int64(announce()))
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	waitFor(t, 10*time.Second, "the liar listed by the tracker", listed)

	for _, name := range []string{"n1", "n2"} {
		// Each agent comes after the liar in the blob's order: the liar is its upstream.
		waitFor(t, 10*time.Second, "the liar listed again before "+name, listed)
		a := e.startAgent(name, "")
		e.dispatch(name, e.payload).wait(t, name)
		e.checkPlaced(a)
	}
	if liar.requests.Load() == 0 {
		t.Fatal("no agent asked the liar for a piece: the test proves nothing")
	}
	waitFor(t, 10*time.Second, "the liar's announcements refused", func() bool { return lastCode.Load() == http.StatusForbidden })
	if listed() {
		t.Fatalf("the tracker still lists the liar: %+v", e.tr.Peers(e.list.Digest))
	}
	code, body := do(t, e.hostileClient(e.peerCert("n3")), "GET", e.c.HTTPURL()+"/v1/tracker/peers/"+e.list.Digest.String(), nil)
	if code != http.StatusOK || strings.Contains(body, `"evil"`) {
		t.Fatalf("peers as n3: %d %s, want a list without the liar", code, body)
	}
	if !e.logs.has("refusing a peer's announcements", "peer=evil", "reporters=n1,n2") {
		t.Fatalf("no log of the liar's refusal naming it and its reporters:\n%s", e.logs.buf.String())
	}
	t.Logf("the liar got %d piece requests before it was refused", liar.requests.Load())
}
