// Package tracker records which peer holds which pieces of which blob, so
// agents find each other; the controller runs it next to its seed.
package tracker

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// DefaultTTL is how long an announcement counts without a fresh one; agents
// re-announce well within it while they fetch or serve.
const DefaultTTL = 30 * time.Second

// Default bounds of the tracker's memory. A fleet of thousands of nodes
// rolling out a handful of images stays far below them; a node that
// announces made-up blobs fills its own share and then pushes out only its
// own oldest records.
const (
	DefaultMaxBlobsPerPeer = 256     // blobs one peer may be recorded for
	DefaultMaxPeersPerBlob = 8192    // peers recorded for one blob
	DefaultMaxEntries      = 1 << 17 // (peer, blob) records in all
	DefaultMaxHaveBytes    = 256 << 20
)

// Defaults of the failure reports (Tracker.Report). A peer that does not
// serve what it announced loses that record at the first report of a peer
// of the same blob; it may announce again (an honest peer that restarted
// does), but once ReportsToBan distinct peers reported it within
// ReportWindow, its announcements of that blob are refused for BanTTL. One
// hostile node alone can thus only move an honest peer to the end of a
// blob's order, ReportsPerReporter times per window.
const (
	DefaultReportsToBan       = 2
	DefaultReportWindow       = 10 * time.Minute
	DefaultBanTTL             = 10 * time.Minute
	DefaultReportsPerReporter = 32
	// DefaultMaxReportKeys bounds the (peer, blob) pairs with reports, the
	// bans, and the reporters counted, each.
	DefaultMaxReportKeys = 1 << 14
)

// Limits bound the tracker's records; zero fields take the defaults.
type Limits struct {
	MaxBlobsPerPeer int
	MaxPeersPerBlob int
	MaxEntries      int
	// MaxHaveBytes bounds the bitfields held in all (a bitfield is up to 128 KiB).
	MaxHaveBytes int

	// ReportsToBan, ReportWindow, BanTTL, ReportsPerReporter and
	// MaxReportKeys bound failure reports (see DefaultReportsToBan).
	ReportsToBan       int
	ReportWindow       time.Duration
	BanTTL             time.Duration
	ReportsPerReporter int
	MaxReportKeys      int
}

// Tracker is an in-memory, expiring, bounded record of announcements. It is
// safe for concurrent use.
type Tracker struct {
	ttl    time.Duration
	now    func() time.Time
	limits Limits

	mu        sync.Mutex
	blobs     map[v1.Hash]map[string]*entry
	byPeer    map[string]map[v1.Hash]*entry
	entries   int
	haveBytes int
	seq       uint64
	swept     time.Time
	evicted   uint64

	reports   map[peerBlob]*reportSet // distinct reporters of a peer for a blob, within the window
	bans      map[peerBlob]time.Time  // until when a peer's announcements of a blob are refused
	reporters map[string]*reporterCount
}

type peerBlob struct {
	peer string
	d    v1.Hash
}

type reportSet struct {
	first time.Time
	by    map[string]bool
}

type reporterCount struct {
	since time.Time
	n     int
}

type entry struct {
	state pieces.PeerState
	order uint64 // first announcement of this blob by this peer: the pipeline order
}

// Option configures New.
type Option func(*Tracker)

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Option { return func(t *Tracker) { t.now = now } }

// WithLimits replaces the default bounds.
func WithLimits(l Limits) Option { return func(t *Tracker) { t.limits = l } }

// New returns a tracker whose records expire ttl after their last announcement.
func New(ttl time.Duration, opts ...Option) *Tracker {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	t := &Tracker{ttl: ttl, now: time.Now, blobs: map[v1.Hash]map[string]*entry{}, byPeer: map[string]map[v1.Hash]*entry{},
		reports: map[peerBlob]*reportSet{}, bans: map[peerBlob]time.Time{}, reporters: map[string]*reporterCount{}}
	for _, o := range opts {
		o(t)
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&t.limits.MaxBlobsPerPeer, DefaultMaxBlobsPerPeer)
	def(&t.limits.MaxPeersPerBlob, DefaultMaxPeersPerBlob)
	def(&t.limits.MaxEntries, DefaultMaxEntries)
	def(&t.limits.MaxHaveBytes, DefaultMaxHaveBytes)
	def(&t.limits.ReportsToBan, DefaultReportsToBan)
	def(&t.limits.ReportsPerReporter, DefaultReportsPerReporter)
	def(&t.limits.MaxReportKeys, DefaultMaxReportKeys)
	if t.limits.ReportWindow <= 0 {
		t.limits.ReportWindow = DefaultReportWindow
	}
	if t.limits.BanTTL <= 0 {
		t.limits.BanTTL = DefaultBanTTL
	}
	return t
}

