package rollout

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
	"github.com/flotilla-dev/flotilla/p2p/tracker"
	"github.com/flotilla-dev/flotilla/protocol"
)

func TestPeerToPeerFillsLayerPayloads(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	put := func(size int) protocol.LayerPayload {
		b := make([]byte, size)
		rand.Read(b)
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		if err := os.WriteFile(filepath.Join(st.Dir(), "blobs", "sha256", h), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return protocol.LayerPayload{Cluster: "c", Digest: "sha256:" + h, Size: int64(size)}
	}
	tr := tracker.New(time.Minute)
	seed, err := tracker.NewSeed(t.TempDir(), tr, nil)
	if err != nil {
		t.Fatal(err)
	}
	seed.SetAddr("https://127.0.0.1:9443")
	decorate := PeerToPeer(st, seed, nil)
	cl := &clusterfile.Cluster{Name: "c", Bandwidth: clusterfile.Bandwidth{Upload: 1e6, Download: 2e6}}
	ctx := context.Background()

	big, small := put(1<<20+5), put(1000)
	missing := big
	missing.Digest = "sha256:" + strings.Repeat("0", 64)
	for _, tc := range []struct {
		name       string
		p          protocol.LayerPayload
		wantPieces int
		wantErr    string
	}{
		{"layer of 5 pieces", big, 5, ""},
		{"one-piece layer keeps the URL fetch", small, 0, ""},
		{"blob not in the store", missing, 0, "flotilla pull/load"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.p
			err := decorate(ctx, LayerRequest{Cluster: cl, Node: "n1", Payload: &p})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.MaxUpload != 1e6 || p.MaxDownload != 2e6 {
				t.Errorf("caps %d/%d, want spec.bandwidth's 1e6/2e6", p.MaxUpload, p.MaxDownload)
			}
			if tc.wantPieces == 0 {
				if len(p.Pieces) != 0 {
					t.Errorf("pieces set for a one-piece layer")
				}
				return
			}
			var l pieces.PieceList
			if err := json.Unmarshal(p.Pieces, &l); err != nil {
				t.Fatal(err)
			}
			if l.Validate() != nil || l.Digest.String() != p.Digest || l.Count() != tc.wantPieces {
				t.Fatalf("piece list %s with %d pieces, want %s with %d", l.Digest, l.Count(), p.Digest, tc.wantPieces)
			}
			if ps := tr.Peers(l.Digest); len(ps) != 1 || ps[0].ID != tracker.SeedID || !ps[0].Complete {
				t.Fatalf("seed not announced: %+v", ps)
			}
		})
	}
}
