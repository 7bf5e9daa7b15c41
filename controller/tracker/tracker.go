// Package tracker records which peer holds which pieces of which blob, so
// agents find each other; the controller runs it next to its seed.
package tracker

import (
	"fmt"
	"net/url"
	"sort"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/bundle/pieces"
)

// DefaultTTL is how long an announcement counts without a fresh one; agents
// re-announce well within it while they fetch or serve.
const DefaultTTL = 30 * time.Second

// Tracker is an in-memory, expiring record of announcements. It is safe for
// concurrent use.
type Tracker struct {
	ttl time.Duration
	now func() time.Time

	mu    sync.Mutex
	blobs map[v1.Hash]map[string]*entry
	seq   uint64
}

type entry struct {
	state pieces.PeerState
	order uint64 // first announcement of this blob by this peer: the pipeline order
}

// Option configures New.
type Option func(*Tracker)

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(t *Tracker) { t.now = now } }

// New returns a tracker whose records expire ttl after their last announcement.
func New(ttl time.Duration, opts ...Option) *Tracker {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	t := &Tracker{ttl: ttl, now: time.Now, blobs: map[v1.Hash]map[string]*entry{}}
	for _, o := range opts {
		o(t)
	}
	return t
}

// Announce records that a.Peer holds a.Have of blob a.Digest. A peer keeps
// its place in the blob's order as long as it re-announces within the TTL,
// so an agent restarted mid-fetch returns to the same spot in the pipeline.
func (t *Tracker) Announce(a pieces.Announcement) error {
	if err := validate(a); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.expireLocked(now)
	peers := t.blobs[a.Digest]
	if peers == nil {
		peers = map[string]*entry{}
		t.blobs[a.Digest] = peers
	}
	e := peers[a.Peer.ID]
	if e == nil {
		t.seq++
		e = &entry{order: t.seq}
		peers[a.Peer.ID] = e
	}
	e.state = pieces.PeerState{Peer: a.Peer, Have: a.Have.Clone(), Complete: a.Complete, Seen: now}
	return nil
}

// Peers returns the live peers of blob d in the order they first announced it.
func (t *Tracker) Peers(d v1.Hash) []pieces.PeerState {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(t.now())
	es := make([]*entry, 0, len(t.blobs[d]))
	for _, e := range t.blobs[d] {
		es = append(es, e)
	}
	sort.Slice(es, func(i, j int) bool { return es[i].order < es[j].order })
	out := make([]pieces.PeerState, len(es))
	for i, e := range es {
		out[i] = e.state
		out[i].Have = e.state.Have.Clone()
	}
	return out
}

// Forget drops every record of peer id (an agent that left the cluster).
func (t *Tracker) Forget(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for d, peers := range t.blobs {
		delete(peers, id)
		if len(peers) == 0 {
			delete(t.blobs, d)
		}
	}
}

func (t *Tracker) expireLocked(now time.Time) {
	for d, peers := range t.blobs {
		for id, e := range peers {
			if now.Sub(e.state.Seen) > t.ttl {
				delete(peers, id)
			}
		}
		if len(peers) == 0 {
			delete(t.blobs, d)
		}
	}
}

func validate(a pieces.Announcement) error {
	if a.Peer.ID == "" || len(a.Peer.ID) > 253 {
		return fmt.Errorf("announcement: peer.id %q: want 1 to 253 characters", a.Peer.ID)
	}
	u, err := url.Parse(a.Peer.Addr)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("announcement from %s: peer.addr %q: want https://host:port", a.Peer.ID, a.Peer.Addr)
	}
	if a.Digest.Algorithm != "sha256" || len(a.Digest.Hex) != 64 {
		return fmt.Errorf("announcement from %s: digest %q: want sha256:<64 hex>", a.Peer.ID, a.Digest)
	}
	if len(a.Have) > (1<<20)/8 {
		return fmt.Errorf("announcement from %s: have has %d bytes: too many pieces", a.Peer.ID, len(a.Have))
	}
	return nil
}
