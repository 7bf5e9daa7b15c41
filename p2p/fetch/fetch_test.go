package fetch_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/p2p/fetch"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

func fetchAll(t *testing.T, list pieces.PieceList, nodes []*node) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = n.fetcher.Fetch(ctx, list)
		}()
	}
	wg.Wait()
	return errs
}

func TestFetchFromPeers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		allow     func(pieces.Peer) bool
		seedLoads func(count, nodes int) (lo, hi int) // pieces the seed may serve
	}{
		// The pipeline: the seed feeds the first agent, which feeds the next.
		{"pipeline", nil, func(c, n int) (int, int) { return c, 2 * c }},
		// Peer-to-peer off: every agent gets every piece from the seed.
		{"seed only", func(p pieces.Peer) bool { return p.ID == "seed" }, func(c, n int) (int, int) { return c * n, c * n }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			blob := randomBlob(t, 12<<20+7)
			seed, list := c.seed(blob)
			var nodes []*node
			for i := range 4 {
				nodes = append(nodes, c.node(fmt.Sprintf("n%d", i), "", func(o *fetch.Options) { o.AllowPeer = tc.allow }))
			}
			for i, err := range fetchAll(t, list, nodes) {
				if err != nil {
					t.Fatalf("node %d: %v", i, err)
				}
				checkBlob(t, nodes[i].store.Path(list.Digest), blob)
			}
			lo, hi := tc.seedLoads(list.Count(), len(nodes))
			if got := int(seed.served.Load()); got < lo || got > hi {
				t.Fatalf("seed served %d pieces, want %d..%d", got, lo, hi)
			}
		})
	}
}

// corruptPeer is a test double on the wire: it claims the whole blob and
// answers piece requests with wrong bytes, as a faulty or hostile agent would.
type corruptPeer struct {
	requests, corrupted atomic.Int64
}

func (c *corruptPeer) handler(blob []byte, list pieces.PieceList, kind string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(r.URL.Path, "/")
		i, err := strconv.Atoi(parts[len(parts)-1])
		if err != nil || i >= list.Count() {
			http.NotFound(w, r)
			return
		}
		c.requests.Add(1)
		data := append([]byte(nil), pieceOf(blob, list, i)...)
		switch kind {
		case "flipped byte":
			data[len(data)/2] ^= 0x01
		case "other piece":
			data = append([]byte(nil), pieceOf(blob, list, (i+1)%(list.Count()-1))...)
		case "short body":
			data = data[:len(data)-1]
		}
		c.corrupted.Add(1)
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Write(data)
	})
}

func TestCorruptingPeerIsDropped(t *testing.T) {
	for _, kind := range []string{"flipped byte", "other piece", "short body"} {
		t.Run(kind, func(t *testing.T) {
			c := newCluster(t)
			blob := randomBlob(t, 8<<20)
			_, list := c.seed(blob)
			bad := &corruptPeer{}
			badSrv := c.serve(bad.handler(blob, list, kind))
			// Announced after the seed and before the fetcher: it is the
			// fetcher's upstream in the pipeline, so it is asked first.
			if err := c.tracker.Announce(pieces.Announcement{Peer: pieces.Peer{ID: "liar", Addr: badSrv.URL}, Digest: list.Digest, Have: pieces.FullBitfield(list.Count()), Complete: true}); err != nil {
				t.Fatal(err)
			}
			n := c.node("n1", "", nil)
			var mu sync.Mutex
			var heldAtEachStep []int64
			n.fetcher = fetch.New(n.store, fetch.NewHTTPTracker(c.trackerSrv.URL, c.client), func() fetch.Options {
				o := fastOptions()
				o.Self, o.Client = pieces.Peer{ID: "n1", Addr: n.srv.URL}, c.client
				o.Progress = func(p fetch.Progress) {
					if !p.Done {
						mu.Lock()
						heldAtEachStep = append(heldAtEachStep, p.Held)
						mu.Unlock()
					}
				}
				return o
			}())
			path, err := n.fetcher.Fetch(t.Context(), list)
			if err != nil {
				t.Fatal(err)
			}
			checkBlob(t, path, blob)
			if bad.corrupted.Load() == 0 {
				t.Fatal("the corrupting peer was never asked: the test proves nothing")
			}
			// Dropped at the first bad piece: only requests already in flight may follow.
			if got := bad.requests.Load(); got > 4 {
				t.Fatalf("corrupting peer got %d requests, want at most the 4 in flight when it was caught", got)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(heldAtEachStep) != list.Count() {
				t.Fatalf("%d pieces landed, want %d: a corrupt piece was counted", len(heldAtEachStep), list.Count())
			}
		})
	}
}

// stallingPeer claims the blob, sends half a piece, then goes silent
// (a hung process, a dead link) until the test ends.
func stallingPeer(blob []byte, list pieces.PieceList, sent *atomic.Int64, stop <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(r.URL.Path, "/")
		i, _ := strconv.Atoi(parts[len(parts)-1])
		data := pieceOf(blob, list, i)
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.Write(data[:len(data)/2])
		w.(http.Flusher).Flush()
		sent.Add(1)
		select {
		case <-stop:
		case <-r.Context().Done():
		}
	})
}

func TestDeadOrStalledPeerIsReplaced(t *testing.T) {
	for _, kind := range []string{"stalls mid-piece", "killed mid-transfer"} {
		t.Run(kind, func(t *testing.T) {
			c := newCluster(t)
			blob := randomBlob(t, 6<<20)
			_, list := c.seed(blob)
			var started atomic.Int64
			var midAddr string
			switch kind {
			case "stalls mid-piece":
				stop := make(chan struct{})
				t.Cleanup(func() { close(stop) })
				midAddr = c.serve(stallingPeer(blob, list, &started, stop)).URL
			case "killed mid-transfer":
				// A real agent holding the blob, serving slowly; its server
				// is shut down hard once it has started sending.
				mid := c.node("mid", "", nil, pieces.WithUploadLimit(pieces.NewLimiter(512<<10)))
				p, _ := mid.store.Open(list)
				for i := range list.Count() {
					p.WritePiece(i, pieceOf(blob, list, i))
				}
				midAddr = mid.srv.URL
				go func() {
					// The first request is the event: its answer goes out at
					// 512 KiB/s, so the server dies in the middle of it.
					_ = poll.Until(t.Context(), 10*time.Second, 10*time.Millisecond, func() bool { return mid.requests.Load() > 0 })
					started.Add(mid.requests.Load()) // requests cut off mid-transfer
					mid.srv.CloseClientConnections()
					mid.srv.Close()
				}()
			}
			c.tracker.Announce(pieces.Announcement{Peer: pieces.Peer{ID: "mid", Addr: midAddr}, Digest: list.Digest, Have: pieces.FullBitfield(list.Count()), Complete: true})
			n := c.node("n1", "", nil)
			start := time.Now()
			path, err := n.fetcher.Fetch(t.Context(), list)
			if err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			checkBlob(t, path, blob)
			if started.Load() == 0 {
				t.Fatal("the bad peer never got a request: the test proves nothing")
			}
			// StallTimeout is 1s: one stall plus the transfer, not one stall per piece.
			if took > 4*time.Second {
				t.Fatalf("fetch took %v with a %s peer, want under 4s (stall timeout 1s)", took, kind)
			}
		})
	}
}
