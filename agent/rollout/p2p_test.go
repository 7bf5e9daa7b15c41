package rollout_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/rollout"
	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
	"github.com/flotilla-dev/flotilla/p2p/pieces/piecestest"
	"github.com/flotilla-dev/flotilla/p2p/tracker"
	"github.com/flotilla-dev/flotilla/protocol"
)

// p2pEnv is a controller in this process with the tracker and the seed on
// its HTTPS server (behind the agents-only client-certificate check, as in
// `flotilla controller`), one layer seeded, and real agents on loopback,
// each with its own piece server, that run layer steps the controller
// dispatches: the layer executor, the agent's peer server and mTLS are the
// real ones.
type p2pEnv struct {
	t        *testing.T
	dataDir  string // the controller's
	c        *plane.Controller
	tr       *tracker.Tracker
	seed     *tracker.Seed
	content  []byte // the file inside the layer
	blob     []byte // the layer (a tar)
	list     pieces.PieceList
	payload  protocol.LayerPayload
	seedHits atomic.Int64 // piece requests the seed answered
	urlHits  atomic.Int64 // whole-blob fetches from the controller (the fallback)
	logs     logBuffer    // what the controller, the seed and the agents logged
}

// logBuffer keeps log lines for tests that assert a refusal was logged.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if os.Getenv("FLOTILLA_TEST_LOG") != "" {
		os.Stderr.Write(p)
	}
	return b.buf.Write(p)
}

// has says whether one logged line holds every one of parts.
func (b *logBuffer) has(parts ...string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, line := range strings.Split(b.buf.String(), "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return true
		}
	}
	return false
}

// log writes Info and above to e.logs.
func (e *p2pEnv) log() *slog.Logger {
	return slog.New(slog.NewTextHandler(&e.logs, nil))
}

func quiet() *slog.Logger {
	if os.Getenv("FLOTILLA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newP2PEnv(t *testing.T, size int) *p2pEnv {
	t.Helper()
	e := &p2pEnv{t: t, tr: tracker.New(time.Minute)}
	var err error
	if e.seed, err = tracker.NewSeed(t.TempDir(), e.tr, e.log()); err != nil {
		t.Fatal(err)
	}
	handlers := map[string]http.Handler{
		// What the controller's fallback URL would serve; counted, never used here.
		"GET /v1/blobs/{digest}": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			e.urlHits.Add(1)
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(e.blob))
		}),
	}
	agentHandlers := map[string]http.Handler{}
	acc := tracker.Access{Identify: plane.AgentFromRequest, Member: func(n string) bool { return e.c.IsMember(n) }, Log: e.log()}
	for p, h := range e.seed.Handlers(acc) {
		if p == "/v1/pieces/" {
			inner := h
			h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.Count(r.URL.Path, "/") == 4 {
					e.seedHits.Add(1)
				}
				inner.ServeHTTP(w, r)
			})
		}
		agentHandlers[p] = h
	}
	e.dataDir = t.TempDir()
	e.c, err = plane.New(plane.Options{DataDir: e.dataDir, Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Advertise: "127.0.0.1", Logger: e.log(), Handlers: handlers, AgentHandlers: agentHandlers})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.c.Close() })
	e.seed.SetAddr(e.c.HTTPURL())

	e.content = make([]byte, size)
	rand.Read(e.content)
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "data/blob.bin", Mode: 0o644, Size: int64(size), Typeflag: tar.TypeReg})
	tw.Write(e.content)
	tw.Close()
	e.blob = tb.Bytes()
	sum := sha256.Sum256(e.blob)
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	path := filepath.Join(t.TempDir(), "layer.tar")
	if err := os.WriteFile(path, e.blob, 0o644); err != nil {
		t.Fatal(err)
	}
	if e.list, err = e.seed.Add(ctx, d, path); err != nil {
		t.Fatal(err)
	}
	lj, _ := json.Marshal(e.list)
	e.payload = protocol.LayerPayload{Cluster: "demo", Digest: d.String(), Size: int64(len(e.blob)),
		URL: e.c.HTTPURL() + "/v1/blobs/" + d.String(), Token: "unused", Pieces: lj}
	return e
}

type testAgent struct {
	name, dataDir, root string
	agent               *agent.Agent
	cancel              context.CancelFunc
	done                chan struct{}
}

