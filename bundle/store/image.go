package store

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// storeImage is a v1.Image read from the store's blobs by manifest digest, whether or
// not index.json lists it (the platform images of an index are not listed).
type storeImage struct {
	s      *Store
	digest v1.Hash
	once   sync.Once
	raw    []byte
	err    error
}

func (s *Store) readBlob(h v1.Hash) ([]byte, error) {
	rc, _, err := s.OpenBlob(h)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func (i *storeImage) RawManifest() ([]byte, error) {
	i.once.Do(func() { i.raw, i.err = i.s.readBlob(i.digest) })
	return i.raw, i.err
}

func (i *storeImage) MediaType() (types.MediaType, error) {
	m, err := partial.Manifest(i)
	if err != nil {
		return "", err
	}
	if m.MediaType == "" {
		return types.OCIManifestSchema1, nil
	}
	return m.MediaType, nil
}

func (i *storeImage) RawConfigFile() ([]byte, error) {
	m, err := partial.Manifest(i)
	if err != nil {
		return nil, err
	}
	return i.s.readBlob(m.Config.Digest)
}

func (i *storeImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	m, err := partial.Manifest(i)
	if err != nil {
		return nil, err
	}
	if m.Config.Digest == h {
		return &storeBlob{s: i.s, desc: m.Config}, nil
	}
	for _, l := range m.Layers {
		if l.Digest == h {
			return &storeBlob{s: i.s, desc: l}, nil
		}
	}
	return nil, fmt.Errorf("image %s has no layer %s", i.digest, h)
}

type storeBlob struct {
	s    *Store
	desc v1.Descriptor
}

func (b *storeBlob) Digest() (v1.Hash, error)            { return b.desc.Digest, nil }
func (b *storeBlob) Size() (int64, error)                { return b.desc.Size, nil }
func (b *storeBlob) MediaType() (types.MediaType, error) { return b.desc.MediaType, nil }
func (b *storeBlob) Compressed() (io.ReadCloser, error) {
	rc, _, err := b.s.OpenBlob(b.desc.Digest)
	return rc, err
}

func newStoreImage(s *Store, h v1.Hash) (v1.Image, error) {
	img := &storeImage{s: s, digest: h}
	raw, err := img.RawManifest()
	if err != nil {
		return nil, err
	}
	if _, err := v1.ParseManifest(bytes.NewReader(raw)); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", h, err)
	}
	return partial.CompressedToImage(img)
}
