package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DigestMismatchError reports a blob whose content does not match its digest.
type DigestMismatchError struct {
	Want, Got v1.Hash
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("digest mismatch: blob claims %s but its content is %s", e.Want, e.Got)
}

// Txn stages blobs next to the store and moves them in only on Commit, so a failed
// build, pull or load leaves the store as it was. While a Txn is open, GC waits.
type Txn struct {
	s       *Store
	dir     string
	release func()
	mu      sync.Mutex
	staged  map[v1.Hash]string // digest -> staged file
	done    bool
}

// Begin opens a transaction.
func (s *Store) Begin(ctx context.Context) (*Txn, error) {
	release, err := s.lock(ctx, "gc.lock", false)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(s.metaPath("tmp"), "txn-")
	if err != nil {
		release()
		return nil, fmt.Errorf("stage in %s: %w", s.metaPath("tmp"), err)
	}
	return &Txn{s: s, dir: dir, release: release, staged: map[v1.Hash]string{}}, nil
}

// Store returns the store the transaction writes to.
func (t *Txn) Store() *Store { return t.s }

// Has reports whether the blob is in the store or staged in t.
func (t *Txn) Has(h v1.Hash) bool {
	t.mu.Lock()
	_, ok := t.staged[h]
	t.mu.Unlock()
	return ok || t.s.HasBlob(h)
}

// path returns where the blob is readable now: staged or in the store.
func (t *Txn) path(h v1.Hash) (string, error) {
	t.mu.Lock()
	p, ok := t.staged[h]
	t.mu.Unlock()
	if ok {
		return p, nil
	}
	p, err := t.s.BlobPath(h)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("blob %s: %w", h, ErrNotFound)
	}
	return p, nil
}

// BlobWriter writes a new blob and learns its digest as it goes.
type BlobWriter struct {
	t *Txn
	f *os.File
	h hash.Hash
	n int64
}

// NewBlob starts a blob whose digest is computed from what is written.
func (t *Txn) NewBlob() (*BlobWriter, error) {
	f, err := os.CreateTemp(t.dir, "blob-")
	if err != nil {
		return nil, fmt.Errorf("stage blob: %w", err)
	}
	return &BlobWriter{t: t, f: f, h: sha256.New()}, nil
}

func (w *BlobWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Close finishes the blob and stages it; it returns the digest and size.
func (w *BlobWriter) Close() (v1.Hash, int64, error) {
	if err := w.f.Close(); err != nil {
		os.Remove(w.f.Name())
		return v1.Hash{}, 0, fmt.Errorf("stage blob: %w", err)
	}
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(w.h.Sum(nil))}
	return h, w.n, w.t.adopt(h, w.f.Name())
}

// Abort discards the blob.
func (w *BlobWriter) Abort() { w.f.Close(); os.Remove(w.f.Name()) }

func (t *Txn) adopt(h v1.Hash, file string) error {
	if t.Has(h) {
		return os.Remove(file)
	}
	p := filepath.Join(t.dir, h.Hex)
	if err := os.Rename(file, p); err != nil {
		return fmt.Errorf("stage blob %s: %w", h, err)
	}
	t.mu.Lock()
	t.staged[h] = p
	t.mu.Unlock()
	return nil
}

// PutBlob stages the content of r as blob want, verifying the digest (and size when
// size >= 0). A blob already present is not read at all.
func (t *Txn) PutBlob(want v1.Hash, size int64, r io.Reader) error {
	if _, err := t.s.BlobPath(want); err != nil {
		return err
	}
	if t.Has(want) {
		return nil
	}
	w, err := t.NewBlob()
	if err != nil {
		return err
	}
	_, err = io.Copy(w, r)
	got := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(w.h.Sum(nil))}
	if err != nil {
		w.Abort()
		// A verifying reader (go-containerregistry's remote layers) fails at the end of
		// a blob whose content is wrong; report that as the mismatch it is.
		if size >= 0 && w.n == size && got != want {
			return fmt.Errorf("blob %s: %w", want, &DigestMismatchError{Want: want, Got: got})
		}
		return fmt.Errorf("blob %s: %w", want, err)
	}
	if got != want {
		w.Abort()
		return fmt.Errorf("blob %s: %w", want, &DigestMismatchError{Want: want, Got: got})
	}
	if size >= 0 && w.n != size {
		w.Abort()
		return fmt.Errorf("blob %s: size %d, manifest says %d", want, w.n, size)
	}
	_, _, err = w.Close()
	return err
}

// Layer returns a v1.Layer backed by a staged or stored blob.
func (t *Txn) Layer(digest, diffID v1.Hash, size int64, mt types.MediaType) (v1.Layer, error) {
	return partial.CompressedToLayer(&blobLayer{t: t, digest: digest, diffID: diffID, size: size, mt: mt})
}

type blobLayer struct {
	t              *Txn
	digest, diffID v1.Hash
	size           int64
	mt             types.MediaType
}

func (l *blobLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *blobLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *blobLayer) Size() (int64, error)                { return l.size, nil }
func (l *blobLayer) MediaType() (types.MediaType, error) { return l.mt, nil }
func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	p, err := l.t.path(l.digest)
	if err != nil {
		return nil, err
	}
	return os.Open(p)
}

// Commit moves the staged blobs into the store, then points each name in tags at its
// descriptor. Blobs go first so index.json never names a missing blob.
func (t *Txn) Commit(ctx context.Context, tags map[string]v1.Descriptor) error {
	if t.done {
		return errors.New("transaction already finished")
	}
	defer t.Abort()
	t.mu.Lock()
	for h, p := range t.staged {
		dst, _ := t.s.BlobPath(h)
		if _, err := os.Stat(dst); err == nil {
			continue
		}
		if err := os.Chmod(p, 0o644); err != nil {
			t.mu.Unlock()
			return fmt.Errorf("commit blob %s: %w", h, err)
		}
		if err := os.Rename(p, dst); err != nil {
			t.mu.Unlock()
			return fmt.Errorf("commit blob %s: %w", h, err)
		}
	}
	t.staged = map[v1.Hash]string{}
	t.mu.Unlock()
	if len(tags) == 0 {
		return nil
	}
	return t.s.updateIndex(ctx, func(im *v1.IndexManifest) (bool, error) {
		changed := false
		// Tags go in in name order so that the same load gives the same index.json.
		for _, n := range slices.Sorted(maps.Keys(tags)) {
			d := tags[n]
			if n != "" {
				var err error
				if n, err = NormalizeName(n); err != nil {
					return false, err
				}
			}
			if setTag(im, n, d) {
				changed = true
			}
		}
		return changed, nil
	})
}

// Abort drops everything staged; it is safe after Commit.
func (t *Txn) Abort() {
	if t.done {
		return
	}
	t.done = true
	os.RemoveAll(t.dir)
	t.release()
}

// Staged returns how many new blobs the transaction holds.
func (t *Txn) Staged() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.staged)
}

// ReadBlob returns a staged or stored blob's bytes (for manifests and configs).
func (t *Txn) ReadBlob(h v1.Hash) ([]byte, error) {
	p, err := t.path(h)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}