// peer is the agent's running peer (nil when it has none).
func (ta *testAgent) peer() *agent.Peer { return ta.agent.Peer() }

// startAgent runs an agent in this process with its own piece server on
// loopback, and waits until it serves.
func (e *p2pEnv) startAgent(name string, dataDir string) *testAgent {
	e.t.Helper()
	return e.startAgentWith(name, dataDir, nil)
}

// startAgentWith is startAgent with a last word on the agent's options.
func (e *p2pEnv) startAgentWith(name string, dataDir string, mod func(*agent.Options)) *testAgent {
	t := e.t
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	ta := &testAgent{name: name, dataDir: dataDir, root: filepath.Join(dataDir, "root"), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	ta.cancel = cancel
	opts := agent.Options{Name: name, DataDir: dataDir, Root: ta.root, HeartbeatInterval: time.Second,
		Logger: e.log().With("node", name), PeerListen: "127.0.0.1:0", Executors: rollout.Executors(rollout.Options{})}
	if _, err := os.Stat(filepath.Join(dataDir, "credentials.json")); err != nil {
		// Credentials without a join: the agent asks for its peer certificate over NATS.
		if opts.Credentials, err = e.c.LocalAgentCredentials(ctx, name, protocol.Facts{}); err != nil {
			t.Fatal(err)
		}
	}
	if mod != nil {
		mod(&opts)
	}
	a, err := agent.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	ta.agent = a
	go func() { defer close(ta.done); a.Run(ctx) }()
	t.Cleanup(ta.stop)
	waitFor(t, 15*time.Second, name+" serving pieces and registered with its PeerURL", func() bool {
		p := a.Peer()
		n, ok := e.c.Node(name)
		return p != nil && p.URL() != "" && ok && n.Online && n.PeerURL == p.URL()
	})
	return ta
}

func (ta *testAgent) stop() {
	ta.cancel()
	select {
	case <-ta.done:
	case <-time.After(15 * time.Second):
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	if err := poll.Until(context.Background(), d, 20*time.Millisecond, ok); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// layerRun is one dispatched layer step.
type layerRun struct {
	run      *plane.TaskRun
	mu       sync.Mutex
	progress []protocol.Progress
	lines    []string
}

func (e *p2pEnv) dispatch(node string, p protocol.LayerPayload) *layerRun {
	e.t.Helper()
	payload, _ := json.Marshal(p)
	lr := &layerRun{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	run, err := e.c.Dispatch(ctx, &protocol.Task{Node: node, Cluster: p.Cluster, Steps: []protocol.Step{
		{Name: "layer " + p.Digest[:19], Kind: protocol.KindLayer, Payload: payload, Timeout: time.Minute},
	}}, func(ev protocol.Event) {
		lr.mu.Lock()
		defer lr.mu.Unlock()
		if ev.Progress != nil {
			lr.progress = append(lr.progress, *ev.Progress)
		}
		if ev.Line != "" {
			lr.lines = append(lr.lines, ev.Stream+": "+ev.Line)
		}
	})
	if err != nil {
		e.t.Fatalf("dispatch to %s: %v", node, err)
	}
	lr.run = run
	return lr
}

func (lr *layerRun) wait(t *testing.T, node string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := lr.run.Wait(ctx)
	lr.mu.Lock()
	defer lr.mu.Unlock()
	if err != nil || !res.OK {
		t.Fatalf("layer step on %s: %v %+v\n%s", node, err, res, strings.Join(lr.lines, "\n"))
	}
}

func (lr *layerRun) started() bool {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return len(lr.progress) > 0
}

// held is how many bytes of the blob the step last reported holding.
func (lr *layerRun) held() int64 {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	if len(lr.progress) == 0 {
		return 0
	}
	return lr.progress[len(lr.progress)-1].Done
}

// checkPlaced asserts the layer's file is under the agent's root, intact.
func (e *p2pEnv) checkPlaced(ta *testAgent) {
	e.t.Helper()
	got, err := os.ReadFile(filepath.Join(ta.root, "data/blob.bin"))
	if err != nil || !bytes.Equal(got, e.content) {
		e.t.Fatalf("%s: data/blob.bin under the root: %d bytes, err %v; want the layer's %d bytes", ta.name, len(got), err, len(e.content))
	}
}

func TestLayerStepFetchesPeerToPeer(t *testing.T) {
	e := newP2PEnv(t, 6<<20)
	var as []*testAgent
	for i := 1; i <= 3; i++ {
		as = append(as, e.startAgent("n"+strconv.Itoa(i), ""))
	}
	var runs []*layerRun
	for _, a := range as {
		runs = append(runs, e.dispatch(a.name, e.payload))
	}
	for i, a := range as {
		runs[i].wait(t, a.name)
		e.checkPlaced(a)
	}
	n := int64(e.list.Count())
	if got := e.urlHits.Load(); got != 0 {
		t.Errorf("%d whole-blob fetches from the controller URL, want 0 (peer-to-peer)", got)
	}
	// The pipeline takes each piece from the seed about once; the rest comes from agents.
	if got := e.seedHits.Load(); got < n || got > 2*n {
		t.Errorf("the seed served %d piece requests for 3 agents and %d pieces, want %d to %d", got, n, n, 2*n)
	}
	last := runs[0].progress[len(runs[0].progress)-1]
	if last.Done != e.payload.Size || last.Total != e.payload.Size || !strings.Contains(last.Message, "/s") {
		t.Errorf("last progress = %+v, want %d of %d bytes with a rate", last, e.payload.Size, e.payload.Size)
	}
	peers := e.tr.Peers(e.list.Digest)
	complete := 0
	for _, p := range peers {
		if p.Complete {
			complete++
		}
	}
	if complete != 4 {
		t.Errorf("tracker: %d complete holders (%+v), want the seed and 3 agents", complete, peers)
	}

	// Another cluster with the same layer: the blob cache has it, nothing is fetched.
	before := e.seedHits.Load()
	again := e.payload
	again.Cluster = "other"
	e.dispatch("n1", again).wait(t, "n1")
	if got := e.seedHits.Load(); got != before || e.urlHits.Load() != 0 {
		t.Errorf("a cached blob was fetched again: seed requests %d -> %d, URL fetches %d", before, got, e.urlHits.Load())
	}
}

// TestPeerServerRefusesStrangers: an agent's piece server serves only agents
// of the cluster that the tracker lists as peers of the blob.
func TestPeerServerRefusesStrangers(t *testing.T) {
	e := newP2PEnv(t, 300<<10)
	a1 := e.startAgent("n1", "")
	e.dispatch("n1", e.payload).wait(t, "n1")
	url := a1.peer().URL() + "/v1/pieces/" + e.list.Digest.String() + "/0"

	other, err := piecestest.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	oc, ok, err := other.Issue("n9", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	strangerCert, _ := tls.X509KeyPair(oc, ok)
	insiderCert := e.peerCert("n2")
	bystanderCert := e.peerCert("n4")
	notAgentCert := e.clusterSignedNonAgentCert()
	// n2 fetches the blob (it announced it to the tracker); n4 does not.
	if err := e.tr.Announce(pieces.Announcement{Peer: pieces.Peer{ID: "n2", Addr: "https://127.0.0.1:1"}, Digest: e.list.Digest,
		Have: pieces.NewBitfield(e.list.Count())}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
		want  bool
	}{
		{"agent of the cluster fetching the blob", []tls.Certificate{insiderCert}, true},
		{"agent of the cluster not fetching the blob", []tls.Certificate{bystanderCert}, false},
		{"no certificate", nil, false},
		{"certificate from another CA", []tls.Certificate{strangerCert}, false},
		{"cluster CA certificate that is not an agent's", []tls.Certificate{notAgentCert}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
				InsecureSkipVerify: true, Certificates: tc.certs}}}
			resp, err := cl.Get(url)
			got := false
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				got = resp.StatusCode == 200 && bytes.Equal(b, e.blob[:e.list.Len(0)])
			}
			if got != tc.want {
				t.Fatalf("got the piece: %v (err %v), want %v", got, err, tc.want)
			}
		})
	}
}

