package tracker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

var (
	blobA = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}
	blobB = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("b", 64)}
)

func ann(id string, d v1.Hash, have ...int) pieces.Announcement {
	b := pieces.NewBitfield(16)
	for _, i := range have {
		b.Set(i)
	}
	return pieces.Announcement{Peer: pieces.Peer{ID: id, Addr: "https://10.0.0.1:7443"}, Digest: d, Have: b}
}

func ids(ps []pieces.PeerState) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.ID)
	}
	return strings.Join(s, ",")
}

func TestAnnounceKeepsFirstOrderAndExpires(t *testing.T) {
	now := time.Unix(1000, 0)
	tr := New(10*time.Second, WithClock(func() time.Time { return now }))
	for _, a := range []pieces.Announcement{
		ann("seed", blobA, 0, 1, 2), ann("n2", blobA), ann("n1", blobA), ann("n1", blobB), ann("n2", blobA, 0),
	} {
		if err := tr.Announce(a); err != nil {
			t.Fatal(err)
		}
	}
	got := tr.Peers(blobA)
	if ids(got) != "seed,n2,n1" {
		t.Fatalf("order = %s, want seed,n2,n1 (first announcement wins)", ids(got))
	}
	if !got[1].Have.Has(0) || got[1].Have.Count() != 1 {
		t.Fatalf("n2's bitfield was not updated: %08b", got[1].Have)
	}
	got[0].Have.Clear(0) // callers must not reach into the tracker's memory
	if !tr.Peers(blobA)[0].Have.Has(0) {
		t.Fatal("Peers shares bitfield memory with the tracker")
	}

	now = now.Add(8 * time.Second)
	tr.Announce(ann("n2", blobA, 0, 1))
	now = now.Add(5 * time.Second) // seed and n1 are 13 s old, n2 5 s
	if got := ids(tr.Peers(blobA)); got != "n2" {
		t.Fatalf("after expiry: %s, want n2", got)
	}
	tr.Announce(ann("seed", blobA))
	if got := ids(tr.Peers(blobA)); got != "n2,seed" {
		t.Fatalf("an expired peer that returns goes last: %s, want n2,seed", got)
	}
	tr.Forget("n2")
	if got := ids(tr.Peers(blobA)); got != "seed" {
		t.Fatalf("after Forget(n2): %s", got)
	}
}