// ErrBanned is the error of an announcement by a peer that distinct peers
// reported for not serving that blob (Report).
var ErrBanned = errors.New("peers reported this node for not serving what it announced")

// Announce records that a.Peer holds a.Have of blob a.Digest. A peer keeps
// its place in the blob's order as long as it re-announces within the TTL,
// so an agent restarted mid-fetch returns to the same spot in the pipeline.
//
// At a bound the least recently seen record goes: the peer's own when it
// announces more blobs than MaxBlobsPerPeer, else the blob's (never the
// seed's) at MaxPeersPerBlob, else the tracker's at MaxEntries or
// MaxHaveBytes.
func (t *Tracker) Announce(a pieces.Announcement) error {
	if err := validate(a); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if now.Sub(t.swept) > t.ttl/10 {
		t.expireLocked(now)
		t.swept = now
	}
	if until, ok := t.bans[peerBlob{a.Peer.ID, a.Digest}]; ok && now.Before(until) {
		return fmt.Errorf("announcement from %s of %s refused until %s: %w", a.Peer.ID, a.Digest, until.UTC().Format(time.RFC3339), ErrBanned)
	}
	e := t.blobs[a.Digest][a.Peer.ID]
	if e == nil {
		t.makeRoomLocked(a.Peer.ID, a.Digest, len(a.Have))
		t.seq++
		e = &entry{order: t.seq}
		t.insertLocked(a.Peer.ID, a.Digest, e)
	} else {
		t.haveBytes -= len(e.state.Have)
		for t.haveBytes+len(a.Have) > t.limits.MaxHaveBytes && t.evictLocked(t.oldestLocked(a.Peer.ID, a.Digest)) {
		}
	}
	e.state = pieces.PeerState{Peer: a.Peer, Have: a.Have.Clone(), Complete: a.Complete, Seen: now}
	t.haveBytes += len(e.state.Have)
	return nil
}

// makeRoomLocked evicts records until a new (peer, d) record with a
// bitfield of have bytes fits every bound.
func (t *Tracker) makeRoomLocked(peer string, d v1.Hash, have int) {
	for peer != pieces.SeedID && len(t.byPeer[peer]) >= t.limits.MaxBlobsPerPeer {
		if !t.evictLocked(t.oldestOfPeerLocked(peer)) {
			break
		}
	}
	for len(t.blobs[d]) >= t.limits.MaxPeersPerBlob {
		if !t.evictLocked(t.oldestOfBlobLocked(d)) {
			break
		}
	}
	for t.entries >= t.limits.MaxEntries || t.haveBytes+have > t.limits.MaxHaveBytes {
		if !t.evictLocked(t.oldestLocked("", v1.Hash{})) {
			break
		}
	}
}

type ref struct {
	peer string
	d    v1.Hash
	ok   bool
}

// oldestOfPeerLocked is the peer's least recently seen record.
func (t *Tracker) oldestOfPeerLocked(peer string) ref {
	var best ref
	var seen time.Time
	for d, e := range t.byPeer[peer] {
		if !best.ok || e.state.Seen.Before(seen) {
			best, seen = ref{peer, d, true}, e.state.Seen
		}
	}
	return best
}

// oldestOfBlobLocked is blob d's least recently seen record but the seed's.
func (t *Tracker) oldestOfBlobLocked(d v1.Hash) ref {
	var best ref
	var seen time.Time
	for id, e := range t.blobs[d] {
		if id != pieces.SeedID && (!best.ok || e.state.Seen.Before(seen)) {
			best, seen = ref{id, d, true}, e.state.Seen
		}
	}
	return best
}

