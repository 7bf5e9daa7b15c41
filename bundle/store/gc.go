package store

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// GCResult says what garbage collection removed.
type GCResult struct {
	Blobs int   // blobs deleted
	Bytes int64 // bytes freed
}

// GC deletes every blob that no image in index.json references, and stale staging
// directories. It waits until no transaction is open, and blocks new ones meanwhile.
func (s *Store) GC(ctx context.Context) (GCResult, error) {
	var res GCResult
	release, err := s.lock(ctx, "gc.lock", true)
	if err != nil {
		return res, err
	}
	defer release()
	unlock, err := s.lock(ctx, "index.lock", true)
	if err != nil {
		return res, err
	}
	defer unlock()
	im, err := s.readIndex()
	if err != nil {
		return res, err
	}
	keep := map[string]bool{}
	for _, d := range im.Manifests {
		if err := s.mark(d.Digest, keep, 0); err != nil {
			return res, fmt.Errorf("gc: %w", err)
		}
	}
	dir := filepath.Join(s.dir, "blobs", "sha256")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return res, fmt.Errorf("gc: %w", err)
	}
	for _, e := range ents {
		if keep[e.Name()] {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			return res, fmt.Errorf("gc: %w", err)
		}
		res.Blobs++
		res.Bytes += info.Size()
	}
	// No transaction is open: whatever is left in staging is from a crashed command.
	if tmp, err := os.ReadDir(s.metaPath("tmp")); err == nil {
		for _, e := range tmp {
			os.RemoveAll(s.metaPath("tmp", e.Name()))
		}
	}
	return res, nil
}

// mark adds h and everything a manifest or index at h references to keep.
func (s *Store) mark(h v1.Hash, keep map[string]bool, depth int) error {
	if keep[h.Hex] {
		return nil
	}
	if depth > 8 {
		return fmt.Errorf("manifest %s: nesting too deep", h)
	}
	keep[h.Hex] = true
	p, err := s.BlobPath(h)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("manifest %s named in index.json: %w", h, err)
	}
	var m struct {
		Config    *v1.Descriptor  `json:"config"`
		Layers    []v1.Descriptor `json:"layers"`
		Manifests []v1.Descriptor `json:"manifests"`
		Subject   *v1.Descriptor  `json:"subject"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("manifest %s: %w", h, err)
	}
	if m.Config != nil {
		keep[m.Config.Digest.Hex] = true
	}
	for _, l := range m.Layers {
		keep[l.Digest.Hex] = true
	}
	for _, c := range m.Manifests {
		if err := s.mark(c.Digest, keep, depth+1); err != nil {
			return err
		}
	}
	return nil
}
