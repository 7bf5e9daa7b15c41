package tracker

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// PeersResponse is the body of GET /v1/tracker/peers/<digest>.
type PeersResponse struct {
	Peers []pieces.PeerState `json:"peers"`
}

// Access says who may use the tracker. The zero value lets anyone announce
// anything (a tracker for tests and `flotilla blob`); the controller sets
// both functions.
type Access struct {
	// Identify returns the node whose peer certificate authenticated r; an
	// agent announces only itself, never the seed.
	Identify func(r *http.Request) (node string, ok bool)
	// Member says whether node is in the controller's inventory now. Peers
	// lists members only (and the seed), so a removed node stops being
	// anyone's source at once, whatever it announced before.
	Member func(node string) bool
	// Log receives refusals, naming the node; nil: slog.Default().
	Log *slog.Logger
}

// Handler serves the tracker over HTTP with no access control; mount it on
// an HTTPS server built with pieces.ServerTLSConfig so only the cluster's
// agents reach it. See HandlerWith.
func (t *Tracker) Handler() http.Handler { return t.HandlerWith(Access{}) }

// HandlerWith serves the tracker over HTTP:
//
//	POST /v1/tracker/announce         body: pieces.Announcement; 204 on success
//	GET  /v1/tracker/peers/<digest>   PeersResponse
//
// An announcement is decoded once, strictly (pieces.DecodeAnnouncement), and
// what is checked is what is recorded.
func (t *Tracker) HandlerWith(acc Access) http.Handler {
	log := acc.Log
	if log == nil {
		log = slog.Default()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tracker/announce", func(w http.ResponseWriter, r *http.Request) {
		node, known := "", true
		if acc.Identify != nil {
			node, known = acc.Identify(r)
		}
		a, err := pieces.DecodeAnnouncement(http.MaxBytesReader(w, r.Body, pieces.MaxAnnouncementSize+1))
		if err != nil {
			log.Warn("tracker: refused announcement", "node", node, "remote", r.RemoteAddr, "err", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if acc.Identify != nil && (!known || a.Peer.ID != node || a.Peer.ID == pieces.SeedID) {
			log.Warn("tracker: refused an announcement for another peer", "node", node, "peer", a.Peer.ID, "remote", r.RemoteAddr)
			http.Error(w, fmt.Sprintf("announcement for peer %q from node %q: an agent announces only itself", a.Peer.ID, node), http.StatusForbidden)
			return
		}
		if err := t.Announce(a); err != nil {
			log.Warn("tracker: refused announcement", "node", node, "remote", r.RemoteAddr, "err", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/tracker/peers/{digest}", func(w http.ResponseWriter, r *http.Request) {
		d, err := v1.NewHash(r.PathValue("digest"))
		if err != nil {
			http.Error(w, "digest: "+err.Error(), http.StatusBadRequest)
			return
		}
		peers := t.Peers(d)
		if acc.Member != nil {
			kept := peers[:0]
			for _, p := range peers {
				if p.ID == pieces.SeedID || acc.Member(p.ID) {
					kept = append(kept, p)
				}
			}
			peers = kept
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(PeersResponse{Peers: peers})
	})
	return mux
}
