package plane

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/protocol"
)

func startPeerCertController(t *testing.T) *Controller {
	t.Helper()
	ok := RequireAgentCert(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		node, _ := AgentFromRequest(r)
		w.Write([]byte("hello " + node))
	}))
	c, err := New(Options{DataDir: t.TempDir(), Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Advertise: "127.0.0.1",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Handlers: map[string]http.Handler{"GET /v1/agents-only": ok}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newCSR(t *testing.T, cn string) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn},
		IPAddresses: nil, DNSNames: []string{"controller.example"}}, k)
	if err != nil {
		t.Fatal(err)
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func postJoin(t *testing.T, c *Controller, req protocol.JoinRequest) (int, []byte) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM())
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	body, _ := json.Marshal(req)
	resp, err := cl.Post(c.HTTPURL()+protocol.PathJoin, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// TestJoinIssuesPeerCert: the certificate names only the node (no IP, no
// name the agent asked for), serves as client and server, chains to the CA;
// a bad request is refused before the node is admitted.
func TestJoinIssuesPeerCert(t *testing.T) {
	c := startPeerCertController(t)
	ctx := context.Background()
	tok, err := c.tokens.create(ctx, protocol.TokenCreate{TTL: time.Hour, Description: "test"})
	if err != nil {
		t.Fatal(err)
	}
	code, body := postJoin(t, c, protocol.JoinRequest{Token: tok.Token, Name: "n1", CSR: []byte("not a CSR")})
	if code != http.StatusBadRequest || !strings.Contains(string(body), "certificate request") {
		t.Fatalf("join with a broken CSR: %d %s", code, body)
	}
	if _, ok := c.inv.get("n1"); ok {
		t.Fatal("a join refused for its CSR admitted the node")
	}
	key, csr := newCSR(t, "anything")
	code, body = postJoin(t, c, protocol.JoinRequest{Token: tok.Token, Name: "n1", CSR: csr})
	if code != http.StatusOK {
		t.Fatalf("join: %d %s", code, body)
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(body, &cr); err != nil {
		t.Fatal(err)
	}
	leaf := checkPeerCert(t, c, cr.PeerCert, "n1")
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
		t.Fatal("certificate is not for the CSR's key")
	}
}

func checkPeerCert(t *testing.T, c *Controller, certPEM []byte, node string) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		t.Fatalf("no PEM certificate: %q", certPEM)
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.IPAddresses) != 0 || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != protocol.PeerCertName(node) {
		t.Fatalf("names: IPs %v DNS %v, want only %s", leaf.IPAddresses, leaf.DNSNames, protocol.PeerCertName(node))
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.pki.certPool(), KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Fatalf("usage %v: %v", u, err)
		}
	}
	// It must never pass as the controller's server certificate.
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: c.pki.certPool(), DNSName: "127.0.0.1"}); err == nil {
		t.Fatal("a peer certificate verifies as 127.0.0.1")
	}
	return leaf
}

// TestPeerCertOverNATSAndRequireAgentCert: an admitted node gets a
// certificate by NATS request, and with it (only) reaches agent-only handlers.
func TestPeerCertOverNATSAndRequireAgentCert(t *testing.T) {
	c := startPeerCertController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.LocalAgentCredentials(ctx, "n2", protocol.Facts{}); err != nil {
		t.Fatal(err)
	}
	key, csr := newCSR(t, "n2")
	ask := func(node string, csr []byte) protocol.PeerCertReply {
		data, _ := protocol.Encode(protocol.PeerCertRequest{CSR: csr})
		m, err := controllertest.NodeRequest(ctx, c.Conn(), node, protocol.RequestPeerCert, data)
		if err != nil {
			t.Fatal(err)
		}
		var rep protocol.PeerCertReply
		if err := protocol.Decode(m.Data, &rep); err != nil {
			t.Fatal(err)
		}
		return rep
	}
	if rep := ask("stranger", csr); rep.Error == "" || !strings.Contains(rep.Error, "inventory") {
		t.Fatalf("unknown node: %+v", rep)
	}
	rep := ask("n2", csr)
	if rep.Error != "" {
		t.Fatal(rep.Error)
	}
	checkPeerCert(t, c, rep.Cert, "n2")

	kder, _ := x509.MarshalECPrivateKey(key)
	cert, err := tls.X509KeyPair(rep.Cert, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	if err != nil {
		t.Fatal(err)
	}
	// A certificate the CA signed for the controller (server use only) is no agent's.
	notAgent, err := c.pki.issueServerCert([]string{"n2"})
	if err != nil {
		t.Fatal(err)
	}
	pool := c.pki.certPool()
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
		want  string
	}{
		{"agent certificate", []tls.Certificate{cert}, "hello n2"},
		{"no certificate", nil, "403"},
		{"server certificate of the CA", []tls.Certificate{notAgent}, "refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: tc.certs}}}
			resp, err := cl.Get(c.HTTPURL() + "/v1/agents-only")
			got := "refused"
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				got = string(b)
				if resp.StatusCode == http.StatusForbidden {
					got = "403"
				}
			}
			if got != tc.want {
				t.Fatalf("got %q (err %v), want %q", got, err, tc.want)
			}
		})
	}
	// Joins and the CA still need no client certificate.
	cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := cl.Get(c.HTTPURL() + protocol.PathCACert)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CA without a client certificate: %v %v", err, resp)
	}
	resp.Body.Close()
}
