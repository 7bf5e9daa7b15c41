// Package imagecachetest builds container images in memory for tests of the image
// cache and the registry mirror: a Source maps digests to bytes and serves them as an
// imagecache.Source.
package imagecachetest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
)

// Source holds blobs by digest.
type Source map[v1.Hash][]byte

// Open serves a blob (imagecache.Source).
func (s Source) Open(_ context.Context, d v1.Descriptor) (io.ReadCloser, error) {
	b, ok := s[d.Digest]
	if !ok {
		return nil, fmt.Errorf("test source has no %s", d.Digest)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

// Layer returns a random gzip layer of about size bytes.
func Layer(t testing.TB, size int64) v1.Layer {
	t.Helper()
	l, err := random.Layer(size, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Image returns an OCI image with the layers, for platform p (nil: linux/amd64).
func Image(t testing.TB, p *v1.Platform, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if p != nil {
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// AddImage puts an image's manifest, config and layers into s and returns it as a
// plan entry named name (roles all).
func (s Source) AddImage(t testing.TB, name string, img v1.Image) recipe.ContainerImage {
	t.Helper()
	raw, _ := img.RawManifest()
	cfg, _ := img.RawConfigFile()
	cfgName, _ := img.ConfigName()
	d, _ := img.Digest()
	mt, _ := img.MediaType()
	s[d] = raw
	s[cfgName] = cfg
	layers, _ := img.Layers()
	for _, l := range layers {
		ld, _ := l.Digest()
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		s[ld] = b
	}
	return recipe.ContainerImage{Ref: name, Name: name, Digest: d.String(), MediaType: string(mt), Size: int64(len(raw)), Roles: []string{recipe.RoleAll}}
}

// AddIndex puts an OCI index over the images (one per platform) into s.
func (s Source) AddIndex(t testing.TB, name string, imgs map[string]v1.Image) (recipe.ContainerImage, map[string]v1.Hash) {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	digests := map[string]v1.Hash{}
	for pl, img := range imgs {
		p, err := v1.ParsePlatform(pl)
		if err != nil {
			t.Fatal(err)
		}
		s.AddImage(t, name, img)
		digests[pl], _ = img.Digest()
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p}})
	}
	raw, _ := idx.RawManifest()
	d, _ := idx.Digest()
	s[d] = raw
	return recipe.ContainerImage{Ref: name, Name: name, Digest: d.String(), MediaType: string(types.OCIImageIndex), Size: int64(len(raw)), Roles: []string{recipe.RoleAll}}, digests
}
