package plane

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"time"

	"github.com/flotilla-dev/flotilla/internal/httpserve"
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
	mux.Handle("POST "+protocol.PathJoin, c.metrics.instrument("POST "+protocol.PathJoin, c.joins.wrap(c.log.Warn, c.handleJoin)))
	for pattern, h := range c.opts.Handlers {
		// Mounted components serve blobs and pieces: long answers, each write bounded.
		mux.Handle(pattern, c.metrics.instrument(pattern, httpserve.Streaming(h)))
	}
	for pattern, h := range c.opts.AgentHandlers {
		mux.Handle(pattern, c.RequireMember(h))
	}
	c.mountNATSRenewal(mux)
	ln, err := net.Listen("tcp", c.opts.HTTPListen)
	if err != nil {
		return &OptionError{Option: "HTTPListen", Err: fmt.Errorf("HTTPS listen address %s: %w", c.opts.HTTPListen, err)}
	}
	c.httpAddr = ln.Addr()
	sub, err := c.nc.Subscribe(protocol.AllNodeRequests(protocol.RequestPeerCert), c.fromNode(c.onPeerCert))
	if err != nil {
		ln.Close()
		return fmt.Errorf("subscribe peer certificate requests: %w", err)
	}
	c.subs = append(c.subs, sub)
	if err := c.nc.Flush(); err != nil {
		ln.Close()
		return fmt.Errorf("subscribe peer certificate requests: %w", err)
	}
	// Agents present their peer certificate to reach the tracker and the seed
	// (RequireAgentCert); joins, the CA and the bootstrap need none.
	c.http = httpserve.New(mux, &tls.Config{Certificates: []tls.Certificate{c.pki.server}, MinVersion: tls.VersionTLS12,
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: c.pki.certPool()},
		slog.NewLogLogger(c.log.With("component", "https").Handler(), slog.LevelDebug))
	c.http.Logger = c.log.With("component", "https")
	if c.opts.HTTPReadHeaderTimeout > 0 {
		c.http.ReadHeaderTimeout = c.opts.HTTPReadHeaderTimeout
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

// writeJoinError answers a refused join with a JSON body.
func writeJoinError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(protocol.JoinError{Error: msg})
}

// handleJoin exchanges a token for a new node's credentials. Every token
// failure gets the same answer (errJoinToken); the log says which it was.
func (c *Controller) handleJoin(w http.ResponseWriter, r *http.Request) {
	node := ""
	fail := func(code int, public string, err error) {
		c.log.Warn("join refused", "node", node, "remote", r.RemoteAddr, "err", err)
		writeJoinError(w, code, public)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, protocol.MaxJoinRequestBytes))
	if err != nil {
		fail(http.StatusRequestEntityTooLarge, fmt.Sprintf("join request body: over %d bytes or unreadable", protocol.MaxJoinRequestBytes), err)
		return
	}
	req, err := protocol.DecodeJoinRequest(body)
	if err != nil {
		var fe *protocol.FieldError
		if errors.As(err, &fe) {
			var probe struct{ Name string }
			_ = json.Unmarshal(body, &probe)
			node = probe.Name
			if len(node) > 128 {
				node = node[:128]
			}
			c.log.Warn("join refused: invalid report", "node", node, "field", fe.Field, "remote", r.RemoteAddr, "err", err)
			writeJoinError(w, http.StatusBadRequest, "join request: "+err.Error())
			return
		}
		fail(http.StatusBadRequest, "join request: "+err.Error(), err)
		return
	}
	node = req.Name
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if _, _, err := c.tokens.check(ctx, req.Token, req.Name); err != nil {
		fail(http.StatusForbidden, errJoinToken, err)
		return
	}
	var peerCert []byte
	if len(req.CSR) > 0 {
		// Before admitting: a bad request must not cost the node its old credentials.
		if peerCert, err = c.pki.signPeerCert(req.Name, req.CSR); err != nil {
			fail(http.StatusBadRequest, err.Error(), err)
			return
		}
	}
	cr, err := c.joinNode(ctx, req, sourceIP(r.RemoteAddr))
	switch {
	case errors.Is(err, errNodeExists):
		fail(http.StatusConflict, err.Error(), err)
		return
	case errors.Is(err, ErrTokenUnknown), errors.Is(err, ErrTokenExpired), errors.Is(err, ErrTokenUsedUp), errors.Is(err, ErrTokenWrongFor):
		fail(http.StatusForbidden, errJoinToken, err)
		return
	case errors.Is(err, context.DeadlineExceeded):
		// Waiting behind other joins (they are admitted one at a time) or a
		// slow store: the agent retries a 503, while a 500 would stop it for good.
		c.log.Warn("join postponed: controller busy", "node", node, "remote", r.RemoteAddr, "err", err)
		busy(w, http.StatusServiceUnavailable, "controller busy with other joins: retry later")
		return
	case err != nil:
		fail(http.StatusInternalServerError, "join failed on the controller: see its log", err)
		return
	}
	cr.PeerCert = peerCert
	c.log.Info("node joined", "node", req.Name, "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(cr)
}

