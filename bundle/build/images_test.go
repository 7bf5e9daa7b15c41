package build

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

// randomImage is a one-layer OCI image.
func randomImage(t *testing.T, n int64) (v1.Image, v1.Hash) {
	t.Helper()
	l, err := random.Layer(n, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	if img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: types.OCILayer}); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return img, d
}

// ociLayout writes an OCI image layout of imgs (each entry named by the tag of
// refs[i] in org.opencontainers.image.ref.name, as tools/ociimage and docker save do)
// at path: a directory, or, for a name ending in .tar, a tar of one.
func ociLayout(t *testing.T, path string, refs []string, imgs ...v1.Image) {
	t.Helper()
	dir := path
	if strings.HasSuffix(path, ".tar") {
		dir = t.TempDir()
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for i, img := range imgs {
		var ann map[string]string
		if i < len(refs) {
			ann = map[string]string{"io.containerd.image.name": refs[i], "org.opencontainers.image.ref.name": refs[i][strings.LastIndex(refs[i], ":")+1:]}
		}
		if err := p.AppendImage(img, layout.WithAnnotations(ann)); err != nil {
			t.Fatal(err)
		}
	}
	if dir == path {
		return
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: filepath.ToSlash(rel), Mode: 0o644, Size: int64(len(b))}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = os.MkdirAll(filepath.Dir(path), 0o755)
	}
	if err == nil {
		err = os.WriteFile(path, buf.Bytes(), 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestImageFromLayout(t *testing.T) {
	pause, pauseD := randomImage(t, 2000)
	dns, dnsD := randomImage(t, 3000)
	dir := t.TempDir()
	ociLayout(t, filepath.Join(dir, "_out/images/pause.tar"), []string{"registry.k8s.io/pause:3.10"}, pause)
	ociLayout(t, filepath.Join(dir, "_out/images/dns"), []string{"flotilla.local/k8s-dns:v1"}, dns)
	writeTree(t, dir, map[string]string{"Kubefile": `FROM scratch
ARG IMAGES=_out/images
IMAGE --from ${IMAGES}/pause.tar registry.k8s.io/pause:3.10
ON worker IMAGE --from=_out/images/dns flotilla.local/k8s-dns:v1
ON master IMAGE --from _out/images/dns flotilla.local/k8s-dns:v1
`})
	st := newStore(t)
	res, err := Build(context.Background(), st, Options{ContextDir: dir, Tags: []string{"k8s:1"}})
	if err != nil {
		t.Fatal(err)
	}
	img, _, err := st.Resolve("k8s:1")
	if err != nil {
		t.Fatal(err)
	}
	p, err := store.Plan(img)
	if err != nil {
		t.Fatal(err)
	}
	for i := range p.Images {
		p.Images[i].Size = 0
	}
	want := []recipe.ContainerImage{
		{Ref: "registry.k8s.io/pause:3.10", Name: "registry.k8s.io/pause:3.10", Digest: pauseD.String(), MediaType: string(types.OCIManifestSchema1), Roles: []string{"all"}},
		{Ref: "flotilla.local/k8s-dns:v1", Name: "flotilla.local/k8s-dns:v1", Digest: dnsD.String(), MediaType: string(types.OCIManifestSchema1), Roles: []string{"worker", "master"}},
	}
	if !reflect.DeepEqual(p.Images, want) {
		t.Fatalf("plan images\n%+v\nwant\n%+v", p.Images, want)
	}
	// Every manifest and blob of both images is in the store under its own digest.
	for _, im := range []v1.Image{pause, dns} {
		ls, _ := im.Layers()
		cfg, _ := im.ConfigName()
		md, _ := im.Digest()
		for _, h := range []v1.Hash{md, cfg, digestOfLayer(t, ls[0])} {
			if !st.HasBlob(h) {
				t.Errorf("store lacks %s", h)
			}
		}
	}

	// Rebuild with the archives unchanged: the same image, nothing new in the store.
	before := snapshot(t, st.Dir())
	res2, err := Build(context.Background(), st, Options{ContextDir: dir, Tags: []string{"k8s:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Descriptor.Digest != res.Descriptor.Digest || res2.NewBlobs != 0 {
		t.Errorf("unchanged rebuild: %s (was %s), %d new blobs", res2.Descriptor.Digest, res.Descriptor.Digest, res2.NewBlobs)
	}
	if after := snapshot(t, st.Dir()); !reflect.DeepEqual(before, after) {
		t.Errorf("unchanged rebuild wrote to the store:\nbefore %v\nafter  %v", before, after)
	}
	// A changed archive (another pause) is another cluster image carrying it.
	pause2, pause2D := randomImage(t, 2000)
	ociLayout(t, filepath.Join(dir, "_out/images/pause.tar"), []string{"registry.k8s.io/pause:3.10"}, pause2)
	res3, err := Build(context.Background(), st, Options{ContextDir: dir, Tags: []string{"k8s:2"}})
	if err != nil {
		t.Fatal(err)
	}
	if res3.Descriptor.Digest == res.Descriptor.Digest || res3.Containers[0].Digest != pause2D.String() || res3.NewBlobs == 0 {
		t.Errorf("changed archive: %s (was %s), pause %s (want %s), %d new blobs", res3.Descriptor.Digest, res.Descriptor.Digest, res3.Containers[0].Digest, pause2D, res3.NewBlobs)
	}
}

func digestOfLayer(t *testing.T, l v1.Layer) v1.Hash {
	t.Helper()
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestImageFromLayoutErrors(t *testing.T) {
	a, aD := randomImage(t, 1000)
	b, bD := randomImage(t, 1000)
	dir := t.TempDir()
	ociLayout(t, filepath.Join(dir, "two.tar"), nil, a, b)
	ociLayout(t, filepath.Join(dir, "a.tar"), []string{"x.io/a:1"}, a)
	ociLayout(t, filepath.Join(dir, "b"), []string{"x.io/a:1"}, b)
	ociLayout(t, filepath.Join(dir, "tampered"), nil, a)
	ls, _ := a.Layers()
	layerD := digestOfLayer(t, ls[0])
	lp := filepath.Join(dir, "tampered/blobs/sha256", layerD.Hex)
	raw, err := os.ReadFile(lp)
	if err != nil {
		t.Fatal(err)
	}
	raw[0] ^= 0xff
	os.WriteFile(lp, raw, 0o644)
	cases := []struct{ name, kubefile, want string }{
		{"missing path", "FROM scratch\nIMAGE --from nope.tar x.io/a:1\n", "Kubefile:2: IMAGE: nope.tar: no such file in the build context"},
		{"outside the context", "FROM scratch\n\nIMAGE --from ../x.tar x.io/a:1\n", "Kubefile:3: IMAGE: ../x.tar is outside the build context"},
		{"ambiguous entries", "FROM scratch\nON node IMAGE --from two.tar x.io/a:1\n",
			"Kubefile:2: IMAGE: container image x.io/a:1 --from two.tar: " + filepath.Join(dir, "two.tar") + ": no entry of index.json is named x.io/a:1 (org.opencontainers.image.ref.name or io.containerd.image.name annotation), and there are 2: " + aD.String() + "; " + bD.String()},
		{"digest mismatch", "FROM scratch\nIMAGE --from a.tar x.io/a:1@" + bD.String() + "\n", "Kubefile:2: IMAGE: container image x.io/a:1@" + bD.String() + " --from a.tar: "},
		{"tampered blob", "FROM scratch\nIMAGE --from tampered x.io/a:1\n", "Kubefile:2: IMAGE: container image x.io/a:1 --from tampered: " + filepath.Join(dir, "tampered") + ": x.io/a:1: blob " + layerD.String() + ": digest mismatch"},
		{"one name, two images", "FROM scratch\nIMAGE --from a.tar x.io/a:1\nON node IMAGE --from b x.io/a:1\n", "Kubefile:3: IMAGE: container image x.io/a:1 --from b is " + bD.String() + ", but the image already carries x.io/a:1 as " + aD.String()},
		{"bad reference", "FROM scratch\nIMAGE --from a.tar BAD::REF\n", "Kubefile:2: IMAGE: invalid container image reference"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			writeTree(t, dir, map[string]string{"Kubefile": c.kubefile})
			st := newStore(t)
			_, err := Build(context.Background(), st, Options{ContextDir: dir, Tags: []string{"x:1"}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v\nwant %q", err, c.want)
			}
			ents, _ := os.ReadDir(filepath.Join(st.Dir(), "blobs", "sha256"))
			if len(ents) != 0 {
				t.Errorf("a failed build stored %d blobs", len(ents))
			}
		})
	}
}
