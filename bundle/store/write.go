package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/progress"
	"github.com/flotilla-dev/flotilla/internal/atomicfile"
)

// PutImage stages every blob of img the store lacks (layers, config, manifest), each
// verified against its digest, and returns the image's descriptor.
func (t *Txn) PutImage(ctx context.Context, img v1.Image, rep progress.Reporter) (v1.Descriptor, error) {
	rep = progress.OrNop(rep)
	layers, err := img.Layers()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("read layers: %w", err)
	}
	for _, l := range layers {
		if err := ctx.Err(); err != nil {
			return v1.Descriptor{}, err
		}
		d, err := l.Digest()
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("layer digest: %w", err)
		}
		if t.Has(d) {
			continue
		}
		size, err := l.Size()
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("layer %s size: %w", d, err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("layer %s: %w", d, err)
		}
		bar := rep.Start("layer "+d.Hex[:12], size)
		err = t.PutBlob(d, size, progress.Reader(rc, bar))
		rc.Close()
		bar.Done(err)
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("layer: %w", err)
		}
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("config digest: %w", err)
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("config %s: %w", cfgName, err)
	}
	if err := t.PutBlob(cfgName, int64(len(cfg)), bytes.NewReader(cfg)); err != nil {
		return v1.Descriptor{}, fmt.Errorf("config: %w", err)
	}
	return t.putManifest(img)
}

type manifestLike interface {
	RawManifest() ([]byte, error)
	Digest() (v1.Hash, error)
}

func (t *Txn) putManifest(m manifestLike) (v1.Descriptor, error) {
	raw, err := m.RawManifest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest: %w", err)
	}
	d, err := m.Digest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest digest: %w", err)
	}
	if err := t.PutBlob(d, int64(len(raw)), bytes.NewReader(raw)); err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest: %w", err)
	}
	desc := v1.Descriptor{Digest: d, Size: int64(len(raw))}
	if mt, err := m.(interface {
		MediaType() (types.MediaType, error)
	}).MediaType(); err == nil {
		desc.MediaType = mt
	}
	return desc, nil
}

// PutIndex stages a multi-arch index and every image (or nested index) it names.
func (t *Txn) PutIndex(ctx context.Context, idx v1.ImageIndex, rep progress.Reporter) (v1.Descriptor, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("index manifest: %w", err)
	}
	for _, m := range im.Manifests {
		if m.MediaType.IsIndex() {
			child, err := idx.ImageIndex(m.Digest)
			if err != nil {
				return v1.Descriptor{}, fmt.Errorf("index %s: %w", m.Digest, err)
			}
			if _, err := t.PutIndex(ctx, child, rep); err != nil {
				return v1.Descriptor{}, err
			}
			continue
		}
		img, err := idx.Image(m.Digest)
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("image %s: %w", m.Digest, err)
		}
		if _, err := t.PutImage(ctx, img, rep); err != nil {
			return v1.Descriptor{}, fmt.Errorf("image %s: %w", m.Digest, err)
		}
	}
	return t.putManifest(idx)
}

var keyRE = regexp.MustCompile(`^[a-z0-9-]{1,128}$`)

// CacheGet reads the cache entry key (lower-case hex/dash) into v; false when absent.
func (s *Store) CacheGet(key string, v any) bool {
	if !keyRE.MatchString(key) {
		return false
	}
	b, err := os.ReadFile(s.metaPath("cache", key))
	return err == nil && json.Unmarshal(b, v) == nil
}

// CachePut writes the cache entry key. Entries are hints: readers check the blobs.
func (s *Store) CachePut(key string, v any) error {
	if !keyRE.MatchString(key) {
		return fmt.Errorf("invalid cache key %q", key)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(s.metaPath("cache", key)); err == nil && bytes.Equal(old, b) {
		return nil
	}
	return atomicfile.Write(s.metaPath("cache", key), b, 0o644)
}

// RecordBuild remembers that the build context dir last produced desc, so commands can
// name an image by its context directory (`flotilla inspect examples/hello`).
func (s *Store) RecordBuild(ctx context.Context, dir string, desc v1.Descriptor) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	unlock, err := s.lock(ctx, "index.lock", true)
	if err != nil {
		return err
	}
	defer unlock()
	rec := map[string]v1.Descriptor{}
	if b, err := os.ReadFile(s.metaPath("builds.json")); err == nil {
		_ = json.Unmarshal(b, &rec)
	}
	if old, ok := rec[abs]; ok && old.Digest == desc.Digest {
		return nil
	}
	rec[abs] = v1.Descriptor{MediaType: desc.MediaType, Size: desc.Size, Digest: desc.Digest}
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.metaPath("builds.json"), b, 0o644)
}

// BuildOf returns the descriptor last built from context dir.
func (s *Store) BuildOf(dir string) (v1.Descriptor, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return v1.Descriptor{}, err
	}
	rec := map[string]v1.Descriptor{}
	if b, err := os.ReadFile(s.metaPath("builds.json")); err == nil {
		_ = json.Unmarshal(b, &rec)
	}
	d, ok := rec[abs]
	if !ok || !s.HasBlob(d.Digest) {
		return v1.Descriptor{}, fmt.Errorf("no image built from %s: %w (run flotilla build %s)", dir, ErrNotFound, dir)
	}
	return d, nil
}