// peerCert gets a peer certificate for node from the controller, as an agent would.
func (e *p2pEnv) peerCert(node string) tls.Certificate {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.c.LocalAgentCredentials(ctx, node, protocol.Facts{}); err != nil {
		e.t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: node}}, k)
	data, _ := protocol.Encode(protocol.PeerCertRequest{CSR: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})})
	m, err := controllertest.NodeRequest(ctx, e.c.Conn(), node, protocol.RequestPeerCert, data)
	if err != nil {
		e.t.Fatal(err)
	}
	var rep protocol.PeerCertReply
	if err := protocol.Decode(m.Data, &rep); err != nil || rep.Error != "" {
		e.t.Fatalf("peer certificate for %s: %v %s", node, err, rep.Error)
	}
	kder, _ := x509.MarshalECPrivateKey(k)
	cert, err := tls.X509KeyPair(rep.Cert, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	if err != nil {
		e.t.Fatal(err)
	}
	return cert
}

// clusterSignedNonAgentCert is a client certificate signed with the cluster
// CA's key (read from the controller's data dir) that does not name an agent.
func (e *p2pEnv) clusterSignedNonAgentCert() tls.Certificate {
	t := e.t
	t.Helper()
	read := func(name string) *pem.Block {
		b, err := os.ReadFile(filepath.Join(e.dataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		return blk
	}
	caCert, err := x509.ParseCertificate(read("ca.crt").Bytes)
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := x509.ParseECPrivateKey(read("ca.key").Bytes)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "n3.example"}, DNSNames: []string{"n3.example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// evilPeer is a test double on the wire: a piece server with a valid peer
// certificate of the cluster that claims every piece and serves random bytes.
type evilPeer struct {
	srv    *httptest.Server
	served atomic.Int64
}

func (e *p2pEnv) startEvilPeer(node string) *evilPeer {
	cert := e.peerCert(node)
	ev := &evilPeer{}
	ev.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v1/pieces/"), "/")
		if len(parts) == 1 {
			w.Write(pieces.FullBitfield(e.list.Count()))
			return
		}
		i, _ := strconv.Atoi(parts[1])
		junk := make([]byte, e.list.Len(i))
		rand.Read(junk)
		ev.served.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(junk)))
		w.Write(junk)
	}))
	ev.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	ev.srv.StartTLS()
	e.t.Cleanup(ev.srv.Close)
	return ev
}

