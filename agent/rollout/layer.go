package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/unpack"
	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
)

// LayerRecord is clusters/<cluster>/layers/<hex>.json: what one layer placed.
type LayerRecord struct {
	Digest string `json:"digest"`
	DiffID string `json:"diffID,omitempty"`
	// Complete is false when the unpack failed part way: Records is what it placed
	// so far (undo still removes it), and the next run unpacks again.
	Complete bool            `json:"complete"`
	Unpacked time.Time       `json:"unpacked"`
	Records  []unpack.Record `json:"records"`
}

// blobPath is where a verified blob is cached.
func blobPath(dataDir, hexDigest string) string {
	return filepath.Join(dataDir, "blobs", "sha256", hexDigest)
}

func layerRecordPath(dir, hexDigest string) string {
	return filepath.Join(dir, "layers", hexDigest+".json")
}

func (x *steps) layer(ctx context.Context, sc *agent.StepContext) error {
	var p protocol.LayerPayload
	if err := decodePayload(sc, &p); err != nil {
		return err
	}
	h, err := unpack.DigestHex(p.Digest)
	if err != nil {
		return fmt.Errorf("layer step %q: %w", sc.Step.Name, err)
	}
	dir, err := clusterDir(sc.DataDir, p.Cluster)
	if err != nil {
		return fmt.Errorf("layer %s: %w", p.Digest, err)
	}
	recPath := layerRecordPath(dir, h)
	var old LayerRecord
	found, err := readJSON(recPath, &old)
	if err != nil {
		return err
	}
	if found && old.Complete && old.Digest == p.Digest {
		sc.Output("stdout", fmt.Sprintf("layer %s is already unpacked under %s", protocol.ShortDigest(p.Digest), sc.Root))
		return nil
	}
	unlock := x.blobs.lock(h)
	defer unlock()
	blob, fetched, err := x.ensureBlob(ctx, sc, p, h, "layer")
	if err != nil {
		return err
	}
	opts := []unpack.Option{unpack.WithMaxBytes(p.MaxUnpackBytes), unpack.WithMaxEntries(p.MaxUnpackEntries), unpack.WithSetuid(p.KeepSetuid)}
	if p.Contents != nil {
		// Recorded at build time and signed: no pre-pass over the layer.
		opts = append(opts, unpack.WithDeclaredContents(p.Contents))
	}
	first := opts
	if fetched {
		// Just fetched and verified (pieces against a signed list, or hashed as
		// it arrived): no second sha256 over the blob. A cached copy is hashed.
		first = append(slices.Clip(opts), unpack.WithVerifiedBlob())
	}
	records, err := unpack.UnpackFile(ctx, blob, p.Digest, sc.Root, first...)
	if errors.Is(err, unpack.ErrDigestMismatch) && !fetched {
		// The cached copy went bad on disk since it was verified: fetch it again.
		sc.Output("stderr", fmt.Sprintf("cached blob %s does not match its digest any more: fetching it again", blob))
		if rerr := os.Remove(blob); rerr != nil {
			return fmt.Errorf("layer %s: %w; and removing the bad cached copy: %v", p.Digest, err, rerr)
		}
		if blob, _, err = x.ensureBlob(ctx, sc, p, h, "layer"); err != nil {
			return err
		}
		records, err = unpack.UnpackFile(ctx, blob, p.Digest, sc.Root, opts...)
	}
	rec := LayerRecord{Digest: p.Digest, DiffID: p.DiffID, Complete: err == nil, Unpacked: time.Now().UTC(),
		Records: mergeCreated(old.Records, records)}
	if len(rec.Records) > 0 || err == nil {
		if werr := writeJSON(recPath, rec); werr != nil {
			return errors.Join(err, fmt.Errorf("layer %s: record what was placed: %w", p.Digest, werr))
		}
	}
	if err != nil {
		return fmt.Errorf("unpack layer %s under %s: %w", p.Digest, sc.Root, err)
	}
	sc.Output("stdout", fmt.Sprintf("layer %s: %d paths placed under %s", protocol.ShortDigest(p.Digest), len(records), sc.Root))
	return nil
}