func TestAnnounceRejectsBadInput(t *testing.T) {
	tr := New(0)
	for name, mutate := range map[string]func(*pieces.Announcement){
		"empty id":        func(a *pieces.Announcement) { a.Peer.ID = "" },
		"plain http":      func(a *pieces.Announcement) { a.Peer.Addr = "http://10.0.0.1:80" },
		"no host":         func(a *pieces.Announcement) { a.Peer.Addr = "https://" },
		"path in addr":    func(a *pieces.Announcement) { a.Peer.Addr = "https://h:1/x" },
		"bad digest":      func(a *pieces.Announcement) { a.Digest = v1.Hash{Algorithm: "sha256", Hex: "ab"} },
		"huge bitfield":   func(a *pieces.Announcement) { a.Have = make(pieces.Bitfield, 1<<20) },
		"other algorithm": func(a *pieces.Announcement) { a.Digest.Algorithm = "sha512" },
	} {
		t.Run(name, func(t *testing.T) {
			a := ann("n1", blobA)
			mutate(&a)
			if err := tr.Announce(a); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if len(tr.Peers(blobA)) != 0 {
		t.Fatal("a rejected announcement was recorded")
	}
}

func TestHandler(t *testing.T) {
	tr := New(time.Minute)
	srv := httptest.NewServer(tr.Handler())
	defer srv.Close()
	post := func(body string) int {
		resp, err := http.Post(srv.URL+"/v1/tracker/announce", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	good, _ := json.Marshal(ann("n1", blobA, 3))
	for _, tc := range []struct {
		body string
		code int
	}{
		{string(good), http.StatusNoContent},
		{"{", http.StatusBadRequest},
		{`{"peer":{"id":"x","addr":"ftp://h"},"digest":"` + blobA.String() + `"}`, http.StatusBadRequest},
	} {
		if got := post(tc.body); got != tc.code {
			t.Errorf("announce %.40q = %d, want %d", tc.body, got, tc.code)
		}
	}
	resp, err := http.Get(srv.URL + "/v1/tracker/peers/" + blobA.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var pr PeersResponse
	if err := json.NewDecoder(resp.Body).Decode(&pr); err != nil {
		t.Fatal(err)
	}
	if len(pr.Peers) != 1 || pr.Peers[0].ID != "n1" || !pr.Peers[0].Have.Has(3) || !bytes.Equal(pr.Peers[0].Have, ann("n1", blobA, 3).Have) {
		t.Fatalf("peers = %+v", pr.Peers)
	}
	if r, _ := http.Get(srv.URL + "/v1/tracker/peers/sha256:zz"); r.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad digest: %d, want 400", r.StatusCode)
	}
}

func blob(i int) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", i)}
}

// TestTrackerBoundsHoldUnderFlood: a peer announcing thousands of made-up
// blobs, thousands of peers announcing one blob, and a flood of both keep
// the tracker within its bounds, evicting the least recently seen records:
// the flooder's own first, never the seed's.
func TestTrackerBoundsHoldUnderFlood(t *testing.T) {
	now := time.Unix(1000, 0)
	tick := func() time.Time { now = now.Add(time.Millisecond); return now }
	lim := Limits{MaxBlobsPerPeer: 8, MaxPeersPerBlob: 16, MaxEntries: 64, MaxHaveBytes: 64 * 16}
	tr := New(time.Hour, WithClock(tick), WithLimits(lim))
	must := func(a pieces.Announcement) {
		t.Helper()
		if err := tr.Announce(a); err != nil {
			t.Fatal(err)
		}
	}
	must(ann(SeedID, blobA, 0))
	must(ann("n1", blobA, 1))

	// One node, 10 000 made-up blobs: it keeps its 8 newest; nobody else loses anything.
	for i := range 10000 {
		must(ann("flooder", blob(i), 0))
	}
	st := tr.Stats()
	if got := len(tr.byPeer["flooder"]); got != lim.MaxBlobsPerPeer {
		t.Errorf("the flooder holds %d records, want its bound %d", got, lim.MaxBlobsPerPeer)
	}
	if got := ids(tr.Peers(blobA)); got != SeedID+",n1" {
		t.Errorf("blob A's peers after the flood: %s, want the seed and n1", got)
	}
	if _, ok := tr.byPeer["flooder"][blob(9999)]; !ok {
		t.Error("the flooder's newest record was evicted instead of its oldest")
	}
	t.Logf("after one peer's flood: %+v", st)

	// 1000 peers on one blob: the blob keeps 16 records, the seed among them.
	for i := range 1000 {
		must(ann(fmt.Sprintf("p%d", i), blobB, 0))
	}
	peers := tr.Peers(blobB)
	if len(peers) != lim.MaxPeersPerBlob {
		t.Errorf("blob B has %d peers, want its bound %d", len(peers), lim.MaxPeersPerBlob)
	}
	must(ann(SeedID, blobB, 0))
	for i := range 100 {
		must(ann(fmt.Sprintf("q%d", i), blobB, 0))
	}
	if !strings.Contains(ids(tr.Peers(blobB)), SeedID) {
		t.Errorf("the seed was evicted from blob B: %s", ids(tr.Peers(blobB)))
	}

	// Many peers, many blobs: the total stays bounded.
	for i := range 5000 {
		must(ann(fmt.Sprintf("r%d", i%300), blob(100000+i), 0))
	}
	st = tr.Stats()
	if st.Entries > lim.MaxEntries || st.HaveBytes > lim.MaxHaveBytes {
		t.Errorf("after the flood: %+v, want at most %d records and %d bitfield bytes", st, lim.MaxEntries, lim.MaxHaveBytes)
	}
	if st.Evicted == 0 {
		t.Error("nothing was evicted: the flood did not reach the bounds")
	}
	// Large bitfields hit the byte bound before the record bound.
	big := ann("s1", blob(1), 0)
	big.Have = make(pieces.Bitfield, 512)
	must(big)
	big.Peer.ID = "s2"
	must(big)
	if st := tr.Stats(); st.HaveBytes > lim.MaxHaveBytes {
		t.Errorf("bitfield bytes %d over the bound %d", st.HaveBytes, lim.MaxHaveBytes)
	}
	// The bookkeeping matches the records.
	n := 0
	for _, peers := range tr.blobs {
		n += len(peers)
	}
	if st := tr.Stats(); n != st.Entries {
		t.Errorf("%d records, the count says %d", n, st.Entries)
	}
	t.Logf("after the floods: %+v", tr.Stats())
}