func TestLayerStepDropsCorruptPeer(t *testing.T) {
	e := newP2PEnv(t, 4<<20)
	ev := e.startEvilPeer("evil")
	// The liar goes right before n1 in the pipeline order: n1's upstream.
	if err := e.tr.Announce(pieces.Announcement{Peer: pieces.Peer{ID: "evil", Addr: ev.srv.URL}, Digest: e.list.Digest,
		Have: pieces.FullBitfield(e.list.Count()), Complete: true}); err != nil {
		t.Fatal(err)
	}
	a1 := e.startAgent("n1", "")
	e.dispatch("n1", e.payload).wait(t, "n1")
	e.checkPlaced(a1)
	if ev.served.Load() == 0 {
		t.Fatal("the corrupting peer was never asked: the test proves nothing")
	}
	t.Logf("the corrupting peer served %d pieces before it was dropped", ev.served.Load())
	if got := ev.served.Load(); got > 8 {
		t.Errorf("the corrupting peer served %d pieces: it should be dropped at its first wrong piece (a few in flight)", got)
	}
	if e.urlHits.Load() != 0 {
		t.Errorf("fell back to the controller URL; want the pieces from the seed")
	}
	// No corrupted byte in the store: the peer store's blob is the layer.
	got, err := os.ReadFile(a1.peer().Store().Path(e.list.Digest))
	if err != nil || !bytes.Equal(got, e.blob) {
		t.Fatalf("peer store copy differs from the layer (err %v)", err)
	}
}

func TestLayerStepSurvivesKilledPeer(t *testing.T) {
	e := newP2PEnv(t, 6<<20)
	a1 := e.startAgent("n1", "")
	e.dispatch("n1", e.payload).wait(t, "n1")
	a2 := e.startAgent("n2", "")
	slow := e.payload
	slow.MaxDownload = 2 << 20 // about 3 s, so n1 dies mid-transfer
	run := e.dispatch("n2", slow)
	waitFor(t, 10*time.Second, "n2 a sixth of the way", func() bool { return run.held() > int64(len(e.blob))/6 })
	seedBefore := e.seedHits.Load()
	a1.stop() // n2's upstream in the pipeline
	start := time.Now()
	run.wait(t, "n2")
	e.checkPlaced(a2)
	t.Logf("n2 finished %v after its upstream died", time.Since(start).Round(time.Millisecond))
	if e.seedHits.Load() == seedBefore {
		t.Errorf("the seed served nothing after n1 died: where did the rest come from?")
	}
}

