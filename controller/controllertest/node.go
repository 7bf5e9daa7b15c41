package controllertest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/internal/natsconn"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

// A hostile node's toolkit: the same requests a real agent makes, built on the
// protocol package, with whatever content a test wants.

// CAPEM is the controller's CA certificate (from its data dir).
func (f *Fleet) CAPEM() []byte {
	f.T.Helper()
	pem, err := os.ReadFile(filepath.Join(f.ControllerDir(), "ca.crt"))
	if err != nil {
		f.T.Fatalf("controller CA: %v", err)
	}
	return pem
}

// HTTPClient trusts the controller's CA.
func (f *Fleet) HTTPClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.CAPEM())
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// HTTPClientFrom is HTTPClient with its connections made from src, an
// address of this host (on loopback: any of 127.0.0.0/8), so that a test
// can join nodes from distinct source addresses.
func (f *Fleet) HTTPClientFrom(src netip.Addr) *http.Client {
	c := f.HTTPClient()
	tr := c.Transport.(*http.Transport)
	tr.DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 10 * time.Second}).DialContext
	return c
}

// JoinFrom joins name like Join, its connection made from src.
func (f *Fleet) JoinFrom(ctx context.Context, src netip.Addr, token, name string, facts protocol.Facts) (*protocol.Credentials, error) {
	body, err := json.Marshal(protocol.JoinRequest{Token: token, Name: name, Facts: facts})
	if err != nil {
		return nil, err
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, f.HTTPURL()+protocol.PathJoin, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	r.Header.Set("Content-Type", "application/json")
	resp, err := f.HTTPClientFrom(src).Do(r)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("join %s from %s: HTTP %d: %s (%v)", name, src, resp.StatusCode, data, err)
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(data, &cr); err != nil {
		return nil, fmt.Errorf("join %s reply: %w", name, err)
	}
	return &cr, nil
}

// DialFrom is a NATS option that makes the connection from src.
func DialFrom(src netip.Addr) nats.Option {
	return nats.SetCustomDialer(&net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 10 * time.Second})
}

// PostJoin sends a join request as a node would and returns the HTTP status and body.
func (f *Fleet) PostJoin(ctx context.Context, req protocol.JoinRequest) (int, []byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return 0, nil, err
	}
	return f.PostJoinRaw(ctx, body)
}

// PostJoinRaw posts body to /v1/join as it is.
func (f *Fleet) PostJoinRaw(ctx context.Context, body []byte) (int, []byte, error) {
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, f.HTTPURL()+protocol.PathJoin, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	r.Header.Set("Content-Type", "application/json")
	resp, err := f.HTTPClient().Do(r)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, data, err
}

// Join joins name with token and facts and returns its credentials.
func (f *Fleet) Join(ctx context.Context, token, name string, facts protocol.Facts) (*protocol.Credentials, error) {
	code, body, err := f.PostJoin(ctx, protocol.JoinRequest{Token: token, Name: name, Facts: facts})
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("join %s: HTTP %d: %s", name, code, body)
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(body, &cr); err != nil {
		return nil, fmt.Errorf("join %s reply: %w", name, err)
	}
	return &cr, nil
}

// AgentCredentials reads the credentials a running agent keeps in its data dir.
func (f *Fleet) AgentCredentials(name string) *protocol.Credentials {
	f.T.Helper()
	data, err := os.ReadFile(filepath.Join(f.AgentDataDir(name), "credentials.json"))
	if err != nil {
		f.T.Fatalf("credentials of %s: %v", name, err)
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(data, &cr); err != nil {
		f.T.Fatalf("credentials of %s: %v", name, err)
	}
	return &cr
}

// ConnectNode connects to NATS as node cr.Node (its inbox prefix, as agents use).
func (f *Fleet) ConnectNode(cr *protocol.Credentials, opts ...nats.Option) (*nats.Conn, error) {
	if f.External {
		auth, err := natsconn.Options(cr)
		if err != nil {
			return nil, err
		}
		return nats.Connect(strings.Join(cr.NATSURLs, ","), append(append(auth, nats.CustomInboxPrefix(protocol.InboxPrefix(cr.Node)),
			nats.NoReconnect(), nats.Timeout(5*time.Second)), opts...)...)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cr.CAPEM)
	return nats.Connect(f.NATSURL(), append([]nats.Option{nats.UserInfo(cr.User, cr.Password), nats.Secure(&tls.Config{RootCAs: pool}),
		nats.CustomInboxPrefix(protocol.InboxPrefix(cr.Node)), nats.NoReconnect(), nats.Timeout(5 * time.Second)}, opts...)...)
}

// Register sends a registration for node over nc and returns the controller's answer.
func Register(ctx context.Context, nc *nats.Conn, reg protocol.Register) (protocol.RegisterReply, error) {
	data, err := protocol.Encode(reg)
	if err != nil {
		return protocol.RegisterReply{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, protocol.RegisterSubject(reg.Name), data)
	if err != nil {
		return protocol.RegisterReply{}, err
	}
	var r protocol.RegisterReply
	return r, protocol.Decode(m.Data, &r)
}

// Node returns one node of the inventory (through the CLI).
func (f *Fleet) Node(ctx context.Context, name string) (protocol.NodeInfo, bool) {
	f.T.Helper()
	nodes, err := f.Nodes(ctx)
	if err != nil {
		f.T.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == name {
			return n, true
		}
	}
	return protocol.NodeInfo{}, false
}

// WaitLog waits until one line of p's log holds every one of subs.
func (p *Proc) WaitLog(timeout time.Duration, subs ...string) bool {
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(p.Log)
		for _, line := range strings.Split(string(data), "\n") {
			all := true
			for _, s := range subs {
				if !strings.Contains(line, s) {
					all = false
					break
				}
			}
			if all {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
