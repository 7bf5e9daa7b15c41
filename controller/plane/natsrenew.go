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
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nkeys"
)

// An agent renews its NATS user JWT over HTTPS, without its NATS connection
// (its JWT may have expired while it was off) and without its peer
// certificate (a removed node's certificate stays valid for its 24 h): it
// proves it holds the user key the controller issued to the node at its last
// join by signing a fresh nonce with it. A JWT without the key's seed is
// useless, so the answer gives nothing to whoever replays a request.

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

// handleNATSRenew answers a renewal: a new JWT for the node's current key.
func (c *Controller) handleNATSRenew(w http.ResponseWriter, r *http.Request) {
	refuse := func(node string, code int, public string, err error) {
		if node == "" {
			node = "(unknown)"
		}
		c.offenses.warn(node, "nats renewal", "NATS user renewal refused", "remote", r.RemoteAddr, "err", err)
		writeJSON(w, code, protocol.NATSRenewReply{Error: public})
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, protocol.MaxNATSRenewBytes))
	if err != nil {
		refuse("", http.StatusRequestEntityTooLarge, fmt.Sprintf("renewal request: over %d bytes or unreadable", protocol.MaxNATSRenewBytes), err)
		return
	}
	req, err := protocol.DecodeNATSRenewRequest(body)
	if err != nil {
		var probe struct{ Node string }
		_ = json.Unmarshal(body, &probe)
		if protocol.ValidateNodeName(probe.Node) != nil {
			probe.Node = ""
		}
		refuse(probe.Node, http.StatusBadRequest, "renewal request: "+err.Error(), err)
		return
	}
	if err := c.nu.nonces.check(req.Nonce, time.Now()); err != nil {
		// Not 403: the agent asks for a new nonce at once (it may have
		// reached another controller of an HA group for it).
		refuse(req.Node, http.StatusUnauthorized, "renewal refused: "+err.Error()+": ask for a new nonce", err)
		return
	}
	kp, err := nkeys.FromPublicKey(req.UserKey)
	if err != nil {
		refuse(req.Node, http.StatusBadRequest, "renewal request: userKey: "+err.Error(), err)
		return
	}
	if kp.Verify(protocol.NATSRenewMessage(req.Node, req.UserKey, req.Nonce), req.Sig) != nil {
		refuse(req.Node, http.StatusForbidden, "renewal refused: bad signature", errors.New("signature does not verify with the user key"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	tok, err := c.nu.renewNode(ctx, req.Node, req.UserKey)
	switch {
	case errors.Is(err, errNotCurrentUser):
		refuse(req.Node, http.StatusForbidden, fmt.Sprintf("renewal refused: %s: join again with a token (`flotilla token create --for %s`)", errNotCurrentUser, req.Node), err)
		return
	case err != nil:
		c.log.Error("NATS user renewal failed", "node", req.Node, "err", err)
		writeJSON(w, http.StatusServiceUnavailable, protocol.NATSRenewReply{Error: "renewal failed on the controller: retry later"})
		return
	}
	c.log.Debug("renewed a node's NATS user JWT", "node", req.Node, "natsUser", req.UserKey)
	writeJSON(w, http.StatusOK, protocol.NATSRenewReply{JWT: tok})
}
