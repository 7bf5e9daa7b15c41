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
	ln, err := net.Listen("tcp", c.opts.HTTPListen)
	if err != nil {
		return fmt.Errorf("--http-listen %s: %w", c.opts.HTTPListen, err)
	}
	c.httpAddr = ln.Addr()
	c.http = &http.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{c.pki.server}, MinVersion: tls.VersionTLS12},
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
	cr, err := c.admitNode(ctx, req.Name, req.Facts)
	if err != nil {
		fail(http.StatusInternalServerError, err)
		return
	}
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
