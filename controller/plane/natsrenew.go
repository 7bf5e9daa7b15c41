package plane

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"golang.org/x/time/rate"
)

// An agent renews its NATS user JWT over NATS while the JWT logs in (that
// reaches whichever controller leads), else over HTTPS (its JWT may have
// expired while it was off); not with its peer certificate (a removed node's
// certificate stays valid for its 24 h). Either way it proves it holds the
// user key the controller issued to the node at its last join by signing a
// fresh nonce with it: a thief with an older key of the node (not yet
// revoked everywhere, or expired) gets nothing. A JWT without the key's seed
// is useless, so the answer gives nothing to whoever replays a request.

// nonceTTL is how long a nonce may be used.
const nonceTTL = time.Minute

// renewRateFactor: renewals per second and burst allowed per source address,
// in join rates.
const renewRateFactor = 10

func cmpOr[T int | float64](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// nonceMinter makes stateless nonces: expiry, random bytes and an HMAC with
// a key of this process (a nonce is good on the controller that made it).
type nonceMinter struct{ key []byte }

func newNonceMinter() *nonceMinter {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return &nonceMinter{key: k}
}

func (n *nonceMinter) mac(b []byte) []byte {
	m := hmac.New(sha256.New, n.key)
	m.Write([]byte("flotilla nats nonce\x00"))
	m.Write(b)
	return m.Sum(nil)[:16]
}

func (n *nonceMinter) mint(now time.Time) string {
	b := make([]byte, 24, 40)
	binary.BigEndian.PutUint64(b, uint64(now.Add(nonceTTL).Unix()))
	if _, err := rand.Read(b[8:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return base64.RawURLEncoding.EncodeToString(append(b, n.mac(b)...))
}

func (n *nonceMinter) check(nonce string, now time.Time) error {
	b, err := base64.RawURLEncoding.DecodeString(nonce)
	if err != nil || len(b) != 40 || !hmac.Equal(n.mac(b[:24]), b[24:]) {
		return errors.New("nonce not made by this controller")
	}
	if exp := time.Unix(int64(binary.BigEndian.Uint64(b[:8])), 0); now.After(exp) {
		return fmt.Errorf("nonce expired at %s", exp.UTC().Format(time.RFC3339))
	}
	return nil
}

// mountNATSRenewal serves the renewal paths (an existing NATS cluster only),
// behind their own rate limit per source address and cap in flight.
func (c *Controller) mountNATSRenewal(mux *http.ServeMux) {
	if c.nu == nil {
		return
	}
	// Every node renews twice a lifetime, behind NAT from one address too:
	// ten times the join rate per source.
	guard := newJoinGuard(renewRateFactor*cmpOr(c.opts.JoinRate, defaultJoinRate), renewRateFactor*cmpOr(c.opts.JoinBurst, defaultJoinBurst),
		c.opts.MaxJoinSources, c.opts.MaxConcurrentJoins)
	mux.Handle("POST "+protocol.PathNATSNonce, c.metrics.instrument("POST "+protocol.PathNATSNonce, guard.wrap(c.log.Warn,
		func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, protocol.NATSNonce{Nonce: c.nu.nonces.mint(time.Now())})
		})))
	mux.Handle("POST "+protocol.PathNATSRenew, c.metrics.instrument("POST "+protocol.PathNATSRenew, guard.wrap(c.log.Warn, c.handleNATSRenew)))
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// handleNATSRenew answers a renewal over HTTPS.
func (c *Controller) handleNATSRenew(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, protocol.MaxNATSRenewBytes))
	if err != nil {
		c.offenses.warn("(unknown)", "nats renewal", "NATS user renewal refused", "remote", r.RemoteAddr, "err", err)
		writeJSON(w, http.StatusRequestEntityTooLarge, protocol.NATSRenewReply{Error: fmt.Sprintf("renewal request: over %d bytes or unreadable", protocol.MaxNATSRenewBytes)})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	rep := c.renewNATSUser(ctx, body, "", r.RemoteAddr)
	writeJSON(w, cmpOr(rep.Status, http.StatusOK), rep)
}

// renewNATSUser checks a renewal request and issues the JWT. subjectNode is
// the node a NATS request came from ("" over HTTPS); from is for the log.
func (c *Controller) renewNATSUser(ctx context.Context, body []byte, subjectNode, from string) protocol.NATSRenewReply {
	refuse := func(node string, code int, public string, err error) protocol.NATSRenewReply {
		if node == "" {
			node = "(unknown)"
		}
		c.offenses.warn(node, "nats renewal", "NATS user renewal refused", "from", from, "err", err)
		return protocol.NATSRenewReply{Error: public, Status: code}
	}
	req, err := protocol.DecodeNATSRenewRequest(body)
	if err != nil {
		var probe struct{ Node string }
		_ = json.Unmarshal(body, &probe)
		if protocol.ValidateNodeName(probe.Node) != nil {
			probe.Node = subjectNode
		}
		return refuse(probe.Node, http.StatusBadRequest, "renewal request: "+err.Error(), err)
	}
	if subjectNode != "" && req.Node != subjectNode {
		return refuse(subjectNode, http.StatusForbidden, "renewal refused: a node renews its own user only", fmt.Errorf("asked to renew node %s's user", req.Node))
	}
	if err := c.nu.nonces.check(req.Nonce, time.Now()); err != nil {
		// Not 403: the agent asks for a new nonce at once (it may have
		// reached another controller of an HA group for it).
		return refuse(req.Node, http.StatusUnauthorized, "renewal refused: "+err.Error()+": ask for a new nonce", err)
	}
	kp, err := nkeys.FromPublicKey(req.UserKey)
	if err != nil {
		return refuse(req.Node, http.StatusBadRequest, "renewal request: userKey: "+err.Error(), err)
	}
	if kp.Verify(protocol.NATSRenewMessage(req.Node, req.UserKey, req.Nonce), req.Sig) != nil {
		return refuse(req.Node, http.StatusForbidden, "renewal refused: bad signature", errors.New("signature does not verify with the user key"))
	}
	tok, err := c.nu.renewNode(ctx, req.Node, req.UserKey)
	switch {
	case errors.Is(err, errNotCurrentUser):
		return refuse(req.Node, http.StatusForbidden, fmt.Sprintf("renewal refused: %s: join again with a token (`flotilla token create --for %s`)", errNotCurrentUser, req.Node), err)
	case err != nil:
		c.log.Error("NATS user renewal failed", "node", req.Node, "err", err)
		return protocol.NATSRenewReply{Error: "renewal failed on the controller: retry later", Status: http.StatusServiceUnavailable}
	}
	c.log.Debug("renewed a node's NATS user JWT", "node", req.Node, "natsUser", req.UserKey, "from", from)
	return protocol.NATSRenewReply{JWT: tok}
}

// subscribeNATSRenewal answers the renewal requests nodes send over NATS.
func (c *Controller) subscribeNATSRenewal() error {
	for name, h := range map[string]nats.MsgHandler{
		protocol.RequestNATSNonce: c.onNATSNonce,
		protocol.RequestNATSRenew: c.onNATSRenew,
	} {
		sub, err := c.nc.Subscribe(protocol.AllNodeRequests(name), c.fromNode(h))
		if err != nil {
			return fmt.Errorf("subscribe to NATS user renewals: %w", err)
		}
		c.subs = append(c.subs, sub)
	}
	return nil
}

func (c *Controller) onNATSNonce(m *nats.Msg) {
	node, _ := protocol.NodeFromSubject(m.Subject)
	rep := protocol.NATSNonce{Nonce: c.nu.nonces.mint(time.Now())}
	if !c.nu.limit.allow(node, time.Now()) {
		c.offenses.warn(node, "nats renewal rate", "NATS user renewal requests over the rate allowed per node: refused")
		rep = protocol.NATSNonce{Error: "too many renewal requests: retry later", Status: http.StatusTooManyRequests}
	}
	data, _ := protocol.Encode(rep)
	c.respondToNode(m, data)
}

func (c *Controller) onNATSRenew(m *nats.Msg) {
	node, _ := protocol.NodeFromSubject(m.Subject)
	var rep protocol.NATSRenewReply
	if !c.nu.limit.allow(node, time.Now()) {
		c.offenses.warn(node, "nats renewal rate", "NATS user renewal requests over the rate allowed per node: refused")
		rep = protocol.NATSRenewReply{Error: "too many renewal requests: retry later", Status: http.StatusTooManyRequests}
	} else {
		ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
		rep = c.renewNATSUser(ctx, m.Data, node, "nats")
		cancel()
	}
	data, _ := protocol.Encode(rep)
	c.respondToNode(m, data)
}

// nodeLimiter bounds the renewal requests each node sends over NATS
// (nodeRenewRate a second, bursts of nodeRenewBurst); the map holds at most
// maxOffenseKeys nodes, then starts afresh.
type nodeLimiter struct {
	mu    sync.Mutex
	nodes map[string]*rate.Limiter
}

const (
	nodeRenewRate  = 1
	nodeRenewBurst = 6
)

func newNodeLimiter() *nodeLimiter { return &nodeLimiter{nodes: map[string]*rate.Limiter{}} }

func (l *nodeLimiter) allow(node string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.nodes[node]
	if lim == nil {
		if len(l.nodes) >= maxOffenseKeys {
			clear(l.nodes)
		}
		lim = rate.NewLimiter(nodeRenewRate, nodeRenewBurst)
		l.nodes[node] = lim
	}
	return lim.AllowN(now, 1)
}
