package pieces

import (
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Peer names an agent (or the seed) that serves pieces.
type Peer struct {
	ID   string `json:"id"`   // the agent's name; the seed is "seed" unless configured
	Addr string `json:"addr"` // base URL of its piece server, https://host:port
}

// Announcement tells the tracker which pieces of a blob a peer holds. It is
// the body of POST /v1/tracker/announce.
type Announcement struct {
	Peer   Peer     `json:"peer"`
	Digest v1.Hash  `json:"digest"`
	Have   Bitfield `json:"have"`
	// Complete says the peer holds the whole verified blob.
	Complete bool `json:"complete,omitempty"`
}

// PeerState is what the tracker knows of one peer for one blob. Peers comes
// back from GET /v1/tracker/peers/<digest> in the order they first announced
// the blob: that order is the pipeline (each agent pulls from the one before).
type PeerState struct {
	Peer
	Have     Bitfield  `json:"have"`
	Complete bool      `json:"complete"`
	Seen     time.Time `json:"seen"`
}

// Why a peer did not serve what it announced (FailureReport.Reason).
const (
	// FailNotHeld: the peer answered 404 for a piece it announced it holds.
	FailNotHeld = "not-held"
	// FailBadPiece: the peer served bytes that do not match the piece list.
	FailBadPiece = "bad-piece"
	// FailImpostor: the server at the peer's address is not that peer.
	FailImpostor = "impostor"
	// FailUnreachable: nothing answered at the peer's address.
	FailUnreachable = "unreachable"
)

// FailureReport tells the tracker that a peer did not serve a piece of a
// blob it announced. It is the body of POST /v1/tracker/report; the
// reporter is the node of the request's peer certificate, never a field.
type FailureReport struct {
	Peer   string  `json:"peer"` // the peer's ID, as the tracker listed it
	Digest v1.Hash `json:"digest"`
	Reason string  `json:"reason"` // one of the Fail… constants
}

// Validate checks the report's fields.
func (f FailureReport) Validate() error {
	if f.Peer == "" || len(f.Peer) > 253 {
		return fmt.Errorf("failure report: peer %q: want 1 to 253 characters", f.Peer)
	}
	if f.Digest.Algorithm != "sha256" || len(f.Digest.Hex) != 64 {
		return fmt.Errorf("failure report: digest %q: want sha256:<64 hex>", f.Digest)
	}
	switch f.Reason {
	case FailNotHeld, FailBadPiece, FailImpostor, FailUnreachable:
		return nil
	}
	return fmt.Errorf("failure report: reason %q: want %s, %s, %s or %s", f.Reason, FailNotHeld, FailBadPiece, FailImpostor, FailUnreachable)
}
