package imagecache_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/agent/imagecache"
	"github.com/flotilla-dev/flotilla/agent/imagecache/imagecachetest"
	"github.com/flotilla-dev/flotilla/agent/mirror"
	"github.com/flotilla-dev/flotilla/bundle/plan"
)

var _ mirror.Content = (*imagecache.Cache)(nil)

func blobs(t *testing.T, c *imagecache.Cache) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(c.Dir(), "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func open(t *testing.T) *imagecache.Cache {
	t.Helper()
	c, err := imagecache.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestImportAndGCKeepSharedBlobs(t *testing.T) {
	ctx := context.Background()
	src := imagecachetest.Source{}
	shared := imagecachetest.Layer(t, 4000)
	img1 := src.AddImage(t, "docker.io/library/one:1", imagecachetest.Image(t, nil, shared, imagecachetest.Layer(t, 1000)))
	img2 := src.AddImage(t, "registry.local:5000/two/two:2", imagecachetest.Image(t, nil, shared, imagecachetest.Layer(t, 1000)))
	c := open(t)
	r, err := c.Import(ctx, "a", []plan.ContainerImage{img1, img2}, nil, src.Open)
	if err != nil {
		t.Fatal(err)
	}
	if r.Images != 2 || r.NewBlobs != 7 || blobs(t, c) != 7 {
		t.Fatalf("import = %+v, %d blobs; want 2 images, 7 blobs (the shared layer once)", r, blobs(t, c))
	}
	// Another owner with an image already there fetches nothing (no source needed).
	if r, err := c.Import(ctx, "b", []plan.ContainerImage{img2}, nil, nil); err != nil || r.NewBlobs != 0 {
		t.Fatalf("second owner: %+v %v", r, err)
	}
	// Owner a upgrades to img1 only: img2 stays, b still has it.
	if _, err := c.Import(ctx, "a", []plan.ContainerImage{img1}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if g, err := c.GC(ctx, []string{"a", "b"}); err != nil || g.Blobs != 0 {
		t.Fatalf("gc with both owners applied: %+v %v", g, err)
	}
	// b is deleted from the node: img2's own manifest, config and layer go, the
	// shared layer stays for img1.
	g, err := c.GC(ctx, []string{"a"})
	if err != nil || g.Owners != 1 || g.Blobs != 3 || blobs(t, c) != 4 {
		t.Fatalf("gc after b is gone: %+v %v, %d blobs left (want 3 deleted, 4 left)", g, err, blobs(t, c))
	}
	sd, _ := shared.Digest()
	if !c.Has(sd) {
		t.Error("the shared layer was deleted while img1 uses it")
	}
	if _, err := c.Resolve("registry.local:5000", "two/two", "2"); err == nil {
		t.Error("a collected image still resolves")
	}
	if d, err := c.Resolve("docker.io", "library/one", "1"); err != nil || d.Digest.String() != img1.Digest {
		t.Errorf("img1: %v %v", d, err)
	}
	if g, err := c.GC(ctx, nil); err != nil || blobs(t, c) != 0 || g.Blobs != 4 {
		t.Errorf("gc with nothing applied: %+v %v, %d left", g, err, blobs(t, c))
	}
}

func TestImportOnePlatform(t *testing.T) {
	src := imagecachetest.Source{}
	idx, digests := src.AddIndex(t, "docker.io/library/multi:1", map[string]v1.Image{
		"linux/amd64":    imagecachetest.Image(t, &v1.Platform{OS: "linux", Architecture: "amd64"}, imagecachetest.Layer(t, 500)),
		"linux/arm64/v8": imagecachetest.Image(t, &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, imagecachetest.Layer(t, 500)),
	})
	c := open(t)
	r, err := c.Import(context.Background(), "a", []plan.ContainerImage{idx}, &v1.Platform{OS: "linux", Architecture: "arm64"}, src.Open)
	if err != nil || r.NewBlobs != 4 {
		t.Fatalf("import arm64: %+v %v (want index, manifest, config, layer)", r, err)
	}
	if !c.Has(digests["linux/arm64/v8"]) || c.Has(digests["linux/amd64"]) {
		t.Error("wrong platform imported")
	}
	if _, err := c.Resolve("docker.io", "library/multi", digests["linux/amd64"].String()); err == nil {
		t.Error("the amd64 manifest resolves on an arm64 node")
	}
}

func TestImportRefusesBadInput(t *testing.T) {
	src := imagecachetest.Source{}
	layer := imagecachetest.Layer(t, 2000)
	good := src.AddImage(t, "docker.io/library/good:1", imagecachetest.Image(t, nil, layer))
	ld, _ := layer.Digest()
	tampered := imagecachetest.Source{}
	for k, v := range src {
		tampered[k] = v
	}
	bad := append([]byte(nil), src[ld]...)
	bad[100] ^= 0xff
	tampered[ld] = bad
	short := imagecachetest.Source{}
	for k, v := range src {
		short[k] = v
	}
	short[ld] = src[ld][:100]
	missing := imagecachetest.Source{}
	for k, v := range src {
		if k != ld {
			missing[k] = v
		}
	}
	with := func(f func(*plan.ContainerImage)) plan.ContainerImage { c := good; f(&c); return c }
	cases := []struct {
		name  string
		image plan.ContainerImage
		src   imagecache.Source
		want  string
	}{
		{"layer digest mismatch", good, tampered.Open, "digest mismatch"},
		{"layer too short", good, short.Open, "the source sent 100 bytes"},
		{"layer missing", good, missing.Open, "test source has no " + ld.String()},
		{"no source", good, nil, "no source"},
		{"unknown media type", with(func(c *plan.ContainerImage) { c.MediaType = "application/vnd.example+json" }), src.Open, "unknown media type"},
		{"manifest digest lies", with(func(c *plan.ContainerImage) { c.Digest = "sha256:" + strings.Repeat("a", 64) }), src.Open, "test source has no"},
		{"name not normalized", with(func(c *plan.ContainerImage) { c.Name = "good:1" }), src.Open, "not normalized"},
		{"path in name", with(func(c *plan.ContainerImage) { c.Name = "docker.io/../../etc:1" }), src.Open, "invalid container image reference"},
		{"digest ref of another image", with(func(c *plan.ContainerImage) { c.Name = "docker.io/library/good@sha256:" + strings.Repeat("b", 64) }), src.Open, "the reference names"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := open(t)
			_, err := c.Import(context.Background(), "a", []plan.ContainerImage{tc.image}, nil, tc.src)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "nothing stored") {
				t.Fatalf("error %v, want %q and nothing stored", err, tc.want)
			}
			if n := blobs(t, c); n != 0 {
				t.Errorf("%d blobs stored", n)
			}
			if imgs, _ := c.Images(); len(imgs) != 0 {
				t.Errorf("images.json names %v", imgs)
			}
		})
	}
	// The manifest itself tampered: Walk refuses it.
	c := open(t)
	md, _ := v1.NewHash(good.Digest)
	tm := imagecachetest.Source{}
	for k, v := range src {
		tm[k] = v
	}
	tm[md] = append(append([]byte(nil), src[md]...), ' ')
	if _, err := c.Import(context.Background(), "a", []plan.ContainerImage{good}, nil, tm.Open); err == nil || blobs(t, c) != 0 {
		t.Errorf("a tampered manifest imported: %v", err)
	}
}

