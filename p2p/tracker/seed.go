package tracker

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// SeedID is the peer ID the controller's seed announces.
const SeedID = pieces.SeedID

// Seed is the controller's copy of the blobs it distributes, served piece by
// piece as the first peer of every blob, and announced to the tracker.
type Seed struct {
	tr    *Tracker
	store *pieces.Store
	log   *slog.Logger

	mu    sync.Mutex
	addr  string
	lists map[v1.Hash]pieces.PieceList
	busy  map[v1.Hash]*sync.Mutex // one piece-list computation per blob
}

// NewSeed opens (creating it) the seed's piece store in dir; it announces to tr.
func NewSeed(dir string, tr *Tracker, log *slog.Logger) (*Seed, error) {
	st, err := pieces.OpenStore(dir)
	if err != nil {
		return nil, fmt.Errorf("seed store: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	dropUnlinked(st, log)
	return &Seed{tr: tr, store: st, log: log, lists: map[v1.Hash]pieces.PieceList{}, busy: map[v1.Hash]*sync.Mutex{}}, nil
}

// dropUnlinked removes the blobs whose only link is the seed store's: the
// image store no longer has them (its garbage collection), so no rollout will
// ask for them. (Where the seed had to copy instead of link, the copy goes too
// and is made again when a rollout needs it.)
func dropUnlinked(st *pieces.Store, log *slog.Logger) {
	entries, err := os.ReadDir(st.Dir())
	if err != nil {
		return
	}
	for _, e := range entries {
		d, err := v1.NewHash(e.Name())
		if err != nil {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok && sys.Nlink == 1 {
			log.Info("seed: dropping a blob the image store no longer has", "digest", d)
			os.Remove(st.Path(d))
			os.Remove(filepath.Join(st.Dir(), d.String()+".pieces"))
		}
	}
}

// SetAddr sets the base URL agents reach the seed's pieces at (the
// controller's HTTPS URL, known once it listens) and announces what it holds.
func (s *Seed) SetAddr(url string) {
	s.mu.Lock()
	s.addr = url
	s.mu.Unlock()
	s.announceAll()
}

// Add makes the blob d at path (the controller's image store) available to
// agents and returns its piece list. The list is computed once per blob (the
// file is read once) and kept with the blob, so a restarted controller does
// not read it again; the file is hard-linked into the seed's store when the
// file system allows, else copied.
func (s *Seed) Add(ctx context.Context, d v1.Hash, path string) (pieces.PieceList, error) {
	s.mu.Lock()
	if l, ok := s.lists[d]; ok {
		s.mu.Unlock()
		return l, nil
	}
	m := s.busy[d]
	if m == nil {
		m = &sync.Mutex{}
		s.busy[d] = m
	}
	s.mu.Unlock()
	m.Lock()
	defer m.Unlock()
	s.mu.Lock()
	l, ok := s.lists[d]
	s.mu.Unlock()
	if ok {
		return l, nil
	}
	l, err := s.load(d)
	if err != nil {
		if l, err = s.store.Add(ctx, path, 0); err != nil {
			return pieces.PieceList{}, fmt.Errorf("seed %s: %w", d, err)
		}
	}
	if l.Digest != d {
		return pieces.PieceList{}, fmt.Errorf("seed %s: %s hashes to %s", d, path, l.Digest)
	}
	s.mu.Lock()
	s.lists[d] = l
	s.mu.Unlock()
	s.announce(l)
	return l, nil
}

// load reads the piece list kept beside a blob the store holds complete
// (the store's <digest>.pieces file).
func (s *Seed) load(d v1.Hash) (pieces.PieceList, error) {
	var l pieces.PieceList
	if !s.store.Has(d) {
		return l, os.ErrNotExist
	}
	data, err := os.ReadFile(filepath.Join(s.store.Dir(), d.String()+".pieces"))
	if err != nil {
		return l, err
	}
	if err := json.Unmarshal(data, &l); err != nil {
		return l, err
	}
	if err := l.Validate(); err != nil || l.Digest != d {
		return l, fmt.Errorf("seed %s: kept piece list does not fit", d)
	}
	if _, err := s.store.Open(l); err != nil {
		return l, err
	}
	return l, nil
}

// Run re-announces the seeded blobs within the tracker's TTL until ctx ends.
func (s *Seed) Run(ctx context.Context) {
	t := time.NewTicker(s.tr.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.announceAll()
		}
	}
}

func (s *Seed) announceAll() {
	s.mu.Lock()
	ls := make([]pieces.PieceList, 0, len(s.lists))
	for _, l := range s.lists {
		ls = append(ls, l)
	}
	s.mu.Unlock()
	for _, l := range ls {
		s.announce(l)
	}
}

func (s *Seed) announce(l pieces.PieceList) {
	s.mu.Lock()
	addr := s.addr
	s.mu.Unlock()
	if addr == "" {
		return
	}
	err := s.tr.Announce(pieces.Announcement{Peer: pieces.Peer{ID: SeedID, Addr: addr}, Digest: l.Digest, Have: pieces.FullBitfield(l.Count()), Complete: true})
	if err != nil {
		s.log.Warn("seed: announce", "digest", l.Digest, "err", err)
	}
}

// Withdraw stops announcing every blob (tests: a controller gone after
// seeding) and forgets the seed in the tracker.
func (s *Seed) Withdraw() {
	s.mu.Lock()
	s.addr = ""
	s.mu.Unlock()
	s.tr.Forget(SeedID)
}

// Handlers returns what the controller mounts on its HTTPS server: the
// tracker (/v1/tracker/) and the seed's pieces (/v1/pieces/). Wrap them with
// the controller's client-certificate and inventory check; acc names the
// agent of a request (an agent may only announce itself) and which nodes
// are members.
func (s *Seed) Handlers(acc Access) map[string]http.Handler {
	if acc.Log == nil {
		acc.Log = s.log
	}
	return map[string]http.Handler{
		"/v1/tracker/": s.tr.HandlerWith(acc),
		"/v1/pieces/":  pieces.NewHandler(s.store, pieces.WithLogger(s.log)),
	}
}
