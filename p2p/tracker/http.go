package tracker

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/internal/ratelog"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// PeersResponse is the body of GET /v1/tracker/peers/<digest>.
type PeersResponse struct {
	Peers []pieces.PeerState `json:"peers"`
}

// Access says who may use the tracker. The zero value lets anyone announce
// anything (a tracker for tests and `flotilla blob`) and takes no failure
// reports; the controller sets both functions.
type Access struct {
	// Identify returns the node whose peer certificate authenticated r; an
	// agent announces only itself, never the seed, and only at the address
	// it connects from (checkPeerAddr). It also names the reporter of a
	// failure report.
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
//	POST /v1/tracker/report           body: pieces.FailureReport; 204 (with Identify only)
//	GET  /v1/tracker/peers/<digest>   PeersResponse
//
// An announcement is decoded once, strictly (pieces.DecodeAnnouncement), and
// what is checked is what is recorded. Refusals are logged naming the node,
// at most one line per node and kind of refusal per interval (a node may
// send thousands).
func (t *Tracker) HandlerWith(acc Access) http.Handler {
	log := acc.Log
	if log == nil {
		log = slog.Default()
	}
	refused := ratelog.New(log, ratelog.DefaultEvery)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tracker/announce", func(w http.ResponseWriter, r *http.Request) {
		node, known := "", true
		if acc.Identify != nil {
			node, known = acc.Identify(r)
		}
		a, err := pieces.DecodeAnnouncement(http.MaxBytesReader(w, r.Body, pieces.MaxAnnouncementSize+1))
		if err != nil {
			refused.Warn("node", node, "decode", "tracker: refused announcement", "remote", r.RemoteAddr, "err", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if acc.Identify != nil && (!known || a.Peer.ID != node || a.Peer.ID == pieces.SeedID) {
			refused.Warn("node", node, "other-peer", "tracker: refused an announcement for another peer", "peer", a.Peer.ID, "remote", r.RemoteAddr)
			http.Error(w, fmt.Sprintf("announcement for peer %q from node %q: an agent announces only itself", a.Peer.ID, node), http.StatusForbidden)
			return
		}
		if acc.Identify != nil {
			if err := checkPeerAddr(a.Peer.Addr, r.RemoteAddr); err != nil {
				refused.Warn("node", node, "addr", "tracker: refused an announced address", "addr", a.Peer.Addr, "remote", r.RemoteAddr, "err", err)
				http.Error(w, fmt.Sprintf("announcement from node %s: %v", node, err), http.StatusForbidden)
				return
			}
		}
		if err := t.Announce(a); err != nil {
			code := http.StatusBadRequest
			if errors.Is(err, ErrBanned) {
				code = http.StatusForbidden
			}
			refused.Warn("node", node, "announce", "tracker: refused announcement", "remote", r.RemoteAddr, "err", err)
			http.Error(w, err.Error(), code)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/tracker/report", func(w http.ResponseWriter, r *http.Request) {
		if acc.Identify == nil {
			http.Error(w, "this tracker takes no failure reports: it cannot tell who reports", http.StatusNotFound)
			return
		}
		node, ok := acc.Identify(r)
		if !ok {
			host, _, _ := strings.Cut(r.RemoteAddr, ":")
			if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
				host = ap.Addr().String() // one key per host, not per connection
			}
			refused.Warn("remote", host, "report-anonymous", "tracker: refused a failure report without a peer certificate")
			http.Error(w, "a failure report needs the reporter's peer certificate", http.StatusForbidden)
			return
		}
		f, err := pieces.DecodeFailureReport(http.MaxBytesReader(w, r.Body, pieces.MaxFailureReportSize+1))
		if err != nil {
			refused.Warn("node", node, "report-decode", "tracker: refused a failure report", "remote", r.RemoteAddr, "err", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		outcome, by, until, err := t.Report(node, f)
		switch {
		case errors.Is(err, ErrTooManyReports):
			refused.Warn("node", node, "report-rate", "tracker: refused a failure report", "peer", f.Peer, "err", err)
			http.Error(w, err.Error(), http.StatusTooManyRequests)
			return
		case errors.Is(err, ErrNotAPeer):
			refused.Warn("node", node, "report-not-peer", "tracker: refused a failure report", "peer", f.Peer, "err", err)
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		case err != nil:
			refused.Warn("node", node, "report", "tracker: refused a failure report", "peer", f.Peer, "err", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		switch outcome {
		case ReportDropped:
			log.Info("tracker: dropped a peer's record of a blob: a peer reports it did not serve what it announced",
				"peer", f.Peer, "digest", f.Digest, "reason", f.Reason, "reporter", node, "reporters", len(by))
		case ReportBanned:
			log.Warn("tracker: refusing a peer's announcements of a blob: distinct peers report it did not serve what it announced",
				"peer", f.Peer, "digest", f.Digest, "reason", f.Reason, "reporters", strings.Join(by, ","), "until", until.UTC().Format(time.RFC3339))
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

// checkPeerAddr checks the piece-server address a node announces against the
// connection it announces on: https://IP:port where IP is the address the
// node connects from (what it reaches the controller with, which an agent
// advertises by default), never a host name, and not an address kind no
// peer should be sent to (unspecified, multicast, link-local such as the
// cloud metadata service 169.254.169.254). Loopback passes only from a node
// on the controller's own host (a fleet on loopback, as in tests). The port
// is the node's choice: any port of its own host, where peers then demand
// its own peer certificate before reading a byte.
func checkPeerAddr(addr, remote string) error {
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("peer.addr %q: want https://IP:port", addr)
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil {
		return fmt.Errorf("peer.addr %q: want an IP address, not a host name", addr)
	}
	if ip.Zone() != "" {
		return fmt.Errorf("peer.addr %q: an IPv6 zone is not an address peers can use", addr)
	}
	ip = ip.Unmap()
	switch {
	case ip.IsUnspecified():
		return fmt.Errorf("peer.addr %q: an unspecified address", addr)
	case ip.IsMulticast():
		return fmt.Errorf("peer.addr %q: a multicast address", addr)
	case ip.IsLinkLocalUnicast():
		return fmt.Errorf("peer.addr %q: a link-local address (such as a cloud metadata service)", addr)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil || port < 1 || port > 65535 {
		return fmt.Errorf("peer.addr %q: want a port from 1 to 65535", addr)
	}
	src, err := netip.ParseAddrPort(remote)
	if err != nil {
		return fmt.Errorf("peer.addr %q: the connection's address %q is not IP:port", addr, remote)
	}
	if from := src.Addr().Unmap(); ip != from {
		what := "another host's address"
		if ip.IsLoopback() {
			what = "a loopback address, from another host"
		}
		return fmt.Errorf("peer.addr %q: %s: a node announces the address it connects from, %s (set the agent's --peer-advertise to it, or leave it unset)", addr, what, from)
	}
	return nil
}