// oldestLocked is the least recently seen record, never the seed's nor
// (keepPeer, keepBlob).
func (t *Tracker) oldestLocked(keepPeer string, keepBlob v1.Hash) ref {
	var best ref
	var seen time.Time
	for d, peers := range t.blobs {
		for id, e := range peers {
			if id == pieces.SeedID || (id == keepPeer && d == keepBlob) {
				continue
			}
			if !best.ok || e.state.Seen.Before(seen) {
				best, seen = ref{id, d, true}, e.state.Seen
			}
		}
	}
	return best
}

func (t *Tracker) evictLocked(r ref) bool {
	if !r.ok {
		return false
	}
	t.removeLocked(r.peer, r.d)
	t.evicted++
	return true
}

func (t *Tracker) insertLocked(peer string, d v1.Hash, e *entry) {
	peers := t.blobs[d]
	if peers == nil {
		peers = map[string]*entry{}
		t.blobs[d] = peers
	}
	peers[peer] = e
	held := t.byPeer[peer]
	if held == nil {
		held = map[v1.Hash]*entry{}
		t.byPeer[peer] = held
	}
	held[d] = e
	t.entries++
}

func (t *Tracker) removeLocked(peer string, d v1.Hash) {
	e := t.blobs[d][peer]
	if e == nil {
		return
	}
	t.haveBytes -= len(e.state.Have)
	t.entries--
	delete(t.blobs[d], peer)
	if len(t.blobs[d]) == 0 {
		delete(t.blobs, d)
	}
	delete(t.byPeer[peer], d)
	if len(t.byPeer[peer]) == 0 {
		delete(t.byPeer, peer)
	}
}

// Peers returns the live peers of blob d in the order they first announced it.
func (t *Tracker) Peers(d v1.Hash) []pieces.PeerState {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	es := make([]*entry, 0, len(t.blobs[d]))
	for _, e := range t.blobs[d] {
		if now.Sub(e.state.Seen) <= t.ttl {
			es = append(es, e)
		}
	}
	sort.Slice(es, func(i, j int) bool { return es[i].order < es[j].order })
	out := make([]pieces.PeerState, len(es))
	for i, e := range es {
		out[i] = e.state
		out[i].Have = e.state.Have.Clone()
	}
	return out
}

// Stats says how much the tracker holds and how many records it evicted at
// its bounds (not counting expiry).
type Stats struct {
	Blobs, Peers, Entries, HaveBytes int
	Evicted                          uint64
}

// Stats returns the tracker's current size.
func (t *Tracker) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return Stats{Blobs: len(t.blobs), Peers: len(t.byPeer), Entries: t.entries, HaveBytes: t.haveBytes, Evicted: t.evicted}
}

// Forget drops every record of peer id (an agent that left the cluster).
func (t *Tracker) Forget(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for d := range t.byPeer[id] {
		t.removeLocked(id, d)
	}
}

func (t *Tracker) expireLocked(now time.Time) {
	for d, peers := range t.blobs {
		for id, e := range peers {
			if now.Sub(e.state.Seen) > t.ttl {
				t.removeLocked(id, d)
			}
		}
	}
	t.expireReportsLocked(now)
}

func (t *Tracker) expireReportsLocked(now time.Time) {
	for k, rs := range t.reports {
		if now.Sub(rs.first) > t.limits.ReportWindow {
			delete(t.reports, k)
		}
	}
	for k, until := range t.bans {
		if !now.Before(until) {
			delete(t.bans, k)
		}
	}
	for id, c := range t.reporters {
		if now.Sub(c.since) > t.limits.ReportWindow {
			delete(t.reporters, id)
		}
	}
}

// ReportOutcome says what a failure report did.
type ReportOutcome int

const (
	// ReportIgnored: the peer had no record of the blob (gone already).
	ReportIgnored ReportOutcome = iota
	// ReportDropped: the peer's record of the blob is gone; it may announce again.
	ReportDropped
	// ReportBanned: the record is gone and, ReportsToBan distinct peers
	// having reported it, the peer's announcements of the blob are refused
	// until the time Report returns.
	ReportBanned
)

