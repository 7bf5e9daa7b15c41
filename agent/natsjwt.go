package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// On an existing NATS cluster the agent's user JWT expires (the controller's
// --nats-user-ttl): the agent renews it at half its lifetime, over NATS while
// the JWT logs in, else over HTTPS, keeping its key; it writes the JWT to its
// credentials file and reconnects with it (NATS cannot log a live connection
// in again). An agent whose JWT expired while it was off renews first thing
// (over HTTPS); one the controller refuses (the node was removed or joined
// again elsewhere) says so and keeps asking slowly.

// errRenewRefused: the controller will not renew this key.
var errRenewRefused = errors.New("controller refused to renew this node's NATS user")

// renewRefusedRetry is how often a refused agent asks again.
const renewRefusedRetry = time.Minute

// natsJWT is the agent's current NATS user JWT.
func (a *Agent) natsJWT() string {
	a.jwtMu.Lock()
	defer a.jwtMu.Unlock()
	return a.jwt
}

// jwtLife returns when tok was issued and when it expires (zero: never).
func jwtLife(tok string) (issued, expires time.Time, err error) {
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("NATS user JWT: %w", err)
	}
	if uc.Expires == 0 {
		return time.Unix(uc.IssuedAt, 0), time.Time{}, nil
	}
	return time.Unix(uc.IssuedAt, 0), time.Unix(uc.Expires, 0), nil
}

// runNATSRenewal renews the JWT at half-life until ctx ends.
func (a *Agent) runNATSRenewal(ctx context.Context) {
	failures := 0
	var retryIn time.Duration
	for {
		issued, expires, err := jwtLife(a.natsJWT())
		if err != nil {
			a.log.Error("cannot read this node's NATS user JWT: it is not renewed", "err", err)
			return
		}
		if expires.IsZero() {
			return // a JWT without expiry (an older controller): nothing to renew
		}
		wait := time.Until(issued.Add(expires.Sub(issued) / 2))
		if failures > 0 {
			wait = retryIn
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(wait, 0)):
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		tok, err := a.renewJWT(rctx)
		cancel()
		if err != nil {
			failures++
			retryIn = backoff(failures)
			if errors.Is(err, errRenewRefused) {
				retryIn = renewRefusedRetry
				a.log.Error("this node's NATS user is no longer renewed: join again with a token (`flotilla token create --for NAME`)",
					"err", err, "expires", expires.UTC().Format(time.RFC3339))
			} else {
				a.log.Warn("renew the NATS user JWT; retrying", "err", err, "expires", expires.UTC().Format(time.RFC3339), "in", retryIn.Round(time.Millisecond))
			}
			continue
		}
		failures = 0
		if err := a.setNATSJWT(tok); err != nil {
			a.log.Warn("keep the renewed NATS user JWT in the credentials file (it is used until the agent restarts)", "err", err)
		}
		_, newExp, _ := jwtLife(tok)
		a.log.Info("renewed its NATS user JWT", "expires", newExp.UTC().Format(time.RFC3339))
		a.reconnectForJWT(ctx, issued, expires)
	}
}

// setNATSJWT takes a renewed JWT for the next connection and keeps it in the
// credentials file (written whole, atomically: an agent that dies here
// restarts with the old or the new JWT, both of its key).
func (a *Agent) setNATSJWT(tok string) error {
	a.jwtMu.Lock()
	a.jwt = tok
	a.jwtMu.Unlock()
	cr := *a.creds
	cr.JWT = tok
	return saveCredentials(a.opts.DataDir, &cr)
}

// reconnectForJWT reconnects so that the connection runs on the renewed JWT,
// once no task runs (a reconnect is a blip) or at 4/5 of the old JWT's
// lifetime at the latest (the server closes it at its expiry).
func (a *Agent) reconnectForJWT(ctx context.Context, oldIssued, oldExpires time.Time) {
	latest := oldIssued.Add(oldExpires.Sub(oldIssued) * 4 / 5)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for a.runningTasks() > 0 && time.Now().Before(latest) {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	if a.nc != nil && !a.nc.IsClosed() {
		if err := a.nc.ForceReconnect(); err != nil {
			a.log.Warn("reconnect with the renewed NATS user JWT", "err", err)
		}
	}
}

func (a *Agent) runningTasks() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.running)
}

