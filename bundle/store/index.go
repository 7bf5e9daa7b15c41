package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
)

// lockTimeout bounds every wait for a store lock.
const lockTimeout = 5 * time.Minute

func (s *Store) indexPath() string { return filepath.Join(s.dir, "index.json") }
func (s *Store) metaPath(p ...string) string {
	return filepath.Join(append([]string{s.dir, "flotilla"}, p...)...)
}

// lock takes a flock on the named lock file in <dir>/flotilla and returns its release.
// exclusive excludes everyone; shared only excludes exclusive holders.
func (s *Store) lock(ctx context.Context, name string, exclusive bool) (func(), error) {
	f, err := os.OpenFile(s.metaPath(name), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("store lock %s: %w", name, err)
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	ctx, cancel := context.WithTimeout(ctx, lockTimeout)
	defer cancel()
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("store lock %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("store lock %s: another flotilla command holds it: %w", s.metaPath(name), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (s *Store) readIndex() (*v1.IndexManifest, error) {
	b, err := os.ReadFile(s.indexPath())
	if errors.Is(err, os.ErrNotExist) {
		return &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.indexPath(), err)
	}
	var im v1.IndexManifest
	if err := json.Unmarshal(b, &im); err != nil {
		return nil, fmt.Errorf("parse %s: %w", s.indexPath(), err)
	}
	return &im, nil
}

// updateIndex runs fn on index.json under the index lock and writes it back atomically
// when fn reports a change.
func (s *Store) updateIndex(ctx context.Context, fn func(*v1.IndexManifest) (bool, error)) error {
	unlock, err := s.lock(ctx, "index.lock", true)
	if err != nil {
		return err
	}
	defer unlock()
	im, err := s.readIndex()
	if err != nil {
		return err
	}
	changed, err := fn(im)
	if err != nil || !changed {
		return err
	}
	if im.Manifests == nil {
		im.Manifests = []v1.Descriptor{}
	}
	b, err := json.MarshalIndent(im, "", "  ")
	if err != nil {
		return fmt.Errorf("encode index.json: %w", err)
	}
	return atomicfile.Write(s.indexPath(), b, 0o644)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// Tag points name at desc (replacing what the name named before).
func (s *Store) Tag(ctx context.Context, ref string, desc v1.Descriptor) error {
	n, err := NormalizeName(ref)
	if err != nil {
		return err
	}
	if !s.HasBlob(desc.Digest) {
		return fmt.Errorf("tag %s: manifest %s: %w", n, desc.Digest, ErrNotFound)
	}
	return s.updateIndex(ctx, func(im *v1.IndexManifest) (bool, error) {
		return setTag(im, n, desc), nil
	})
}

func setTag(im *v1.IndexManifest, n string, desc v1.Descriptor) bool {
	d := v1.Descriptor{MediaType: desc.MediaType, Size: desc.Size, Digest: desc.Digest, Platform: desc.Platform}
	if n != "" {
		d.Annotations = map[string]string{RefNameAnnotation: n}
	}
	for i, e := range im.Manifests {
		if e.Annotations[RefNameAnnotation] != n {
			continue
		}
		if n == "" && e.Digest != desc.Digest {
			continue
		}
		if e.Digest == d.Digest && e.MediaType == d.MediaType && e.Size == d.Size {
			return false
		}
		im.Manifests[i] = d
		return true
	}
	im.Manifests = append(im.Manifests, d)
	return true
}

// Untag removes the names (or digests: every name of that digest) from index.json; the
// blobs stay until GC. It returns the descriptors removed.
func (s *Store) Untag(ctx context.Context, refs ...string) ([]Entry, error) {
	type target struct{ name, digest string }
	var targets []target
	for _, r := range refs {
		d, err := s.Get(r)
		if err != nil {
			return nil, err
		}
		if n, err := NormalizeName(r); err == nil && !isDigestRef(r) {
			targets = append(targets, target{name: n})
		} else {
			targets = append(targets, target{digest: d.Digest.String()})
		}
	}
	var removed []Entry
	err := s.updateIndex(ctx, func(im *v1.IndexManifest) (bool, error) {
		keep := im.Manifests[:0]
		for _, e := range im.Manifests {
			drop := false
			for _, t := range targets {
				if (t.name != "" && e.Annotations[RefNameAnnotation] == t.name) || (t.digest != "" && e.Digest.String() == t.digest) {
					drop = true
				}
			}
			if drop {
				removed = append(removed, Entry{Name: e.Annotations[RefNameAnnotation], Descriptor: e})
			} else {
				keep = append(keep, e)
			}
		}
		im.Manifests = keep
		return len(removed) > 0, nil
	})
	return removed, err
}

func isDigestRef(r string) bool {
	if len(r) >= 6 && len(r) <= 64 && hexRE.MatchString(r+string(bytes.Repeat([]byte("0"), 64-len(r)))) {
		return true
	}
	return len(r) > 7 && r[:7] == "sha256:"
}

// storeIndex is a v1.ImageIndex read from the store's blobs.
type storeIndex struct {
	s      *Store
	digest v1.Hash
}

func (i *storeIndex) raw() ([]byte, error) {
	rc, _, err := i.s.OpenBlob(i.digest)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}
func (i *storeIndex) MediaType() (types.MediaType, error) {
	im, err := i.IndexManifest()
	if err != nil {
		return "", err
	}
	if im.MediaType == "" {
		return types.OCIImageIndex, nil
	}
	return im.MediaType, nil
}
func (i *storeIndex) Digest() (v1.Hash, error)          { return i.digest, nil }
func (i *storeIndex) Size() (int64, error)              { return partial.Size(i) }
func (i *storeIndex) RawManifest() ([]byte, error)      { return i.raw() }
func (i *storeIndex) Image(h v1.Hash) (v1.Image, error) { return i.s.Image(h) }
func (i *storeIndex) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	return i.s.Index(h)
}
func (i *storeIndex) IndexManifest() (*v1.IndexManifest, error) {
	b, err := i.raw()
	if err != nil {
		return nil, err
	}
	return v1.ParseIndexManifest(bytes.NewReader(b))
}