// Errors of Report, for the HTTP status.
var (
	// ErrNotAPeer: the reporter has no record of the blob; only a node
	// fetching (or serving) a blob reports its peers.
	ErrNotAPeer = errors.New("the reporter is not a peer of this blob")
	// ErrTooManyReports: the reporter reached ReportsPerReporter in the window.
	ErrTooManyReports = errors.New("too many failure reports from this node")
)

// Report records that reporter failed to get from peer a piece of f.Digest
// that peer announced (f.Reason). See DefaultReportsToBan for what follows;
// the seed is never reported (the controller serves what it announces). It
// returns what the report did, the distinct reporters so far and, for
// ReportBanned, until when.
func (t *Tracker) Report(reporter string, f pieces.FailureReport) (ReportOutcome, []string, time.Time, error) {
	if err := f.Validate(); err != nil {
		return ReportIgnored, nil, time.Time{}, err
	}
	if f.Peer == reporter {
		return ReportIgnored, nil, time.Time{}, fmt.Errorf("failure report from %s: about itself", reporter)
	}
	if f.Peer == pieces.SeedID {
		return ReportIgnored, nil, time.Time{}, fmt.Errorf("failure report from %s: the seed is not reported (the controller serves what it announces)", reporter)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.expireReportsLocked(now)
	if t.blobs[f.Digest][reporter] == nil {
		return ReportIgnored, nil, time.Time{}, fmt.Errorf("failure report from %s about %s: %w %s", reporter, f.Peer, ErrNotAPeer, f.Digest)
	}
	c := t.reporters[reporter]
	if c == nil {
		if len(t.reporters) >= t.limits.MaxReportKeys {
			clear(t.reporters) // authenticated names only: a fleet this large starts counting afresh
		}
		c = &reporterCount{since: now}
		t.reporters[reporter] = c
	}
	if c.n >= t.limits.ReportsPerReporter {
		return ReportIgnored, nil, time.Time{}, fmt.Errorf("failure report from %s about %s: %w (%d in %v)", reporter, f.Peer, ErrTooManyReports, c.n, t.limits.ReportWindow)
	}
	if t.blobs[f.Digest][f.Peer] == nil {
		return ReportIgnored, nil, time.Time{}, nil
	}
	c.n++
	k := peerBlob{f.Peer, f.Digest}
	rs := t.reports[k]
	if rs == nil {
		if len(t.reports) >= t.limits.MaxReportKeys {
			t.dropOldestReportLocked()
		}
		rs = &reportSet{first: now, by: map[string]bool{}}
		t.reports[k] = rs
	}
	rs.by[reporter] = true
	by := make([]string, 0, len(rs.by))
	for id := range rs.by {
		by = append(by, id)
	}
	sort.Strings(by)
	t.removeLocked(f.Peer, f.Digest)
	if len(rs.by) < t.limits.ReportsToBan {
		return ReportDropped, by, time.Time{}, nil
	}
	delete(t.reports, k)
	if _, ok := t.bans[k]; !ok && len(t.bans) >= t.limits.MaxReportKeys {
		t.dropEarliestBanLocked()
	}
	until := now.Add(t.limits.BanTTL)
	t.bans[k] = until
	return ReportBanned, by, until, nil
}

func (t *Tracker) dropOldestReportLocked() {
	var oldest peerBlob
	var at time.Time
	for k, rs := range t.reports {
		if at.IsZero() || rs.first.Before(at) {
			oldest, at = k, rs.first
		}
	}
	delete(t.reports, oldest)
}

func (t *Tracker) dropEarliestBanLocked() {
	var first peerBlob
	var at time.Time
	for k, until := range t.bans {
		if at.IsZero() || until.Before(at) {
			first, at = k, until
		}
	}
	delete(t.bans, first)
}

// ReportStats says how much the failure reports hold (tests of the bounds).
type ReportStats struct{ Reports, Bans, Reporters int }

// ReportStats returns the sizes of the failure-report maps.
func (t *Tracker) ReportStats() ReportStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return ReportStats{Reports: len(t.reports), Bans: len(t.bans), Reporters: len(t.reporters)}
}

func validate(a pieces.Announcement) error {
	if a.Peer.ID == "" || len(a.Peer.ID) > 253 {
		return fmt.Errorf("announcement: peer.id %q: want 1 to 253 characters", a.Peer.ID)
	}
	u, err := url.Parse(a.Peer.Addr)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
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
