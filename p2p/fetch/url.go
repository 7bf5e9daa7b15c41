package fetch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/cavaliergopher/grab/v3"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/time/rate"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// FetchURL downloads the whole blob d from one URL (the controller's
// GET /v1/blobs/<digest>) into the store, for when no piece list is at
// hand. An interrupted download resumes from the bytes already on disk (HTTP
// Range); the blob counts only once it matches d. limit may be nil.
func FetchURL(ctx context.Context, client *http.Client, url string, store *pieces.Store, d v1.Hash, limit *rate.Limiter, progress func(Progress)) (string, error) {
	if store.Has(d) {
		return store.Path(d), nil
	}
	sum, err := hex.DecodeString(d.Hex)
	if err != nil || d.Algorithm != "sha256" || len(sum) != sha256.Size {
		return "", fmt.Errorf("fetch %s: digest: want sha256:<64 hex>", url)
	}
	tmp := store.Path(d) + ".download"
	req, err := grab.NewRequest(tmp, url)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w", url, err)
	}
	req = req.WithContext(ctx)
	req.SetChecksum(sha256.New(), sum, true) // a mismatching download is deleted, never used
	req.NoCreateDirectories = true
	req.IgnoreRemoteTime = true
	if limit != nil {
		req.RateLimiter = limit
		req.BufferSize = min(32<<10, limit.Burst())
	}
	gc := grab.NewClient()
	gc.HTTPClient = client
	gc.UserAgent = "flotilla"
	resp := gc.Do(req)
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	report := func(done bool) {
		if progress != nil {
			progress(Progress{Digest: d, Held: resp.BytesComplete(), Total: resp.Size(), Fetched: resp.BytesComplete(), Rate: resp.BytesPerSecond(), Peers: 1, Done: done})
		}
	}
wait:
	for {
		select {
		case <-t.C:
			report(false)
		case <-resp.Done:
			break wait
		}
	}
	if err := resp.Err(); err != nil {
		return "", fmt.Errorf("fetch %s from %s: %w", d, url, err)
	}
	if err := os.Rename(tmp, store.Path(d)); err != nil {
		return "", fmt.Errorf("fetch %s: %w", d, err)
	}
	report(true)
	return store.Path(d), nil
}
