package tracker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

func TestSeedAddsOnceAndSurvivesRestart(t *testing.T) {
	blob := make([]byte, 600<<10)
	rand.Read(blob)
	sum := sha256.Sum256(blob)
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	src := filepath.Join(t.TempDir(), "blob")
	os.WriteFile(src, blob, 0o644)
	dir := t.TempDir()
	ctx := context.Background()

	tr := New(time.Minute)
	s, err := NewSeed(dir, tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.SetAddr("https://127.0.0.1:9443")
	l, err := s.Add(ctx, d, src)
	if err != nil {
		t.Fatal(err)
	}
	if l.Digest != d || l.Count() != 3 {
		t.Fatalf("list: %s, %d pieces; want %s, 3", l.Digest, l.Count(), d)
	}
	ps := tr.Peers(d)
	if len(ps) != 1 || ps[0].ID != SeedID || !ps[0].Complete || ps[0].Have.Count() != 3 {
		t.Fatalf("tracker after Add: %+v", ps)
	}
	// A restarted controller finds the list beside the blob: the source is not
	// read again (it moved; the image store still links the blob).
	moved := src + ".moved"
	os.Rename(src, moved)
	s2, _ := NewSeed(dir, New(time.Minute), nil)
	l2, err := s2.Add(ctx, d, src)
	if err != nil || l2.Digest != d || len(l2.Hashes) != 3 || l2.Hashes[2] != l.Hashes[2] {
		t.Fatalf("Add after restart: %v %+v", err, l2)
	}
	// Once the image store lets go of the blob, a restarted seed drops its link.
	os.Remove(moved)
	s3, _ := NewSeed(dir, New(time.Minute), nil)
	if s3.store.Has(d) {
		t.Fatal("the seed kept a blob whose source is gone")
	}
	// A blob that is not what its digest says is refused.
	other := filepath.Join(t.TempDir(), "other")
	os.WriteFile(other, []byte("not it"), 0o644)
	wrong := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(make([]byte, 32))}
	if _, err := s.Add(ctx, wrong, other); err == nil {
		t.Fatal("Add of a file under the wrong digest succeeded")
	}
	s.Withdraw()
	if ps := tr.Peers(d); len(ps) != 0 {
		t.Fatalf("after Withdraw: %+v", ps)
	}
}

func TestSeedHandlersLetAgentsAnnounceOnlyThemselves(t *testing.T) {
	s, _ := NewSeed(t.TempDir(), New(time.Minute), nil)
	hs := s.Handlers(Access{Identify: func(r *http.Request) (string, bool) {
		n := r.Header.Get("X-Test-Node")
		return n, n != ""
	}})
	mux := http.NewServeMux()
	for p, h := range hs {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, tc := range []struct {
		from, peer string
		want       int
	}{
		{"n1", "n1", http.StatusNoContent},
		{"n1", "n2", http.StatusForbidden},
		{"n1", SeedID, http.StatusForbidden},
		{"", "n1", http.StatusForbidden},
	} {
		body, _ := json.Marshal(pieces.Announcement{Peer: pieces.Peer{ID: tc.peer, Addr: "https://127.0.0.1:1"}, Digest: blobA, Have: pieces.NewBitfield(8)})
		req, _ := http.NewRequest("POST", srv.URL+"/v1/tracker/announce", bytes.NewReader(body))
		req.Header.Set("X-Test-Node", tc.from)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%q announcing %q: %d, want %d", tc.from, tc.peer, resp.StatusCode, tc.want)
		}
	}
	if got := ids(s.tr.Peers(blobA)); got != "n1" {
		t.Fatalf("tracker holds %q, want n1", got)
	}
}
