package carry_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/internal/registrytest"
)

// upstream is a real registry holding the test images: two images sharing a layer
// (one Docker v2, one OCI), and a two-platform OCI index.
type upstream struct {
	reg *registrytest.Registry
	// Refs as a Kubefile writes them.
	app, tool, multi, multiByDigest string
	// Digests the registry serves for them.
	appDigest, toolDigest, multiDigest v1.Hash
	amd64Digest, arm64Digest           v1.Hash
	shared                             v1.Hash // the layer app and tool share
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{reg: registrytest.Start(t, registrytest.Options{})}
	shared, err := random.Layer(4096, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	u.shared, _ = shared.Digest()
	own, _ := random.Layer(3000, types.DockerLayer)
	app, err := mutate.AppendLayers(empty.Image, shared, own) // empty.Image is Docker v2
	if err != nil {
		t.Fatal(err)
	}
	own2, _ := random.Layer(2000, types.OCILayer)
	tool := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	tool, err = mutate.Append(tool, mutate.Addendum{Layer: shared, MediaType: types.OCILayer}, mutate.Addendum{Layer: own2, MediaType: types.OCILayer})
	if err != nil {
		t.Fatal(err)
	}
	u.app = u.reg.Host + "/library/app:1"
	u.tool = u.reg.Host + "/tools/tool:2"
	u.multi = u.reg.Host + "/multi/web:3"
	u.appDigest = push(t, u.app, app)
	u.toolDigest = push(t, u.tool, tool)

	plat := func(arch, variant string) v1.Image {
		l, _ := random.Layer(1500, types.OCILayer)
		img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
		img, err := mutate.AppendLayers(img, l)
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture, cf.Variant = "linux", arch, variant
		img, err = mutate.ConfigFile(img, cf)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	amd, arm := plat("amd64", ""), plat("arm64", "v8")
	u.amd64Digest, _ = amd.Digest()
	u.arm64Digest, _ = arm.Digest()
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	ref, _ := name.ParseReference(u.multi)
	if err := remote.WriteIndex(ref, idx, remote.WithContext(context.Background())); err != nil {
		t.Fatal(err)
	}
	u.multiDigest, _ = idx.Digest()
	u.multiByDigest = u.reg.Host + "/multi/web@" + u.multiDigest.String()
	return u
}

func push(t *testing.T, ref string, img v1.Image) v1.Hash {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, _ := img.Digest()
	return d
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

type limitedCopy struct{ w *strings.Builder }

func (l *limitedCopy) copy(r io.Reader) (int64, error) { return io.Copy(l.w, io.LimitReader(r, 8<<20)) }
