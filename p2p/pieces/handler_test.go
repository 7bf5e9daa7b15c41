package pieces

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/p2p/pieces/piecestest"
)

// mtlsServer starts the handler behind mutual TLS and returns it with a
// client that holds a certificate from the same CA.
func mtlsServer(t *testing.T, s *Store) (*httptest.Server, *http.Client, *piecestest.CA) {
	t.Helper()
	ca, err := piecestest.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, srvKey, err := ca.Issue("server", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srvTLS, err := ServerTLSConfig(ca.CertPEM, srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(NewHandler(s))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of some tests
	srv.TLS = srvTLS
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, clientFor(t, ca, ca), ca
}

func clientFor(t *testing.T, trust, issuer *piecestest.CA) *http.Client {
	t.Helper()
	cert, key, err := issuer.Issue("agent-1")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ClientTLSConfig(trust.CertPEM, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
}

func get(t *testing.T, c *http.Client, url string) (int, []byte) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func TestHandlerServesHeldPieces(t *testing.T) {
	blob, l := newTestBlob(t, 3<<20+1)
	s, _ := OpenStore(t.TempDir())
	defer s.Close()
	p, _ := s.Open(l)
	p.WritePiece(1, piece(blob, l, 1))
	srv, c, _ := mtlsServer(t, s)

	code, body := get(t, c, srv.URL+"/v1/pieces/"+l.Digest.String())
	if code != 200 || !bytes.Equal(body, []byte{0x40}) {
		t.Fatalf("bitfield: %d %08b, want 200 [01000000]", code, body)
	}
	for _, tc := range []struct {
		path string
		code int
		body []byte
	}{
		{fmt.Sprintf("/v1/pieces/%s/1", l.Digest), 200, piece(blob, l, 1)},
		{fmt.Sprintf("/v1/pieces/%s/0", l.Digest), 404, nil},
		{fmt.Sprintf("/v1/pieces/%s/9", l.Digest), 404, nil},
		{fmt.Sprintf("/v1/pieces/%s/x", l.Digest), 400, nil},
		{"/v1/pieces/sha256:abc/0", 400, nil},
		{"/v1/pieces/sha256:" + l.Hashes[0] + "/0", 404, nil},
		{fmt.Sprintf("/v1/blobs/%s", l.Digest), 404, nil}, // not complete yet
	} {
		code, body := get(t, c, srv.URL+tc.path)
		if code != tc.code || (tc.body != nil && !bytes.Equal(body, tc.body)) {
			t.Errorf("GET %s = %d (%d bytes), want %d", tc.path, code, len(body), tc.code)
		}
	}
}

func TestHandlerWaitsForPiece(t *testing.T) {
	blob, l := newTestBlob(t, 2<<20)
	s, _ := OpenStore(t.TempDir())
	defer s.Close()
	p, _ := s.Open(l)
	srv, c, _ := mtlsServer(t, s)
	go func() {
		time.Sleep(200 * time.Millisecond) // the piece must land while the request already waits for it
		p.WritePiece(1, piece(blob, l, 1))
	}()
	start := time.Now()
	code, body := get(t, c, fmt.Sprintf("%s/v1/pieces/%s/1?wait=5s", srv.URL, l.Digest))
	if code != 200 || !bytes.Equal(body, piece(blob, l, 1)) {
		t.Fatalf("waited piece: %d, %d bytes", code, len(body))
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("waited %v for a piece that landed after 200ms", d)
	}
	code, _ = get(t, c, fmt.Sprintf("%s/v1/pieces/%s/0?wait=100ms", srv.URL, l.Digest))
	if code != 404 {
		t.Fatalf("piece that never lands: %d, want 404 after the wait", code)
	}
}

func TestHandlerServesWholeBlobWithRange(t *testing.T) {
	blob, l := newTestBlob(t, 1<<20+3)
	s, _ := OpenStore(t.TempDir())
	defer s.Close()
	p, _ := s.Open(l)
	for i := 0; i < l.Count(); i++ {
		p.WritePiece(i, piece(blob, l, i))
	}
	if _, err := p.Finish(); err != nil {
		t.Fatal(err)
	}
	srv, c, _ := mtlsServer(t, s)
	req, _ := http.NewRequest("GET", srv.URL+"/v1/blobs/"+l.Digest.String(), nil)
	req.Header.Set("Range", "bytes=1048576-")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, blob[1<<20:]) {
		t.Fatalf("range request: %d, %d bytes", resp.StatusCode, len(b))
	}
}

func TestHandlerRefusesStrangers(t *testing.T) {
	blob, l := newTestBlob(t, 100)
	s, _ := OpenStore(t.TempDir())
	defer s.Close()
	p, _ := s.Open(l)
	p.WritePiece(0, blob)
	srv, _, ca := mtlsServer(t, s)
	other, err := piecestest.NewCA("other-ca")
	if err != nil {
		t.Fatal(err)
	}
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}}}
	for name, c := range map[string]*http.Client{
		"no client certificate":           noCert,
		"certificate from another CA":     clientFor(t, ca, other),
		"plain HTTP to the HTTPS service": {Timeout: 2 * time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			url := srv.URL + "/v1/pieces/" + l.Digest.String() + "/0"
			if name == "plain HTTP to the HTTPS service" {
				url = "http" + url[len("https"):]
			}
			resp, err := c.Get(url)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if bytes.Equal(b, blob) {
					t.Fatalf("a stranger got the piece (status %d)", resp.StatusCode)
				}
				if resp.StatusCode == 200 {
					t.Fatalf("a stranger got status 200")
				}
			}
		})
	}
}