func TestLayerStepResumesAfterAgentRestart(t *testing.T) {
	e := newP2PEnv(t, 6<<20)
	slow := e.payload
	slow.MaxDownload = 2 << 20
	a1 := e.startAgent("n1", "")
	run := e.dispatch("n1", slow)
	waitFor(t, 10*time.Second, "n1 a third of the way", func() bool { return run.held() > int64(len(e.blob))/3 })
	a1.stop()
	held := e.seedHits.Load()
	a1 = e.startAgent("n1", a1.dataDir) // same data dir: its credentials and pieces
	e.dispatch("n1", e.payload).wait(t, "n1")
	e.checkPlaced(a1)
	n := int64(e.list.Count())
	if total := e.seedHits.Load(); total > n+8 {
		t.Errorf("the seed served %d requests for %d pieces (%d before the restart): the pieces on disk were fetched again", total, n, held)
	}
	// Restarted once more, n1 serves the layer it keeps without any step asking for it.
	a1.stop()
	e.tr.Forget("n1")
	a1 = e.startAgent("n1", a1.dataDir)
	waitFor(t, 10*time.Second, "n1 announcing the kept layer", func() bool {
		for _, p := range e.tr.Peers(e.list.Digest) {
			if p.ID == "n1" && p.Complete {
				return true
			}
		}
		return false
	})

	// Once the layer executor's cache lets go of the blob (an undone layer),
	// the next start drops the store's copy too.
	a1.stop()
	cached, _ := filepath.Glob(filepath.Join(a1.dataDir, "blobs", "sha256", e.list.Digest.Hex))
	if len(cached) != 1 {
		t.Fatalf("blob cache: %v, want the layer's blob", cached)
	}
	os.Remove(cached[0])
	a1 = e.startAgent("n1", a1.dataDir)
	if a1.peer().Store().Has(e.list.Digest) {
		t.Fatal("the piece store still holds a blob the cache no longer has")
	}
}

func TestLayerStepCompletesAfterControllerStops(t *testing.T) {
	e := newP2PEnv(t, 6<<20)
	a1 := e.startAgent("n1", "")
	e.dispatch("n1", e.payload).wait(t, "n1")
	slow := e.payload
	slow.MaxDownload = 2 << 20
	var rest []*testAgent
	var runs []*layerRun
	for _, name := range []string{"n2", "n3"} {
		a := e.startAgent(name, "")
		rest = append(rest, a)
		runs = append(runs, e.dispatch(name, slow))
	}
	for _, r := range runs {
		waitFor(t, 10*time.Second, "fetches started", r.started)
	}
	e.c.Close() // the seed, the tracker and NATS go away; n1 holds the whole layer
	for _, a := range rest {
		waitFor(t, 30*time.Second, a.name+" placing the layer without the controller", func() bool {
			b, err := os.ReadFile(filepath.Join(a.root, "data/blob.bin"))
			return err == nil && len(b) == len(e.content)
		})
		e.checkPlaced(a)
	}
	if e.urlHits.Load() != 0 {
		t.Errorf("%d whole-blob fetches from the controller URL, want 0", e.urlHits.Load())
	}
	if p := a1.peer(); p == nil || !p.Store().Has(e.list.Digest) {
		t.Errorf("n1 no longer holds the layer it served")
	}
}

// TestLayerStepHonoursDownloadCap: the step's cap (spec.bandwidth) holds the
// fetch to its rate. Only a lower bound on the time is asserted.
func TestLayerStepHonoursDownloadCap(t *testing.T) {
	e := newP2PEnv(t, 3<<20)
	e.startAgent("n1", "")
	capped := e.payload
	capped.MaxDownload = 3 << 20 // bytes per second: the layer takes about 1 s
	start := time.Now()
	e.dispatch("n1", capped).wait(t, "n1")
	if el := time.Since(start); el < 700*time.Millisecond {
		t.Fatalf("a %d-byte layer capped at %d B/s took %v", len(e.blob), capped.MaxDownload, el)
	}
	if e.urlHits.Load() != 0 {
		t.Fatal("the layer came from the blob URL, not peer-to-peer")
	}
}
