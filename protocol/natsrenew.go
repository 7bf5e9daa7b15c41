package protocol

import (
	"encoding/base64"
	"fmt"
)

// On an existing NATS cluster a node's NATS user JWT expires; the agent
// renews it over HTTPS (a path that works once the JWT has expired, too):
// it fetches a nonce, signs NATSRenewMessage with its user key (the nkey
// whose seed it got at its join) and gets a new JWT for the same key. The
// controller renews only the key it issued to the node at its last join.
const (
	PathNATSNonce = "/v1/nats/nonce"
	PathNATSRenew = "/v1/nats/renew"
)

// The same two requests as node requests (NodeRequestSubject), while the JWT
// still logs in: they reach whichever controller leads an HA group, also one
// whose HTTPS address the node never learnt. Answers carry Status, the HTTP
// status the HTTPS path would give.
const (
	RequestNATSNonce = "nats-nonce"
	RequestNATSRenew = "nats-renew"
)

// Sizes of a renewal.
const (
	// MaxNATSRenewBytes bounds a renewal request body.
	MaxNATSRenewBytes = 2048
	// NATSUserKeyLen is the length of an nkey user public key ("U" + base32).
	NATSUserKeyLen = 56
	// NATSNonceLen is the length of a nonce the controller hands out (base64url).
	NATSNonceLen = 54
	// NATSSigLen is the length of an ed25519 signature.
	NATSSigLen = 64
)

// NATSNonce is the answer to POST PathNATSNonce.
type NATSNonce struct {
	Nonce  string `json:"nonce,omitempty"`
	Error  string `json:"error,omitempty"`
	Status int    `json:"status,omitempty"`
}

// NATSRenewRequest is POSTed to PathNATSRenew.
type NATSRenewRequest struct {
	Node    string `json:"node"`
	UserKey string `json:"userKey"`
	Nonce   string `json:"nonce"`
	// Sig is the user key's signature of NATSRenewMessage(Node, UserKey, Nonce).
	Sig []byte `json:"sig"`
}

// NATSRenewReply carries the new user JWT (or, with a 4xx/5xx status, Error).
type NATSRenewReply struct {
	JWT    string `json:"jwt,omitempty"`
	Error  string `json:"error,omitempty"`
	Status int    `json:"status,omitempty"`
}

// NATSRenewMessage is what the agent signs: a context string, so that the
// signature means nothing anywhere else (the same key signs NATS server
// nonces), and the request's fields.
func NATSRenewMessage(node, userKey, nonce string) []byte {
	return []byte("flotilla nats renew v1\x00" + node + "\x00" + userKey + "\x00" + nonce)
}

// ValidateNATSUserKey accepts an nkey user public key's form: "U" and 55
// base32 characters (the controller checks its checksum too).
func ValidateNATSUserKey(k string) error {
	if len(k) != NATSUserKeyLen || k[0] != 'U' {
		return fmt.Errorf("want %d characters starting with U", NATSUserKeyLen)
	}
	for _, r := range k {
		if !(r >= 'A' && r <= 'Z' || r >= '2' && r <= '7') {
			return fmt.Errorf("character %q is not base32", r)
		}
	}
	return nil
}

// Validate checks every field's form.
func (r *NATSRenewRequest) Validate() error {
	if err := ValidateNodeName(r.Node); err != nil {
		return fieldErr("node", r.Node, "%v", err)
	}
	if err := ValidateNATSUserKey(r.UserKey); err != nil {
		return fieldErr("userKey", r.UserKey, "%v", err)
	}
	if len(r.Nonce) != NATSNonceLen {
		return fieldErr("nonce", r.Nonce, "want %d characters", NATSNonceLen)
	}
	if _, err := base64.RawURLEncoding.DecodeString(r.Nonce); err != nil {
		return fieldErr("nonce", r.Nonce, "not base64url")
	}
	if len(r.Sig) != NATSSigLen {
		return fieldErr("sig", "", "%d bytes, want %d", len(r.Sig), NATSSigLen)
	}
	return nil
}

// DecodeNATSRenewRequest decodes and validates a renewal request body.
func DecodeNATSRenewRequest(data []byte) (*NATSRenewRequest, error) {
	if len(data) > MaxNATSRenewBytes {
		return nil, fmt.Errorf("NATS renewal request: %d bytes, at most %d", len(data), MaxNATSRenewBytes)
	}
	var r NATSRenewRequest
	if err := DecodeStrict(data, MaxNATSRenewBytes, &r); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}