// TestRemoveAndPrune: Remove drops one owner (others, and blobs they share, stay);
// Prune after an owner's set changed deletes only the blobs no owner uses.
func TestRemoveAndPrune(t *testing.T) {
	ctx := context.Background()
	src := imagecachetest.Source{}
	shared := imagecachetest.Layer(t, 4000)
	one := src.AddImage(t, "docker.io/library/one:1", imagecachetest.Image(t, nil, shared, imagecachetest.Layer(t, 1000)))
	two := src.AddImage(t, "docker.io/library/two:1", imagecachetest.Image(t, nil, shared, imagecachetest.Layer(t, 1000)))
	c := open(t)
	for owner, imgs := range map[string][]plan.ContainerImage{"a": {one, two}, "b": {two}} {
		if _, err := c.Import(ctx, owner, imgs, nil, src.Open); err != nil {
			t.Fatal(err)
		}
	}
	if g, err := c.Prune(ctx); err != nil || g.Blobs != 0 {
		t.Fatalf("prune with nothing unreferenced: %+v %v", g, err)
	}
	// a upgrades to one only: two stays for b, nothing to prune.
	if _, err := c.Import(ctx, "a", []plan.ContainerImage{one}, nil, nil); err != nil {
		t.Fatal(err)
	}
	if g, err := c.Prune(ctx); err != nil || g.Blobs != 0 || g.Owners != 0 {
		t.Fatalf("prune while b uses two: %+v %v", g, err)
	}
	// b goes: two's manifest, config and own layer go; the shared layer stays for a.
	g, err := c.Remove(ctx, "b")
	if err != nil || g.Owners != 1 || g.Blobs != 3 || blobs(t, c) != 4 {
		t.Fatalf("remove b: %+v %v, %d blobs left (want 3 deleted, 4 left)", g, err, blobs(t, c))
	}
	if _, err := c.Resolve("docker.io", "library/one", "1"); err != nil {
		t.Errorf("a's image after b was removed: %v", err)
	}
	if g, err := c.Remove(ctx, "nobody"); err != nil || g.Owners != 0 || g.Blobs != 0 {
		t.Errorf("remove of an unknown owner: %+v %v", g, err)
	}
	if _, err := c.Remove(ctx, ""); err == nil {
		t.Error("remove of owner \"\" accepted")
	}
	if g, err := c.Remove(ctx, "a"); err != nil || blobs(t, c) != 0 || g.Blobs != 4 {
		t.Errorf("remove a: %+v %v, %d left", g, err, blobs(t, c))
	}
}
