package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/time/rate"

	"github.com/flotilla-dev/flotilla/p2p/fetch"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Which peers an agent deals with. The cluster CA only says "an agent of
// this cluster, some day in the last 24 hours"; the tracker (the controller,
// checked by its own certificate) says who is a node of the inventory now
// and fetches or holds which blob. So:
//   - a piece request is served only to a node the tracker lists as a peer
//     of that blob (peerSets.allow);
//   - a piece is fetched only from the node the tracker named, presenting its
//     own peer certificate, or from the seed presenting the controller's
//     (verifyPeerIdentity).
const (
	// peerSetMaxAge is how long a node found in a blob's peer set is served
	// without asking the tracker again: a node removed from the inventory is
	// cut off within it.
	peerSetMaxAge = 3 * time.Second
	// peerSetMinRefresh spaces the tracker queries for one blob.
	peerSetMinRefresh = 200 * time.Millisecond
	// peerSetMaxBlobs bounds the blobs whose peer sets are kept.
	peerSetMaxBlobs = 1024
)

// peerSets caches, per blob, the peer IDs the tracker lists.
type peerSets struct {
	tracker fetch.Tracker
	log     *slog.Logger
	queries *rate.Limiter // all tracker queries, so requests for made-up blobs cannot flood it

	mu   sync.Mutex
	sets map[v1.Hash]*peerSet
}

type peerSet struct {
	mu       sync.Mutex
	ids      map[string]bool
	at       time.Time // last successful query
	tried    time.Time // last query
	lastUsed time.Time
}

func newPeerSets(t fetch.Tracker, log *slog.Logger) *peerSets {
	return &peerSets{tracker: t, log: log, queries: rate.NewLimiter(50, 50), sets: map[v1.Hash]*peerSet{}}
}

func (s *peerSets) get(d v1.Hash) *peerSet {
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := s.sets[d]
	if ps == nil {
		if len(s.sets) >= peerSetMaxBlobs {
			var oldest v1.Hash
			var at time.Time
			for k, v := range s.sets {
				if at.IsZero() || v.lastUsed.Before(at) {
					oldest, at = k, v.lastUsed
				}
			}
			delete(s.sets, oldest)
		}
		ps = &peerSet{}
		s.sets[d] = ps
	}
	ps.lastUsed = time.Now()
	return ps
}

// allow says whether node may fetch blob d from this agent. When the tracker
// cannot be reached (the controller stopped mid-rollout), the last set it
// gave stands.
func (s *peerSets) allow(ctx context.Context, d v1.Hash, node string) error {
	ps := s.get(d)
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.ids[node] && time.Since(ps.at) < peerSetMaxAge {
		return nil
	}
	if wait := peerSetMinRefresh - time.Since(ps.tried); wait > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := s.queries.Wait(ctx); err != nil {
		return fmt.Errorf("too many peer checks: %w", err)
	}
	ps.tried = time.Now()
	states, err := s.tracker.Peers(ctx, d)
	if err != nil {
		if ps.ids[node] {
			s.log.Debug("tracker unreachable; serving a peer it listed before", "node", node, "digest", d, "err", err)
			return nil
		}
		return fmt.Errorf("ask the tracker whether %s fetches %s: %w", node, d, err)
	}
	ids := make(map[string]bool, len(states))
	for _, st := range states {
		ids[st.ID] = true
	}
	ps.ids, ps.at = ids, time.Now()
	if !ids[node] {
		return fmt.Errorf("node %s is not a peer of %s on the tracker (not in the inventory, or it did not announce the blob)", node, d)
	}
	return nil
}

// authorize is the piece server's check of every request (pieces.WithAuthorize).
func (p *Peer) authorize(r *http.Request, d v1.Hash) error {
	node, ok := certNode(r.TLS)
	if !ok {
		return errors.New("no agent certificate")
	}
	if err := p.peerSets.allow(r.Context(), d, node); err != nil {
		p.log.Warn("refused a piece request", "node", node, "remote", r.RemoteAddr, "digest", d, "err", err)
		return err
	}
	return nil
}

// certNode is the node named by the verified client certificate of cs.
func certNode(cs *tls.ConnectionState) (string, bool) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", false
	}
	leaf := cs.VerifiedChains[0][0]
	if !isPeerCert(leaf) {
		return "", false
	}
	return protocol.PeerCertNode(leaf.DNSNames[0])
}

// verifyPeerIdentity checks, before a piece is read, that the server is
// the peer the tracker named: the seed must present the controller's
// certificate (verified for the controller's host name at the handshake),
// every other peer its own peer certificate.
func verifyPeerIdentity(peer pieces.Peer, cs *tls.ConnectionState) error {
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return errors.New("no TLS server certificate")
	}
	leaf := cs.PeerCertificates[0]
	if peer.ID == pieces.SeedID {
		if isPeerCert(leaf) {
			return fmt.Errorf("the seed at %s presented an agent's certificate (%s), not the controller's", peer.Addr, leaf.DNSNames[0])
		}
		return nil
	}
	if !isPeerCert(leaf) {
		return fmt.Errorf("peer %s at %s presented a certificate that is not an agent's", peer.ID, peer.Addr)
	}
	if node, _ := protocol.PeerCertNode(leaf.DNSNames[0]); node != peer.ID {
		return fmt.Errorf("peer %s at %s presented the certificate of node %s", peer.ID, peer.Addr, node)
	}
	return nil
}

// controllerTLS is for the tracker: the controller's own server certificate,
// verified against the cluster CA for the host name of its URL like any
// HTTPS server's, and never an agent's, however valid (an agent posing as
// the tracker would choose everyone's peers). A failure wraps
// fetch.ErrNotTracker, so a fetch stops at once instead of waiting for peers.
func (p *Peer) controllerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return p.cert.Load(), nil },
		InsecureSkipVerify:   true, // verified by VerifyConnection, host name included
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("%w: %s sent no certificate", fetch.ErrNotTracker, cs.ServerName)
			}
			leaf := cs.PeerCertificates[0]
			if isPeerCert(leaf) {
				return fmt.Errorf("%w: %s presented an agent's certificate (%s), not the controller's", fetch.ErrNotTracker, cs.ServerName, leaf.DNSNames[0])
			}
			opts := x509.VerifyOptions{Roots: p.pool, Intermediates: x509.NewCertPool(), DNSName: cs.ServerName,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			if _, err := leaf.Verify(opts); err != nil {
				return fmt.Errorf("%w: %s: %v", fetch.ErrNotTracker, cs.ServerName, err)
			}
			return nil
		},
	}
}
