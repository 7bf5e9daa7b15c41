package pieces

import (
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