// renewJWT asks the controller for a new JWT of the agent's user key: a
// nonce, then the nonce signed with the key. Over NATS first, while the JWT
// still logs in (that reaches whichever controller leads), else over HTTPS
// (that works once it expired).
func (a *Agent) renewJWT(ctx context.Context) (string, error) {
	kp, err := nkeys.FromSeed([]byte(a.creds.NKeySeed))
	if err != nil {
		return "", fmt.Errorf("NATS user seed in the credentials: %w", err)
	}
	pub, _ := kp.PublicKey()
	var tok string
	if a.nc != nil && a.nc.IsConnected() {
		if tok, err = a.renewOverNATS(ctx, kp, pub); err == nil || errors.Is(err, errRenewRefused) {
			return checkRenewed(tok, pub, err)
		}
		a.log.Debug("renew the NATS user JWT over NATS failed; trying HTTPS", "err", err)
	}
	tok, err = renewOverHTTPS(ctx, a.creds, a.opts.Name, kp, pub)
	return checkRenewed(tok, pub, err)
}

// checkRenewed accepts a renewed JWT only for this node's key and unexpired.
func checkRenewed(tok, pub string, err error) (string, error) {
	if err != nil {
		return "", err
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		return "", fmt.Errorf("renewed NATS user JWT: %w", err)
	}
	if uc.Subject != pub {
		return "", fmt.Errorf("renewed NATS user JWT is for %s, not this node's key %s", uc.Subject, pub)
	}
	if uc.Expires != 0 && time.Unix(uc.Expires, 0).Before(time.Now()) {
		return "", fmt.Errorf("renewed NATS user JWT expired at %s already (is this host's clock right?)", time.Unix(uc.Expires, 0).UTC().Format(time.RFC3339))
	}
	return tok, nil
}

// statusErr turns a refusal's status into an error (403: errRenewRefused).
func statusErr(what string, status int, reason string) error {
	switch {
	case status == 0 || status == http.StatusOK:
		return nil
	case status == http.StatusForbidden:
		return fmt.Errorf("%w: %s", errRenewRefused, reason)
	}
	return fmt.Errorf("%s: status %d %s", what, status, reason)
}

func (a *Agent) renewOverNATS(ctx context.Context, kp nkeys.KeyPair, pub string) (string, error) {
	request := func(name string, data []byte, out any) error {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		m, err := a.nc.RequestWithContext(rctx, protocol.NodeRequestSubject(a.opts.Name, name), data)
		if err != nil {
			return fmt.Errorf("%s request: %w", name, err)
		}
		return protocol.Decode(m.Data, out)
	}
	var n protocol.NATSNonce
	if err := request(protocol.RequestNATSNonce, nil, &n); err != nil {
		return "", err
	}
	if err := statusErr("nonce", n.Status, n.Error); err != nil {
		return "", err
	}
	sig, err := kp.Sign(protocol.NATSRenewMessage(a.opts.Name, pub, n.Nonce))
	if err != nil {
		return "", err
	}
	data, _ := protocol.Encode(protocol.NATSRenewRequest{Node: a.opts.Name, UserKey: pub, Nonce: n.Nonce, Sig: sig})
	var rep protocol.NATSRenewReply
	if err := request(protocol.RequestNATSRenew, data, &rep); err != nil {
		return "", err
	}
	return rep.JWT, statusErr("renewal", rep.Status, rep.Error)
}

func renewOverHTTPS(ctx context.Context, cr *protocol.Credentials, node string, kp nkeys.KeyPair, pub string) (string, error) {
	if cr.HTTPURL == "" {
		return "", errors.New("the credentials name no controller HTTPS address (httpURL): join again with a token")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cr.CAPEM) {
		return "", errors.New("the credentials hold no controller CA (caPEM): join again with a token")
	}
	cl := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true}}
	var n protocol.NATSNonce
	if err := postJSON(ctx, cl, cr.HTTPURL+protocol.PathNATSNonce, nil, &n); err != nil {
		return "", err
	}
	sig, err := kp.Sign(protocol.NATSRenewMessage(node, pub, n.Nonce))
	if err != nil {
		return "", err
	}
	var rep protocol.NATSRenewReply
	if err := postJSON(ctx, cl, cr.HTTPURL+protocol.PathNATSRenew, protocol.NATSRenewRequest{Node: node, UserKey: pub, Nonce: n.Nonce, Sig: sig}, &rep); err != nil {
		return "", err
	}
	return rep.JWT, nil
}

// postJSON posts body (nil: none) and decodes a 200 answer into out; a 403
// is errRenewRefused with the controller's reason.
func postJSON(ctx context.Context, cl *http.Client, url string, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := cl.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w: %w", url, errUnreachable, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var reason struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(data, &reason)
	switch {
	case resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%w: %s", errRenewRefused, reason.Error)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("%s: HTTP %d %s", url, resp.StatusCode, reason.Error)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s: answer: %w", url, err)
	}
	return nil
}
