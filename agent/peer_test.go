package agent_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/protocol"
)

// TestAgentsJoinWithPeerCertificates runs the real binary: agents that join
// with a token get their peer certificate with the credentials, an agent
// that has none asks over NATS, both report a PeerURL, and their piece
// servers and the controller's tracker serve agents only.
func TestAgentsJoinWithPeerCertificates(t *testing.T) {
	f := controllertest.Start(t)
	for _, n := range []string{"p1", "p2"} {
		f.StartAgent(n, "--peer-listen", "127.0.0.1:0")
	}
	urls := waitPeerURLs(t, f, "p1", "p2")
	for _, n := range []string{"p1", "p2"} {
		checkPeerCertFile(t, f.AgentDataDir(n), n)
	}

	// An agent whose data dir lacks the certificate (joined before) gets one over NATS.
	f.Agents["p2"].Kill()
	os.Remove(filepath.Join(f.AgentDataDir("p2"), "peer.crt"))
	f.RestartAgent("p2") // listens on the default :9444 unless busy; either way it fetches
	waitFile(t, filepath.Join(f.AgentDataDir("p2"), "peer.crt"))
	checkPeerCertFile(t, f.AgentDataDir("p2"), "p2")

	p1, err := tls.LoadX509KeyPair(filepath.Join(f.AgentDataDir("p1"), "peer.crt"), filepath.Join(f.AgentDataDir("p1"), "peer.key"))
	if err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		name, url string
		certs     []tls.Certificate
		want      int // HTTP status; 0: refused at the handshake
	}{
		{"peer server, agent", urls["p1"] + "/v1/pieces/" + digest, []tls.Certificate{p1}, http.StatusNotFound},
		{"peer server, no certificate", urls["p1"] + "/v1/pieces/" + digest, nil, 0},
		{"tracker, agent", f.HTTPURL() + "/v1/tracker/peers/" + digest, []tls.Certificate{p1}, http.StatusOK},
		{"tracker, no certificate", f.HTTPURL() + "/v1/tracker/peers/" + digest, nil, http.StatusForbidden},
		{"seed, no certificate", f.HTTPURL() + "/v1/pieces/" + digest, nil, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
				InsecureSkipVerify: true, Certificates: tc.certs}}}
			got := 0
			if resp, err := cl.Get(tc.url); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				got = resp.StatusCode
			}
			if got != tc.want {
				t.Fatalf("GET %s: %d, want %d", tc.url, got, tc.want)
			}
		})
	}
}

func waitPeerURLs(t *testing.T, f *controllertest.Fleet, names ...string) map[string]string {
	t.Helper()
	urls := map[string]string{}
	f.WaitNodes(30*time.Second, "nodes report PeerURLs", func(nodes []protocol.NodeInfo) bool {
		clear(urls)
		for _, n := range nodes {
			if strings.HasPrefix(n.PeerURL, "https://127.0.0.1:") {
				urls[n.Name] = n.PeerURL
			}
		}
		return len(urls) == len(names)
	})
	return urls
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	if err := poll.Until(t.Context(), 30*time.Second, 100*time.Millisecond, func() bool {
		_, err := os.Stat(path)
		return err == nil
	}); err != nil {
		t.Fatalf("%s did not appear: %v", path, err)
	}
}

func checkPeerCertFile(t *testing.T, dataDir, node string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "peer.crt"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", node)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.DNSNames) != 1 || c.DNSNames[0] != protocol.PeerCertName(node) || len(c.IPAddresses) != 0 {
		t.Fatalf("%s's peer certificate names %v %v", node, c.DNSNames, c.IPAddresses)
	}
	if fi, err := os.Stat(filepath.Join(dataDir, "peer.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: peer.key: %v %v", node, fi, err)
	}
}
