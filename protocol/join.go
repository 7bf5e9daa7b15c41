package protocol

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// HTTP paths the controller serves over HTTPS.
const (
	PathCACert = "/v1/ca.crt"
	PathJoin   = "/v1/join"
)

// JoinRequest is POSTed to /v1/join with a token and the node's facts.
type JoinRequest struct {
	Token string `json:"token"`
	Name  string `json:"name"`
	Facts Facts  `json:"facts"`
	// CSR (PEM) asks for the node's peer certificate (PeerCertName) with the join.
	CSR []byte `json:"csr,omitempty"`
}

// AdminCredsFile is the name of the admin credential file (a Credentials for
// the admin user) the controller writes into its data dir.
const AdminCredsFile = "admin.creds"

// Credentials are what a node keeps after joining; with them it no longer needs a token.
type Credentials struct {
	Node     string   `json:"node"`
	NATSURLs []string `json:"natsURLs"`
	User     string   `json:"user"`
	Password string   `json:"password"`
	// JWT and NKeySeed replace User and Password on an existing NATS cluster
	// (decentralized auth): a user JWT the controller issued and its seed.
	JWT      string `json:"jwt,omitempty"`
	NKeySeed string `json:"nkeySeed,omitempty"`
	// NATSCAPEM is the CA of an existing NATS cluster's TLS certificates
	// (empty: the embedded server's, CAPEM, or the system's for tls:// URLs).
	NATSCAPEM []byte `json:"natsCAPEM,omitempty"`
	// CAPEM is the controller CA that signs the NATS and HTTPS server certificates.
	CAPEM []byte `json:"caPEM"`
	// SigningKey is the controller's ed25519 task-signing public key.
	SigningKey []byte `json:"signingKey"`
	// HTTPURL is the controller's HTTPS base (https://HOST:9443).
	HTTPURL string `json:"httpURL,omitempty"`
	// PeerCert (PEM) is the node's peer certificate, signed by the CA for the
	// join request's CSR; the agent keeps it beside its key, not in this file.
	PeerCert []byte `json:"peerCert,omitempty"`
}

// JoinError is the body of a refused join (HTTP 4xx/5xx).
type JoinError struct {
	Error string `json:"error"`
}

// CAHash returns "sha256:<hex>" of the exact CA PEM bytes served at /v1/ca.crt,
// the value `--ca-hash` takes (what `sha256sum ca.crt` prints).
func CAHash(pem []byte) string {
	sum := sha256.Sum256(pem)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParseCAHash normalises a --ca-hash value ("sha256:<hex>" or bare hex).
func ParseCAHash(s string) (string, error) {
	h := strings.ToLower(strings.TrimPrefix(strings.TrimSpace(s), "sha256:"))
	if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("CA hash %q: want sha256:<64 hex digits>", s)
	}
	return "sha256:" + h, nil
}
