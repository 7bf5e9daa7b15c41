package controller

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

func (c *Controller) startHTTP() error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+protocol.PathCACert, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(c.pki.caPEM)
	})
	mux.HandleFunc("POST "+protocol.PathJoin, c.handleJoin)
	for pattern, h := range c.opts.Handlers {
		mux.Handle(pattern, h)
	}
	for pattern, h := range c.opts.AgentHandlers {
		mux.Handle(pattern, c.RequireMember(h))
	}
	ln, err := net.Listen("tcp", c.opts.HTTPListen)
	if err != nil {
		return fmt.Errorf("--http-listen %s: %w", c.opts.HTTPListen, err)
	}
	c.httpAddr = ln.Addr()
	sub, err := c.nc.Subscribe(protocol.AllNodeRequests(protocol.RequestPeerCert), c.onPeerCert)
	if err != nil {
		ln.Close()
		return fmt.Errorf("subscribe peer certificate requests: %w", err)
	}
	c.subs = append(c.subs, sub)
	if err := c.nc.Flush(); err != nil {
		ln.Close()
		return fmt.Errorf("subscribe peer certificate requests: %w", err)
	}
	c.http = &http.Server{
		Handler: mux,
		// Agents present their peer certificate to reach the tracker and the seed
		// (RequireAgentCert); joins, the CA and the bootstrap need none.
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{c.pki.server}, MinVersion: tls.VersionTLS12,
			ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: c.pki.certPool()},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := c.http.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Error("HTTPS server stopped", "err", err)
		}
	}()
	return nil
}

func (c *Controller) handleJoin(w http.ResponseWriter, r *http.Request) {
	fail := func(code int, err error) {
		c.log.Warn("join refused", "remote", r.RemoteAddr, "err", err)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(protocol.JoinError{Error: err.Error()})
	}
	var req protocol.JoinRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req); err != nil {
		fail(http.StatusBadRequest, fmt.Errorf("join request body: %w", err))
		return
	}
	if err := protocol.ValidateNodeName(req.Name); err != nil {
		fail(http.StatusBadRequest, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if err := c.tokens.use(ctx, req.Token); err != nil {
		fail(http.StatusForbidden, err)
		return
	}
	var peerCert []byte
	if len(req.CSR) > 0 {
		// Before admitting: a bad request must not cost the node its old credentials.
		var err error
		if peerCert, err = c.pki.signPeerCert(req.Name, req.CSR); err != nil {
			fail(http.StatusBadRequest, err)
			return
		}
	}
	cr, err := c.admitNode(ctx, req.Name, req.Facts)
	if err != nil {
		fail(http.StatusInternalServerError, err)
		return
	}
	cr.PeerCert = peerCert
	c.log.Info("node joined", "node", req.Name, "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(cr)
}

// admitNode creates or replaces a node's record with fresh credentials.
func (c *Controller) admitNode(ctx context.Context, name string, facts protocol.Facts) (*protocol.Credentials, error) {
	secret := randomSecret()
	rec, ok := c.inv.get(name)
	if !ok {
		rec = NodeRecord{Name: name, JoinedAt: time.Now().UTC()}
	} else {
		c.log.Info("node re-joined: its old credentials no longer work", "node", name)
	}
	rec.Facts, rec.Labels, rec.SecretHash = facts, facts.Labels, hashSecret(secret)
	if err := c.inv.put(ctx, &rec); err != nil {
		return nil, err
	}
	c.auth.setAgent(name, rec.SecretHash)
	if ok {
		c.disconnectNode(name)
	}
	return &protocol.Credentials{
		Node:       name,
		NATSURLs:   []string{c.NATSURL()},
		User:       AgentUser(name),
		Password:   secret,
		CAPEM:      c.pki.caPEM,
		SigningKey: c.SigningKey(),
		HTTPURL:    c.HTTPURL(),
	}, nil
}

// LocalAgentCredentials admits a node without a token, for an agent running in
// this process (`flotilla controller --with-local-agent`); it connects over loopback.
func (c *Controller) LocalAgentCredentials(ctx context.Context, name string, facts protocol.Facts) (*protocol.Credentials, error) {
	if err := protocol.ValidateNodeName(name); err != nil {
		return nil, err
	}
	cr, err := c.admitNode(ctx, name, facts)
	if err != nil {
		return nil, err
	}
	cr.NATSURLs = []string{"tls://" + localNATSHostPort(c)}
	return cr, nil
}

// disconnectNode closes the NATS connections of a node whose credentials were
// replaced, so that an old agent of the same name stops receiving its tasks.
func (c *Controller) disconnectNode(name string) {
	cz, err := c.ns.Connz(&server.ConnzOptions{User: AgentUser(name), Limit: 1024})
	if err != nil {
		c.log.Warn("list connections of re-joined node", "node", name, "err", err)
		return
	}
	for _, ci := range cz.Conns {
		if err := c.ns.DisconnectClientByID(ci.Cid); err == nil {
			c.log.Info("disconnected the previous agent of a re-joined node", "node", name, "cid", ci.Cid)
		}
	}
}

// onPeerCert signs a peer certificate for an agent that joined before it had
// one, or renews it; NATS permissions guarantee the subject names the sender.
func (c *Controller) onPeerCert(m *nats.Msg) {
	var rep protocol.PeerCertReply
	node, ok := protocol.NodeFromSubject(m.Subject)
	var req protocol.PeerCertRequest
	switch {
	case !ok:
		return
	case protocol.Decode(m.Data, &req) != nil:
		rep.Error = "peer certificate request: bad message"
	default:
		if _, known := c.inv.get(node); !known {
			rep.Error = fmt.Sprintf("node %s is not in the inventory: join again with a token", node)
			break
		}
		cert, err := c.pki.signPeerCert(node, req.CSR)
		if err != nil {
			rep.Error = err.Error()
			break
		}
		rep.Cert = cert
		c.log.Info("issued peer certificate", "node", node)
	}
	data, _ := protocol.Encode(rep)
	_ = m.Respond(data)
}

type agentCtxKey struct{}

// RequireAgentCert serves h only to clients that presented a valid peer
// certificate of this cluster (an agent); others get 403 and nothing else.
// AgentFromRequest tells h which node it is.
func RequireAgentCert(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		node, ok := agentFromTLS(r.TLS)
		if !ok {
			http.Error(w, "this endpoint needs an agent's peer certificate (mutual TLS with the cluster CA)", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), agentCtxKey{}, node)))
	})
}

// AgentFromRequest returns the node whose peer certificate authenticated r
// (inside a handler wrapped by RequireAgentCert).
func AgentFromRequest(r *http.Request) (string, bool) {
	node, ok := r.Context().Value(agentCtxKey{}).(string)
	return node, ok
}

func agentFromTLS(cs *tls.ConnectionState) (string, bool) {
	// VerifiedChains is only set when the chain verified against the CA.
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", false
	}
	leaf := cs.VerifiedChains[0][0]
	if len(leaf.DNSNames) != 1 {
		return "", false
	}
	return protocol.PeerCertNode(leaf.DNSNames[0])
}
