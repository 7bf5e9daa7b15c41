package blobserver

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/p2p/pieces/piecestest"
	"github.com/flotilla-dev/flotilla/protocol"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// blobEnv is a blob server on TLS (client certificates verified if given,
// as on the controller's HTTPS) with one blob in its store, and clients
// holding peer certificates of the cluster's CA.
type blobEnv struct {
	srv     *Server
	url     string
	blob    []byte
	digest  v1.Hash
	members map[string]bool
	mu      sync.Mutex
	logs    syncBuf
	ca      *piecestest.CA
	pool    *x509.CertPool
}

func newBlobEnv(t *testing.T, member bool) *blobEnv {
	t.Helper()
	e := &blobEnv{members: map[string]bool{"n1": true, "n2": true}}
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e.blob = make([]byte, 4096)
	rand.Read(e.blob)
	sum := sha256.Sum256(e.blob)
	e.digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	path, _ := st.BlobPath(e.digest)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, e.blob, 0o644); err != nil {
		t.Fatal(err)
	}
	opts := Options{Logger: slog.New(slog.NewTextHandler(&e.logs, nil))}
	if member {
		opts.Member = func(n string) bool {
			e.mu.Lock()
			defer e.mu.Unlock()
			return e.members[n]
		}
	}
	if e.srv, err = New(t.TempDir(), st, opts); err != nil {
		t.Fatal(err)
	}
	if e.ca, err = piecestest.NewCA("flotilla test CA"); err != nil {
		t.Fatal(err)
	}
	e.pool = x509.NewCertPool()
	e.pool.AppendCertsFromPEM(e.ca.CertPEM)
	certPEM, keyPEM, err := e.ca.Issue("controller", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(e.srv)
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: e.pool}
	hs.StartTLS()
	t.Cleanup(hs.Close)
	e.url = hs.URL + Path
	return e
}

// client presents the peer certificate of node ("": none).
func (e *blobEnv) client(t *testing.T, node string) *http.Client {
	t.Helper()
	cfg := &tls.Config{RootCAs: e.pool}
	if node != "" {
		certPEM, keyPEM, err := e.ca.Issue(node, protocol.PeerCertName(node))
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// TestBlobServer: a node's peer certificate with a token made for that node
// and blob fetches it (with ranges, for resumed downloads) while the node is
// in the inventory. Anything else is refused with a reason: 401 for a bad
// token (missing, malformed, another blob's, expired), 403 for a missing
// certificate, another node's token, a node not in the inventory, or a
// server without an inventory check; each refusal is logged naming the sender.
func TestBlobServer(t *testing.T) {
	e := newBlobEnv(t, true)
	other := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("cd", 32)}
	missing := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}
	tok := func(node string, d v1.Hash, exp time.Duration) string {
		return "Bearer " + e.srv.Token(node, d.String(), time.Now().Add(exp))
	}
	e.mu.Lock()
	delete(e.members, "n2") // n2 was removed: its certificate is still valid
	e.mu.Unlock()
	for _, tc := range []struct {
		name   string
		cert   string // node whose peer certificate the client presents
		digest v1.Hash
		auth   string
		rng    string
		code   int
		body   string // the body (a prefix of it for refusals)
		log    string // a logged refusal line holds this
	}{
		{"valid", "n1", e.digest, tok("n1", e.digest, time.Hour), "", 200, string(e.blob), ""},
		{"range", "n1", e.digest, tok("n1", e.digest, time.Hour), "bytes=2-5", 206, string(e.blob[2:6]), ""},
		{"no certificate", "", e.digest, tok("n1", e.digest, time.Hour), "", 403, "forbidden: the blob server serves a node presenting its peer certificate", "tokenNode=n1"},
		{"missing token", "n1", e.digest, "", "", 401, "unauthorized: missing bearer token", "node=n1"},
		{"malformed", "n1", e.digest, "Bearer xyz", "", 401, "unauthorized: malformed token", "node=n1"},
		{"other blob's token", "n1", e.digest, tok("n1", other, time.Hour), "", 401, "unauthorized: token of node n1 is not valid for blob", "node=n1"},
		{"expired", "n1", e.digest, tok("n1", e.digest, -time.Minute), "", 401, "unauthorized: token of node n1 expired", "node=n1"},
		{"another node's token", "n3", e.digest, tok("n1", e.digest, time.Hour), "", 403, "forbidden: the token was made for node n1, the client certificate is node n3's", "certNode=n3"},
		{"removed node", "n2", e.digest, tok("n2", e.digest, time.Hour), "", 403, "forbidden: node n2 is not in the inventory", "node=n2"},
		{"not in store", "n1", missing, tok("n1", missing, time.Hour), "", 404, "blob sha256:abab", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", e.url+tc.digest.String(), nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			if tc.rng != "" {
				req.Header.Set("Range", tc.rng)
			}
			resp, err := e.client(t, tc.cert).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d: %.200q", resp.StatusCode, tc.code, b)
			}
			if tc.code < 300 && string(b) != tc.body || tc.code >= 300 && !strings.HasPrefix(string(b), tc.body) {
				t.Errorf("body %.200q, want %q", b, tc.body)
			}
			if tc.log != "" && !hasLine(e.logs.String(), "blob fetch refused", tc.log) {
				t.Errorf("no refusal with %q logged:\n%s", tc.log, e.logs.String())
			}
		})
	}

	t.Run("no inventory check", func(t *testing.T) {
		e := newBlobEnv(t, false)
		req, _ := http.NewRequest("GET", e.url+e.digest.String(), nil)
		req.Header.Set("Authorization", "Bearer "+e.srv.Token("n1", e.digest.String(), time.Now().Add(time.Hour)))
		resp, err := e.client(t, "n1").Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("status %d, want 403: a blob server without Member serves nobody", resp.StatusCode)
		}
	})
}

// TestBlobServerRefusalLogIsRateLimited: a client hammering the blob server
// with a refused token gets its refusals logged once per interval, not once
// per request.
func TestBlobServerRefusalLogIsRateLimited(t *testing.T) {
	e := newBlobEnv(t, true)
	cl := e.client(t, "n1")
	for range 50 {
		req, _ := http.NewRequest("GET", e.url+e.digest.String(), nil)
		req.Header.Set("Authorization", "Bearer junk")
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", resp.StatusCode)
		}
	}
	if n := strings.Count(e.logs.String(), "blob fetch refused"); n != 1 {
		t.Fatalf("%d refusal lines for 50 refused requests within the interval, want 1:\n%s", n, e.logs.String())
	}
}

func hasLine(logs string, parts ...string) bool {
	for _, line := range strings.Split(logs, "\n") {
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