// errNodeExists refuses a join under the name of a node in the inventory.
var errNodeExists = errors.New("already in the inventory")

// joinNode admits a node for a join request whose token checked out: a new
// name, or an existing one only with a token created --for it. It runs under
// joinMu, so that two joins of one name cannot both pass the check. The
// token's use is counted before the admission (compare-and-set on the token's
// record: joins on any controller never get more uses than --uses allows) and
// given back when the admission fails, so only a join that admitted the node
// spends a use.
// joinIP is the join's source address, which selects the node from now on.
func (c *Controller) joinNode(ctx context.Context, req *protocol.JoinRequest, joinIP string) (*protocol.Credentials, error) {
	c.joinMu.Lock()
	defer c.joinMu.Unlock()
	old, exists := c.inv.get(req.Name)
	tok, _, err := c.tokens.check(ctx, req.Token, req.Name)
	if err != nil {
		return nil, err
	}
	if exists && tok.For != req.Name {
		return nil, fmt.Errorf("node %s: %w: a join never replaces an existing node; if it is gone run `flotilla nodes remove %s`, "+
			"to re-join it create a token with `flotilla token create --for %s`", req.Name, errNodeExists, req.Name, req.Name)
	}
	if tok, err = c.tokens.use(ctx, req.Token, req.Name); err != nil {
		return nil, err
	}
	labels := joinLabels(tok.Labels, req.Facts.Labels, old.Labels, exists)
	cr, err := c.admitNode(ctx, req.Name, req.Facts, labels, joinIP)
	if err != nil {
		c.giveBackUse(ctx, tok.ID, req.Name)
		return nil, err
	}
	if refused := notApplied(req.Facts.Labels, labels); len(refused) > 0 {
		c.log.Warn("labels the join asked for are not applied: a token's --labels are all the labels of a node joining with it, "+
			"a re-join keeps the approved ones; an admin adds others with `flotilla nodes label`",
			"node", req.Name, "notApplied", formatLabels(refused), "labels", formatLabels(labels), "token", tok.ID)
	}
	return cr, nil
}

// joinLabels are the labels a joining node gets. Labels select roles, so:
//   - a token with --labels (admin-chosen) fixes the whole set of a new node;
//   - a token without takes the first join's proposal (whoever holds such a
//     token chooses them: give --labels to tokens for untrusted hands);
//   - a re-join keeps the approved labels, with the token's over them;
//
// and after that only the admin changes them (`flotilla nodes label`).
func joinLabels(token, proposed, approved map[string]string, rejoin bool) map[string]string {
	labels := map[string]string{}
	switch {
	case rejoin:
		maps.Copy(labels, approved)
	case len(token) == 0:
		maps.Copy(labels, proposed)
	}
	maps.Copy(labels, token)
	return labels
}

// notApplied lists the labels of proposed that labels does not have as asked.
func notApplied(proposed, labels map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range proposed {
		if got, ok := labels[k]; !ok || got != v {
			out[k] = v
		}
	}
	return out
}

