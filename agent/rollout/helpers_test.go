package rollout

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/p2p/pieces/piecestest"
	"github.com/flotilla-dev/flotilla/protocol"
)

// events collects what a step reported.
type events struct {
	mu  sync.Mutex
	evs []protocol.Event
}

func (e *events) emit(ev protocol.Event) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }

// lines returns the output lines of stream ("" for both).
func (e *events) lines(stream string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.evs {
		if ev.Type == protocol.EventOutput && (stream == "" || ev.Stream == stream) {
			out = append(out, ev.Line)
		}
	}
	return out
}

func (e *events) progress() []protocol.Progress {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []protocol.Progress
	for _, ev := range e.evs {
		if ev.Type == protocol.EventProgress {
			out = append(out, *ev.Progress)
		}
	}
	return out
}

// node is one agent's data dir and root, trusting the CA of a blob server,
// and its set of rollout executors (built from opts at the first run).
type node struct {
	t       testing.TB
	dataDir string
	root    string
	opts    Options
	ex      map[string]agent.Executor
}

// configure changes the options the node's executors are built from.
func (n *node) configure(mod func(*Options)) {
	mod(&n.opts)
	n.ex = nil
}

func newNode(t *testing.T, caPEM []byte) *node {
	t.Helper()
	return newNodeIn(t, t.TempDir(), caPEM)
}

func newNodeIn(t testing.TB, dir string, caPEM []byte) *node {
	t.Helper()
	n := &node{t: t, dataDir: filepath.Join(dir, "data"), root: filepath.Join(dir, "root")}
	for _, d := range []string{n.dataDir, n.root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if caPEM != nil {
		data, _ := json.Marshal(protocol.Credentials{Node: "n1", CAPEM: caPEM})
		if err := os.WriteFile(filepath.Join(n.dataDir, "credentials.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		// The agent's peer certificate, as its join leaves it: the blob
		// server serves only the node presenting it.
		certPEM, keyPEM := testPeerCert(t, "n1")
		if err := os.WriteFile(filepath.Join(n.dataDir, "peer.crt"), certPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(n.dataDir, "peer.key"), keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// testPeerCert is a peer certificate of node from a throwaway CA.
func testPeerCert(t testing.TB, node string) (certPEM, keyPEM []byte) {
	t.Helper()
	ca, err := piecestest.NewCA("test agents")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err = ca.Issue(node, protocol.PeerCertName(node))
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
}

// run executes one step of kind with payload through the node's executor of that kind.
func (n *node) run(kind string, payload any, mod ...func(*protocol.Step)) (*events, error) {
	n.t.Helper()
	data, err := json.Marshal(payload)
	if err != nil {
		n.t.Fatal(err)
	}
	step := &protocol.Step{Name: kind + "-step", Kind: kind, Payload: data}
	for _, m := range mod {
		m(step)
	}
	ev := &events{}
	sc := agent.NewStepContext(&protocol.Task{ID: "t1", Node: "n1", Cluster: "c1"}, step, n.root, n.dataDir, ev.emit)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if n.ex == nil {
		n.ex = Executors(n.opts)
	}
	ex, ok := n.ex[kind]
	if !ok {
		n.t.Fatalf("no executor for %q", kind)
	}
	return ev, ex.Execute(ctx, sc)
}

// tree lists the paths under dir (relative, sorted), with "/" after directories.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if fi.IsDir() {
			rel += "/"
		}
		out = append(out, rel)
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

// layer is a gzip-compressed tar blob and its digest.
type layer struct {
	blob   []byte
	digest string
}

// makeLayer builds a layer; names ending in "/" are directories.
func makeLayer(t testing.TB, entries ...string) layer {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		name, content, _ := strings.Cut(e, "=")
		hdr := &tar.Header{Name: name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(content)), ModTime: time.Unix(1, 0)}
		if strings.HasSuffix(name, "/") {
			hdr = &tar.Header{Name: name, Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(1, 0)}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return layer{blob: buf.Bytes(), digest: digestOf(buf.Bytes())}
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// blobServer serves layers over HTTPS at /blobs/<digest> to "Bearer good".
type blobServer struct {
	srv *httptest.Server
	mu  sync.Mutex
	// blobs by digest; corrupt serves wrong bytes of the right size.
	blobs   map[string][]byte
	corrupt bool
	// gets counts GET requests; ranges records their Range headers.
	gets   int
	ranges []string
}

func newBlobServer(t testing.TB, layers ...layer) *blobServer {
	b := &blobServer{blobs: map[string][]byte{}}
	for _, l := range layers {
		b.blobs[l.digest] = l.blob
	}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Like the controller's: the node's peer certificate (here any
		// issuer's: the CA is checked in controller/blobserver) and its token.
		if cs := r.TLS; cs == nil || len(cs.PeerCertificates) == 0 || len(cs.PeerCertificates[0].DNSNames) != 1 ||
			cs.PeerCertificates[0].DNSNames[0] != protocol.PeerCertName("n1") {
			http.Error(w, "no peer certificate of n1", http.StatusForbidden)
			return
		}
		if r.Header.Get("Authorization") != "Bearer good" {
			http.Error(w, "bad token", http.StatusUnauthorized)
			return
		}
		b.mu.Lock()
		data, ok := b.blobs[strings.TrimPrefix(r.URL.Path, "/blobs/")]
		if r.Method == http.MethodGet {
			b.gets++
			b.ranges = append(b.ranges, r.Header.Get("Range"))
		}
		if b.corrupt {
			data = bytes.Repeat([]byte{'x'}, len(data))
		}
		b.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, "blob", time.Unix(1, 0), bytes.NewReader(data))
	}))
	b.srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	b.srv.StartTLS()
	t.Cleanup(b.srv.Close)
	return b
}

func (b *blobServer) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.srv.Certificate().Raw})
}

func (b *blobServer) payload(l layer, token string) protocol.LayerPayload {
	return protocol.LayerPayload{Cluster: "c1", Digest: l.digest, Size: int64(len(l.blob)), URL: b.srv.URL + "/blobs/" + l.digest, Token: token}
}

func (b *blobServer) stats() (int, []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gets, append([]string(nil), b.ranges...)
}
