package fetch

import (
	"errors"
	"net"
	"time"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// swarm is one blob's scheduling state: which pieces we hold or are
// fetching, and what we know of each peer. The caller holds the lock.
//
// The plan is a pipeline: the tracker orders peers by first announcement
// (the seed first), and each agent pulls pieces in order from the nearest
// usable peer before it, asking ahead with ?wait= so a piece moves on one hop
// as soon as it lands. Every link then carries the blob once, at full rate,
// and the last agent finishes about S/B + N*piece/B after the start. When no
// peer before us is usable (dead, stalled, dropped for a bad piece, or the
// seed gone), any peer whose bitfield holds the piece serves it: a swarm.
type swarm struct {
	list     pieces.PieceList
	have     pieces.Bitfield
	fetching []bool
	selfID   string
	allow    func(pieces.Peer) bool
	perPeer  int

	peers []*peer // tracker order
	byID  map[string]*peer
}

type peer struct {
	pieces.PeerState
	inflight   int
	failures   int
	suspended  time.Time // unusable until then
	dropped    bool      // served a wrong piece, or is not who the tracker named: never again for this blob
	reported   bool      // the tracker was told it did not serve what it announced (once per fetch)
	lastReason string
}

type job struct {
	piece int
	peer  *peer       // touch only under the run's lock
	from  pieces.Peer // copy of peer's identity, for use outside the lock
	ahead bool        // ask the peer to wait for the piece: it is upstream in the pipeline
}

func newSwarm(list pieces.PieceList, have pieces.Bitfield, selfID string, allow func(pieces.Peer) bool, perPeer int) *swarm {
	return &swarm{list: list, have: have, fetching: make([]bool, list.Count()), selfID: selfID, allow: allow, perPeer: perPeer, byID: map[string]*peer{}}
}

// setPeers replaces the peer view with the tracker's, keeping what we
// learned locally (failures, drops, requests in flight).
func (s *swarm) setPeers(states []pieces.PeerState) {
	next := make([]*peer, 0, len(states))
	byID := make(map[string]*peer, len(states))
	for _, st := range states {
		if st.ID == "" || (st.ID != s.selfID && s.allow != nil && !s.allow(st.Peer)) {
			continue
		}
		p := s.byID[st.ID]
		if p == nil {
			p = &peer{}
		}
		p.PeerState = st
		next = append(next, p)
		byID[st.ID] = p
	}
	s.peers, s.byID = next, byID
}

func (p *peer) holds(i int) bool { return p.Complete || p.Have.Has(i) }

func (p *peer) usable(now time.Time, perPeer int) bool {
	return !p.dropped && !now.Before(p.suspended) && p.inflight < perPeer
}

func (s *swarm) done() bool { return s.have.Count() == s.list.Count() }

// next returns the next piece to fetch and from whom, or ok=false when
// nothing can start now (all in flight, or no peer can serve yet).
func (s *swarm) next(now time.Time) (job, bool) {
	self := len(s.peers)
	for k, p := range s.peers {
		if p.ID == s.selfID {
			self = k
			break
		}
	}
	for i := 0; i < s.list.Count(); i++ {
		if s.have.Has(i) || s.fetching[i] {
			continue
		}
		if j, ok := s.source(i, self, now); ok {
			s.fetching[i] = true
			j.peer.inflight++
			j.from = j.peer.Peer
			return j, true
		}
	}
	return job{}, false
}

func (s *swarm) source(i, self int, now time.Time) (job, bool) {
	// Upstream: the nearest peer before us that is not dead, stalled or
	// dropped. If it is busy with our requests, wait for it rather than
	// loading a peer further up, which feeds its own downstream.
	for k := self - 1; k >= 0; k-- {
		p := s.peers[k]
		if p.dropped || now.Before(p.suspended) {
			continue
		}
		if p.inflight >= s.perPeer {
			return job{}, false
		}
		return job{piece: i, peer: p, ahead: !p.holds(i)}, true
	}
	// Swarm fallback: anyone who holds it, least loaded first, earlier first.
	var best *peer
	for k, p := range s.peers {
		if k == self || !p.usable(now, s.perPeer) || !p.holds(i) {
			continue
		}
		if best == nil || p.inflight < best.inflight {
			best = p
		}
	}
	if best == nil {
		return job{}, false
	}
	return job{piece: i, peer: best}, true
}

// result records how a job went and says whether the peer was dropped, and
// why the tracker should hear that the peer did not serve what it announced
// ("": it should not; at most once per peer and fetch, never the seed).
func (s *swarm) result(j job, err error, now time.Time) (dropped bool, report string) {
	j.peer.inflight--
	s.fetching[j.piece] = false
	switch {
	case err == nil:
		s.have.Set(j.piece)
		j.peer.failures = 0
	case errors.Is(err, pieces.ErrPieceMismatch), errors.Is(err, errImpostor):
		dropped = !j.peer.dropped
		j.peer.dropped = true
		j.peer.lastReason = err.Error()
		report = pieces.FailBadPiece
		if errors.Is(err, errImpostor) {
			report = pieces.FailImpostor
		}
	case errors.Is(err, errNotHeld) && !j.ahead:
		// It announced the piece and does not have it: a stale view, or a
		// peer announcing what it does not hold. Either way the tracker
		// hears it; it will tell us when the piece lands there.
		j.peer.Have.Clear(j.piece)
		j.peer.Complete = false
		report = pieces.FailNotHeld
	default:
		// Dead, stalled, or (asked ahead) not getting the piece itself: rest
		// it, longer each time, so the next request goes to another peer.
		j.peer.failures++
		j.peer.lastReason = err.Error()
		j.peer.suspended = now.Add(min(time.Duration(j.peer.failures)*time.Second, 10*time.Second))
		if isDialError(err) {
			report = pieces.FailUnreachable // nothing serves at the address it announced
		}
	}
	if report == "" || j.peer.reported || j.peer.ID == pieces.SeedID {
		return dropped, ""
	}
	j.peer.reported = true
	return dropped, report
}

// isDialError says the connection to a peer could not be made (refused, no
// route): not a slow peer, an address where nothing serves.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}