// giveBackUse returns the use a failed join counted. It runs on a context of
// its own: the join's may be what expired.
func (c *Controller) giveBackUse(ctx context.Context, tokenID, node string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := c.tokens.giveBack(ctx, tokenID); err != nil {
		c.log.Error("a join failed after its token was checked, and the token's use could not be given back: "+
			"the token counts one use more than it admitted (see `flotilla token list`; create another token if it runs out)",
			"node", node, "token", tokenID, "err", err)
		return
	}
	c.log.Info("join failed after its token was checked: the token's use was given back", "node", node, "token", tokenID)
}

// admitNode creates or replaces a node's record with fresh credentials. All
// that can fail comes before the record is stored, and nothing after it: a
// failed admission leaves the inventory and the old credentials as they were.
func (c *Controller) admitNode(ctx context.Context, name string, facts protocol.Facts, labels map[string]string, joinIP string) (*protocol.Credentials, error) {
	secret := randomSecret()
	var cr *protocol.Credentials
	if c.issuer != nil {
		// A new key; the node's previous one is revoked (natsusers.go).
		tok, seed, key, err := c.nu.issueNode(ctx, name)
		if err != nil {
			return nil, err
		}
		// nats-server names a user by its key (e.g. in permission violations).
		c.log.Info("issued the node a NATS user", "node", name, "natsUser", key)
		cr = &protocol.Credentials{
			Node:       name,
			NATSURLs:   c.opts.NATSURLs,
			User:       AgentUser(name),
			JWT:        tok,
			NKeySeed:   seed,
			NATSCAPEM:  c.natsCA,
			CAPEM:      c.pki.caPEM,
			SigningKey: c.SigningKey(),
			HTTPURL:    c.HTTPURL(),
		}
	} else {
		cr = &protocol.Credentials{
			Node:       name,
			NATSURLs:   []string{c.NATSURL()},
			User:       AgentUser(name),
			Password:   secret,
			CAPEM:      c.pki.caPEM,
			SigningKey: c.SigningKey(),
			HTTPURL:    c.HTTPURL(),
		}
	}
	rec, ok := c.inv.get(name)
	if !ok {
		rec = NodeRecord{Name: name, JoinedAt: time.Now().UTC()}
	}
	if len(labels) == 0 {
		labels = nil
	}
	rec.Facts, rec.Labels, rec.SecretHash, rec.JoinIP = facts, labels, hashSecret(secret), joinIP
	if err := c.inv.put(ctx, &rec); err != nil {
		return nil, err
	}
	c.auth.setAgent(name, rec.SecretHash)
	if ok {
		c.log.Info("node re-joined: its old credentials no longer work", "node", name)
		c.disconnectNode(name)
	}
	return cr, nil
}

// LocalAgentCredentials admits a node without a token, for an agent running in
// this process (`flotilla controller --with-local-agent`); it connects over loopback.
func (c *Controller) LocalAgentCredentials(ctx context.Context, name string, facts protocol.Facts) (*protocol.Credentials, error) {
	if err := protocol.ValidateNodeName(name); err != nil {
		return nil, err
	}
	if err := protocol.ValidateFacts(&facts); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	// The local agent's labels are the controller's own flags: admin-chosen.
	c.joinMu.Lock()
	defer c.joinMu.Unlock()
	// In this process: no join, no source address (an admin may pin one).
	cr, err := c.admitNode(ctx, name, facts, maps.Clone(facts.Labels), "")
	if err != nil {
		return nil, err
	}
	if c.issuer == nil {
		cr.NATSURLs = []string{"tls://" + localNATSHostPort(c)}
	}
	return cr, nil
}

// disconnectNode closes the NATS connections of a node whose credentials were
// replaced, so that an old agent of the same name stops receiving its tasks.
func (c *Controller) disconnectNode(name string) {
	if c.ns == nil {
		// An existing NATS cluster: the servers close the connections of the
		// node's previous user when its revocation reaches them (natsusers.go).
		return
	}
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
	if !ok {
		return
	}
	req, err := protocol.DecodePeerCertRequest(m.Data)
	switch {
	case err != nil:
		c.offenses.warn(node, "bad peer certificate request", "refusing an invalid peer certificate request", "err", err)
		rep.Error = "peer certificate request: " + err.Error()
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
	c.respondToNode(m, data)
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
