package protocol

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Envelope types.
const (
	TypeTask   = "task"
	TypeCancel = "cancel"
)

// SignedEnvelope carries a signed message. The signature covers Type, a
// newline and the exact Body bytes, so nothing is re-encoded before checking.
type SignedEnvelope struct {
	Type      string `json:"type"`
	Body      []byte `json:"body"`
	Signature []byte `json:"sig"`
}

func signedBytes(typ string, body []byte) []byte {
	b := make([]byte, 0, len(typ)+1+len(body))
	b = append(b, typ...)
	b = append(b, '\n')
	return append(b, body...)
}

// Sign encodes v as the envelope's body and signs it with key.
func Sign(key ed25519.PrivateKey, typ string, v any) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", typ, err)
	}
	env := SignedEnvelope{Type: typ, Body: body, Signature: ed25519.Sign(key, signedBytes(typ, body))}
	return json.Marshal(env)
}

// Errors a Verifier returns; test with errors.Is.
var (
	ErrBadSignature = errors.New("bad signature")
	ErrExpired      = errors.New("expired")
	ErrNotYetValid  = errors.New("not yet valid")
	ErrReplayed     = errors.New("replayed or out-of-order sequence number")
	ErrWrongNode    = errors.New("addressed to another node")
	ErrMalformed    = errors.New("malformed message")
)

// DefaultMaxClockSkew is how far a node's clock may be from the controller's
// before signed messages are refused for time reasons.
const DefaultMaxClockSkew = 30 * time.Second

// ClockError is a signed message refused for time reasons (it wraps ErrExpired
// or ErrNotYetValid). Skew estimates how far the node's clock is from the
// controller's: node time minus the time the controller signed the message
// (positive: the node is ahead); zero when the message carries no issue time.
type ClockError struct {
	Err      error
	NodeTime time.Time
	Issued   time.Time
	Expires  time.Time
	Skew     time.Duration
	Allowed  time.Duration
}

func (e *ClockError) Error() string {
	utc := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	if e.Issued.IsZero() {
		return fmt.Sprintf("%v at %s (node time %s, allowed clock skew %s)", e.Err, utc(e.Expires), utc(e.NodeTime), e.Allowed)
	}
	return fmt.Sprintf("%v: valid %s to %s, node time %s: %s (allowed %s; check NTP on the node)",
		e.Err, utc(e.Issued), utc(e.Expires), utc(e.NodeTime), DescribeSkew(e.Skew), e.Allowed)
}

func (e *ClockError) Unwrap() error { return e.Err }

// DescribeSkew says "node clock is 412s ahead of the controller's" (or behind).
func DescribeSkew(skew time.Duration) string {
	dir := "ahead of"
	if skew < 0 {
		dir, skew = "behind", -skew
	}
	return fmt.Sprintf("node clock is %s %s the controller's", skew.Round(time.Second), dir)
}

// Verifier checks signed envelopes for one node: signature by the controller's
// key, addressee, validity window and a strictly increasing sequence number.
type Verifier struct {
	Key  ed25519.PublicKey
	Node string
	// Now defaults to time.Now.
	Now func() time.Time
	// MaxClockSkew widens the validity window [issued, expires) on both ends:
	// 0 means DefaultMaxClockSkew, a negative value no allowance at all.
	MaxClockSkew time.Duration

	mu      sync.Mutex
	lastSeq uint64
}

// NewVerifier returns a Verifier that accepts only sequence numbers above lastSeq.
func NewVerifier(key ed25519.PublicKey, node string, lastSeq uint64) *Verifier {
	return &Verifier{Key: key, Node: node, lastSeq: lastSeq}
}

// LastSeq is the highest sequence number accepted so far.
func (v *Verifier) LastSeq() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.lastSeq
}

func (v *Verifier) open(data []byte, typ string, out any) error {
	var env SignedEnvelope
	if err := json.Unmarshal(data, &env); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if env.Type != typ {
		return fmt.Errorf("%w: envelope type %q, want %q", ErrMalformed, env.Type, typ)
	}
	if len(v.Key) != ed25519.PublicKeySize || len(env.Signature) != ed25519.SignatureSize ||
		!ed25519.Verify(v.Key, signedBytes(env.Type, env.Body), env.Signature) {
		return ErrBadSignature
	}
	if err := json.Unmarshal(env.Body, out); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

// checkTime accepts now in [issued-skew, expires+skew); a zero issued has no lower bound.
func (v *Verifier) checkTime(issued, expires time.Time) error {
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	allowed := v.MaxClockSkew
	switch {
	case allowed == 0:
		allowed = DefaultMaxClockSkew
	case allowed < 0:
		allowed = 0
	}
	ce := &ClockError{NodeTime: now, Issued: issued, Expires: expires, Allowed: allowed}
	if !issued.IsZero() {
		ce.Skew = now.Sub(issued)
	}
	switch {
	case !issued.IsZero() && now.Before(issued.Add(-allowed)):
		ce.Err = ErrNotYetValid
	case !now.Before(expires.Add(allowed)):
		ce.Err = ErrExpired
	default:
		return nil
	}
	return ce
}

func (v *Verifier) check(node string, seq uint64, issued, expires time.Time) error {
	if node != v.Node {
		return fmt.Errorf("%w: for %q, this is %q", ErrWrongNode, node, v.Node)
	}
	if err := v.checkTime(issued, expires); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if seq <= v.lastSeq {
		return fmt.Errorf("%w: seq %d, last accepted %d", ErrReplayed, seq, v.lastSeq)
	}
	v.lastSeq = seq
	return nil
}

// OpenTask verifies and decodes a signed task.
func (v *Verifier) OpenTask(data []byte) (*Task, error) {
	var t Task
	if err := v.open(data, TypeTask, &t); err != nil {
		return nil, err
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := v.check(t.Node, t.Seq, t.Issued, t.Expires); err != nil {
		return nil, fmt.Errorf("task %s: %w", t.ID, err)
	}
	return &t, nil
}

// OpenCancel verifies and decodes a signed cancel.
func (v *Verifier) OpenCancel(data []byte) (*Cancel, error) {
	var c Cancel
	if err := v.open(data, TypeCancel, &c); err != nil {
		return nil, err
	}
	if err := v.check(c.Node, c.Seq, time.Time{}, c.Expires); err != nil {
		return nil, fmt.Errorf("cancel %s: %w", c.TaskID, err)
	}
	return &c, nil
}