// ensureBlob returns the cached blob's path, fetching it through Options.Fetch
// when absent; fetched tells whether it was just fetched (and verified).
// what names the blob in messages ("layer", "container image blob"). The
// caller holds the blob's lock.
func (x *steps) ensureBlob(ctx context.Context, sc *agent.StepContext, p protocol.LayerPayload, h, what string) (path string, fetched bool, err error) {
	cache := blobPath(sc.DataDir, h)
	if fi, err := os.Stat(cache); err == nil && fi.Mode().IsRegular() && (p.Size <= 0 || fi.Size() == p.Size) {
		return cache, false, nil
	}
	if err := os.MkdirAll(filepath.Dir(cache), 0o700); err != nil {
		return "", false, fmt.Errorf("%s %s: blob cache: %w", what, p.Digest, err)
	}
	part := cache + ".part"
	fi, err := os.Stat(part)
	resumed := err == nil
	if resumed && p.Size > 0 && fi.Size() > p.Size {
		_ = os.Remove(part) // longer than the blob: not a prefix of it
		resumed = false
	}
	for attempt := 0; ; attempt++ {
		start := time.Now()
		verified, err := x.opts.Fetch(ctx, sc, p, part)
		if err != nil {
			return "", false, fmt.Errorf("fetch %s %s: %w", what, p.Digest, err)
		}
		if !verified {
			err = verifyBlob(part, p.Digest, h, p.Size)
		}
		if err == nil {
			if err := os.Rename(part, cache); err != nil {
				return "", false, fmt.Errorf("%s %s: move into the blob cache: %w", what, p.Digest, err)
			}
			if p.Size > 0 {
				sc.Output("stdout", fmt.Sprintf("%s %s: fetched %s in %s", what, protocol.ShortDigest(p.Digest), human.Bytes(p.Size), time.Since(start).Round(time.Millisecond)))
			}
			return cache, true, nil
		}
		_ = os.Remove(part)
		if !resumed || attempt > 0 {
			return "", false, err
		}
		// What an earlier attempt left may not have been a prefix of this blob.
		sc.Output("stderr", fmt.Sprintf("%v: fetching the whole blob again", err))
	}
}

// verifyBlob checks a downloaded blob's size and sha256.
func verifyBlob(path, digest, h string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("layer %s: %w", digest, err)
	}
	defer f.Close()
	sum := sha256.New()
	n, err := io.Copy(sum, f)
	if err != nil {
		return fmt.Errorf("layer %s: read %s: %w", digest, path, err)
	}
	if size > 0 && n != size {
		return fmt.Errorf("layer %s: downloaded %d bytes, want %d: %w", digest, n, size, unpack.ErrDigestMismatch)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != h {
		return fmt.Errorf("layer %s: %w: the download hashes to sha256:%s (deleted; nothing was unpacked)", digest, unpack.ErrDigestMismatch, got)
	}
	return nil
}

// mergeCreated keeps the "created" mark of directories an earlier placement
// made (that a later run finds existing), so that undo still removes them.
func mergeCreated(old, cur []unpack.Record) []unpack.Record {
	created := map[string]bool{}
	for _, r := range old {
		if r.Kind == unpack.KindDir && r.Created {
			created[r.Path] = true
		}
	}
	if len(created) == 0 {
		return cur
	}
	out := make([]unpack.Record, 0, len(cur)+len(created))
	seen := map[string]bool{}
	for _, r := range cur {
		if r.Kind == unpack.KindDir && created[r.Path] {
			r.Created = true
			seen[r.Path] = true
		}
		out = append(out, r)
	}
	var missing []unpack.Record
	for _, r := range old {
		if r.Kind == unpack.KindDir && r.Created && !seen[r.Path] {
			missing = append(missing, r)
		}
	}
	return append(missing, out...)
}
