package fetch_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/p2p/fetch"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// The controller (seed and tracker) goes away once every piece is somewhere
// in the swarm: a holds the even pieces, b the odd ones, c nothing. The seed
// is gone before they start, the tracker while they transfer (uploads are
// capped so that is mid-transfer). All three finish from each other with the
// peer list they had.
func TestSeedAndTrackerGoneAfterSeeding(t *testing.T) {
	c := newCluster(t)
	blob := randomBlob(t, 10<<20)
	seed, list := c.seed(blob)
	capped := pieces.WithUploadLimit(pieces.NewLimiter(8 << 20))
	a, b, cc := c.node("a", "", nil, capped), c.node("b", "", nil, capped), c.node("c", "", nil, capped)
	for i := range list.Count() {
		holder := a
		if i%2 == 1 {
			holder = b
		}
		p, err := holder.store.Open(list)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.WritePiece(i, pieceOf(blob, list, i)); err != nil {
			t.Fatal(err)
		}
	}
	seed.srv.CloseClientConnections()
	seed.srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	errs := make(chan error, 3)
	for _, n := range []*node{a, b, cc} {
		go func() { _, err := n.fetcher.Fetch(ctx, list); errs <- err }()
	}
	// Once all three have announced (and so know each other), stop the tracker.
	// Once each holds a piece it could only get through the peer list (a an
	// odd one, b an even one, c one of each), each has the peers it needs:
	// stop the tracker.
	holdsOne := func(n *node, odd bool) bool {
		p, err := n.store.Open(list)
		if err != nil {
			return false
		}
		for i := range list.Count() {
			if i%2 == 1 == odd && p.Has(i) {
				return true
			}
		}
		return false
	}
	if err := poll.Until(ctx, 15*time.Second, 10*time.Millisecond, func() bool {
		return holdsOne(a, true) && holdsOne(b, false) && holdsOne(cc, true) && holdsOne(cc, false)
	}); err != nil {
		t.Fatalf("every node fetching from its peers: %v", err)
	}
	c.trackerSrv.CloseClientConnections()
	c.trackerSrv.Close()
	if cc.store.Has(list.Digest) {
		t.Fatal("c finished before the tracker stopped: the test proves nothing")
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*node{a, b, cc} {
		checkBlob(t, n.store.Path(list.Digest), blob)
	}
}

// An agent stopped mid-fetch resumes from the pieces it has: the restarted
// fetch asks only for the rest, and a complete blob is not fetched again.
func TestResumeAfterRestart(t *testing.T) {
	c := newCluster(t)
	blob := randomBlob(t, 8<<20)
	seed, list := c.seed(blob)
	dir := t.TempDir()

	ctx, stop := context.WithCancel(t.Context())
	var landed atomic.Int64
	first := c.node("n1", dir, func(o *fetch.Options) {
		o.Concurrency = 1
		o.DownloadLimit = pieces.NewLimiter(4 << 20)
		o.Progress = func(p fetch.Progress) {
			if landed.Add(1) == 3 {
				stop() // the agent "dies" after 3 pieces
			}
		}
	})
	if _, err := first.fetcher.Fetch(ctx, list); err == nil {
		t.Fatal("the interrupted fetch reported success")
	}
	first.store.Close()
	heldBefore := seed.served.Load()

	var lastProgress fetch.Progress
	second := c.node("n1", dir, func(o *fetch.Options) { o.Progress = func(p fetch.Progress) { lastProgress = p } })
	path, err := second.fetcher.Fetch(t.Context(), list)
	if err != nil {
		t.Fatal(err)
	}
	checkBlob(t, path, blob)
	refetched := seed.served.Load() - heldBefore
	if refetched > int64(list.Count())-3 {
		t.Fatalf("after the restart the seed served %d pieces, want at most %d (3 were held)", refetched, list.Count()-3)
	}
	if lastProgress.Fetched >= lastProgress.Total || !lastProgress.Done {
		t.Fatalf("last progress %+v: want Done and Fetched < Total", lastProgress)
	}

	before := seed.served.Load()
	if _, err := second.fetcher.Fetch(t.Context(), list); err != nil {
		t.Fatal(err)
	}
	if seed.served.Load() != before {
		t.Fatal("a blob already in the store was fetched again")
	}
}

func TestDownloadLimit(t *testing.T) {
	c := newCluster(t)
	blob := randomBlob(t, 3<<20)
	_, list := c.seed(blob)
	n := c.node("n1", "", func(o *fetch.Options) { o.DownloadLimit = pieces.NewLimiter(2 << 20) })
	start := time.Now()
	if _, err := n.fetcher.Fetch(t.Context(), list); err != nil {
		t.Fatal(err)
	}
	// 3 MiB at 2 MiB/s with a 100 KiB burst: about 1.5 s.
	if took := time.Since(start); took < 1300*time.Millisecond {
		t.Fatalf("3 MiB at a 2 MiB/s cap took %v, want about 1.5s", took)
	}
}

func TestFetchURL(t *testing.T) {
	c := newCluster(t)
	blob := randomBlob(t, 3<<20+11)
	seed, list := c.seed(blob)
	var ranges atomic.Int64
	srv := c.serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			ranges.Add(1)
		}
		pieces.NewHandler(seed.store).ServeHTTP(w, r)
	}))
	url := srv.URL + "/v1/blobs/" + list.Digest.String()

	t.Run("resumes a partial download", func(t *testing.T) {
		st, _ := pieces.OpenStore(t.TempDir())
		defer st.Close()
		// What an interrupted earlier run left.
		if err := os.WriteFile(st.Path(list.Digest)+".download", blob[:1<<20], 0o644); err != nil {
			t.Fatal(err)
		}
		path, err := fetch.FetchURL(t.Context(), c.client, url, st, list.Digest, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkBlob(t, path, blob)
		if ranges.Load() == 0 {
			t.Fatal("no Range request: the download did not resume")
		}
	})
	t.Run("refuses a blob that does not match its digest", func(t *testing.T) {
		st, _ := pieces.OpenStore(t.TempDir())
		defer st.Close()
		sum := sha256.Sum256([]byte("something else"))
		wrong := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
		if _, err := fetch.FetchURL(t.Context(), c.client, url, st, wrong, nil, nil); err == nil {
			t.Fatal("a download with the wrong digest was accepted")
		}
		if st.Has(wrong) {
			t.Fatal("the mismatching blob is in the store")
		}
		if _, err := os.Stat(st.Path(wrong) + ".download"); !os.IsNotExist(err) {
			t.Fatalf("the mismatching download was kept: %v", err)
		}
	})
}
