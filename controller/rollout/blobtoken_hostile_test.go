package rollout_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-dev/flotilla/protocol"
)

// capturedLayers collects the layer payloads of the signed tasks a node
// receives, as that node would see them (its own NATS credentials).
type capturedLayers struct {
	mu     sync.Mutex
	layers []protocol.LayerPayload
}

func (c *capturedLayers) onTask(m *nats.Msg) {
	var env protocol.SignedEnvelope
	var task protocol.Task
	if json.Unmarshal(m.Data, &env) != nil || json.Unmarshal(env.Body, &task) != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range task.Steps {
		var p protocol.LayerPayload
		if s.Kind == protocol.KindLayer && json.Unmarshal(s.Payload, &p) == nil && p.Token != "" {
			c.layers = append(c.layers, p)
		}
	}
}

func (c *capturedLayers) first() (protocol.LayerPayload, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.layers) == 0 {
		return protocol.LayerPayload{}, false
	}
	return c.layers[0], true
}

// nodeTLSClient is an HTTPS client that trusts the controller's CA and
// presents cert (nil: none).
func nodeTLSClient(caPEM []byte, cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

func fetchBlob(t *testing.T, cl *http.Client, p protocol.LayerPayload) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, p.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+p.Token)
	resp, err := cl.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// TestHostileRemovedNodeBlobToken: node a gets a layer step (with its blob
// token) in a real rollout, then the admin removes it (`flotilla nodes
// remove`). With the token its task carried and its own peer certificate
// (what a removed, compromised node keeps), the controller's blob server
// refuses it (403, logged naming it); node b's certificate with a's token is
// refused too, and so is the token with no certificate at all. Controller and
// agents are flotilla processes.
func TestHostileRemovedNodeBlobToken(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a controller and agents")
	}
	f, st := startFleet(t, "a", "b")
	buildDir(t, st, "hello:1", "", nil)

	// What node a receives, seen with a's own NATS credentials.
	nc, err := f.ConnectNode(f.AgentCredentials("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var got capturedLayers
	sub, err := nc.Subscribe(protocol.TaskSubject("a"), got.onTask)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	f.mustApply("-f", f.clusterfile("hello", "hello:1", []string{"a"}, []string{"b"}, ""))
	layer, ok := got.first()
	if !ok {
		t.Fatal("node a received no layer step with a blob token")
	}
	certOf := func(node string) *tls.Certificate {
		dir := f.AgentDataDir(node)
		c, err := tls.LoadX509KeyPair(filepath.Join(dir, "peer.crt"), filepath.Join(dir, "peer.key"))
		if err != nil {
			t.Fatalf("peer certificate of %s: %v", node, err)
		}
		return &c
	}
	ca := f.CAPEM()
	asA, asB, anonymous := nodeTLSClient(ca, certOf("a")), nodeTLSClient(ca, certOf("b")), nodeTLSClient(ca, nil)

	// While a is a member, its token and certificate fetch the blob (or the
	// refusals below would prove nothing).
	if code, body := fetchBlob(t, asA, layer); code != http.StatusOK || int64(len(body)) != layer.Size {
		t.Fatalf("a fetching its blob as a member: %d, %d bytes (want 200, %d)", code, len(body), layer.Size)
	}
	// The token lasts as long as the rollout needs it, not a day.
	parts := strings.Split(layer.Token, ".")
	if len(parts) < 3 {
		t.Fatalf("token %q: unexpected form", layer.Token)
	}
	if exp, err := strconv.ParseInt(parts[2], 10, 64); err != nil || time.Until(time.Unix(exp, 0)) > 2*time.Hour {
		t.Errorf("the blob token is valid until %v: want the task's lifetime (well under 2h here)", time.Unix(exp, 0))
	}

	if out, errOut, code := f.CLI(context.Background(), "nodes", "remove", "a"); code != 0 {
		t.Fatalf("flotilla nodes remove a: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, tc := range []struct {
		name string
		cl   *http.Client
	}{
		{"a's token with a's certificate after its removal", asA},
		{"a's token with b's certificate", asB},
		{"a's token without a certificate", anonymous},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, body := fetchBlob(t, tc.cl, layer); code != http.StatusForbidden {
				if code == http.StatusOK {
					body = strconv.Itoa(len(body)) + " bytes of the blob"
				}
				t.Fatalf("%d %.200s, want 403", code, body)
			}
		})
	}
	if !f.Controller.WaitLog(10*time.Second, "blob fetch refused", "node=a", "inventory") {
		t.Errorf("no refusal naming node a (not in the inventory) in the controller's log:\n%s", f.Controller.Tail())
	}
	if !f.Controller.WaitLog(10*time.Second, "blob fetch refused", "certNode=b", "tokenNode=a") {
		t.Errorf("no refusal naming b's certificate and a's token in the controller's log:\n%s", f.Controller.Tail())
	}
}
