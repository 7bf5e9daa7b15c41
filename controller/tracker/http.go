package tracker

import (
	"encoding/json"
	"log/slog"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/bundle/pieces"
)

// PeersResponse is the body of GET /v1/tracker/peers/<digest>.
type PeersResponse struct {
	Peers []pieces.PeerState `json:"peers"`
}

// maxAnnounceBody bounds an announcement: a bitfield of a million pieces is 128 KiB.
const maxAnnounceBody = 1 << 20

// Handler serves the tracker over HTTP; mount it on an HTTPS server built
// with pieces.ServerTLSConfig so only the cluster's agents reach it:
//
//	POST /v1/tracker/announce         body: pieces.Announcement; 204 on success
//	GET  /v1/tracker/peers/<digest>   PeersResponse
func (t *Tracker) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tracker/announce", func(w http.ResponseWriter, r *http.Request) {
		var a pieces.Announcement
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAnnounceBody)).Decode(&a); err != nil {
			http.Error(w, "announcement: "+err.Error(), http.StatusBadRequest)
			return
		}
		if err := t.Announce(a); err != nil {
			slog.Debug("tracker: refused announcement", "from", r.RemoteAddr, "err", err)
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
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(PeersResponse{Peers: t.Peers(d)})
	})
	return mux
}
