package carry_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/flotilla-dev/flotilla/agent/imagecache"
	"github.com/flotilla-dev/flotilla/agent/mirror"
	"github.com/flotilla-dev/flotilla/bundle/archive"
	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/carry"
	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/bundle/registry"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for n, c := range files {
		p := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func blobNames(t *testing.T, st *store.Store) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(st.Dir(), "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// mirrorTransport sends every registry request to the mirror with containerd's ns
// parameter naming the registry it was meant for, as containerd does with hosts.toml.
type mirrorTransport struct{ mirror string }

func (m mirrorTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	q := r.URL.Query()
	q.Set("ns", r.URL.Host)
	r.URL.RawQuery = q.Encode()
	r.URL.Host, r.Host = m.mirror, m.mirror
	return http.DefaultTransport.RoundTrip(r)
}

// TestClusterImageCarriesContainerImages is the whole path: build pulls the images
// from a real registry into a cluster image, push/pull and save/load keep every
// digest, rmi keeps shared blobs, and with the registry stopped a node's cache serves
// the images through the mirror with the upstream digests.
func TestClusterImageCarriesContainerImages(t *testing.T) {
	ctx := context.Background()
	u := newUpstream(t)
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"Kubefile": fmt.Sprintf(`FROM scratch
COPY hello.txt /etc/hello.txt
IMAGE %s %s
ON worker IMAGE -f images.txt
ON master IMAGE %s
`, u.app, u.multiByDigest, u.app),
		"hello.txt":        "hello\n",
		"images.txt":       "# the worker's images\n" + u.tool + "\n" + u.multi + " # the tag\n",
		"k8s/deploy.yaml":  "containers:\n  - image: " + u.tool + "\n  - image: busybox:1.36\n",
		"k8s/ignored.json": `{"image": "` + u.app + `"}`,
	})
	st := openStore(t)
	res, err := build.Build(ctx, st, build.Options{ContextDir: dir, Tags: []string{"cl:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Descriptor.MediaType != types.OCIImageIndex {
		t.Fatalf("a cluster image carrying images is %s, want an OCI index", res.Descriptor.MediaType)
	}
	if len(res.Undeclared) != 1 || res.Undeclared[0].Name != "docker.io/library/busybox:1.36" {
		t.Errorf("undeclared = %+v, want busybox only", res.Undeclared)
	}
	_, mdigest, err := st.Resolve("cl:1")
	if err != nil {
		t.Fatal(err)
	}
	img, _ := st.Image(mdigest)
	p, err := store.Plan(img)
	if err != nil {
		t.Fatal(err)
	}
	name := func(s string) string { r, _ := carry.ParseRef(s); return r.Name() }
	want := []recipe.ContainerImage{
		{Ref: u.app, Name: name(u.app), Digest: u.appDigest.String(), MediaType: string(types.DockerManifestSchema2), Roles: []string{"all"}},
		{Ref: u.multiByDigest, Name: name(u.multiByDigest), Digest: u.multiDigest.String(), MediaType: string(types.OCIImageIndex), Roles: []string{"all"}},
		{Ref: u.tool, Name: name(u.tool), Digest: u.toolDigest.String(), MediaType: string(types.OCIManifestSchema1), Roles: []string{"worker"}},
		{Ref: u.multi, Name: name(u.multi), Digest: u.multiDigest.String(), MediaType: string(types.OCIImageIndex), Roles: []string{"worker"}},
	}
	for i := range p.Images {
		p.Images[i].Size = 0
	}
	if !reflect.DeepEqual(p.Images, want) {
		t.Errorf("plan images\n%+v\nwant\n%+v", p.Images, want)
	}
	if got := p.ImagesFor([]string{"master"}, true); len(got) != 2 {
		t.Errorf("a master gets %d images, want 2 (app and the index by digest)", len(got))
	}
	idx, _ := st.Index(res.Descriptor.Digest)
	raw, _ := idx.RawManifest()
	carried, err := carry.List(raw)
	if err != nil || len(carried) != 4 || carried[0].Descriptor.Digest != u.appDigest || carried[2].Roles[0] != "worker" {
		t.Errorf("index entries = %+v, %v", carried, err)
	}
	if err := validate.Index(idx, validate.Fast); err != nil {
		t.Errorf("the cluster image is not a valid OCI index: %v", err)
	}
	// Every blob once: the cluster image (index, manifest, config, layer) and the
	// container images' 14 blobs (the shared layer once).
	before := blobNames(t, st)
	if len(before) != 4+14 {
		t.Errorf("store holds %d blobs, want 18", len(before))
	}

	// Push, pull into another store: the same index digest and the same blobs.
	remoteRef := u.reg.Host + "/clusters/cl:1"
	if _, err := registry.Push(ctx, st, "cl:1", remoteRef, registry.Options{}); err != nil {
		t.Fatal(err)
	}
	st2 := openStore(t)
	d2, err := registry.Pull(ctx, st2, remoteRef, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d2.Digest != res.Descriptor.Digest || !slices.Equal(blobNames(t, st2), before) {
		t.Errorf("pull gave %s with %d blobs; pushed %s with %d", d2.Digest, len(blobNames(t, st2)), res.Descriptor.Digest, len(before))
	}
	// crane and other generic clients see the carried images in the same repository.
	if d, err := remote.Head(mustRef(t, u.reg.Host+"/clusters/cl@"+u.toolDigest.String())); err != nil || d.Digest != u.toolDigest {
		t.Errorf("carried image not in the pushed repository: %v %v", d, err)
	}

	// Save and load: a self-contained archive.
	var buf bytes.Buffer
	if err := archive.Save(ctx, st2, &buf, []string{remoteRef}, archive.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	st3 := openStore(t)
	if _, err := archive.Load(ctx, st3, &buf, archive.LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(blobNames(t, st3), before) {
		t.Errorf("load gave %d blobs, want %d", len(blobNames(t, st3)), len(before))
	}

	// rmi: a second cluster image carrying only app keeps app's blobs (and the layer
	// it shares with tool) after the first is removed.
	dir2 := t.TempDir()
	writeFiles(t, dir2, map[string]string{"Kubefile": "FROM scratch\nIMAGE " + u.app + "\n"})
	if _, err := build.Build(ctx, st, build.Options{ContextDir: dir2, Tags: []string{"cl:2"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Untag(ctx, "cl:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GC(ctx); err != nil {
		t.Fatal(err)
	}
	for _, h := range []v1.Hash{u.appDigest, u.shared} {
		if !st.HasBlob(h) {
			t.Errorf("GC deleted %s that cl:2 still carries", h)
		}
	}
	if st.HasBlob(u.toolDigest) || st.HasBlob(u.multiDigest) {
		t.Error("GC kept images nothing references any more")
	}

	// The upstream goes away; a worker node imports its images from the loaded store
	// and serves them.
	upstreamHost := u.reg.Host
	u.reg.Stop()
	cache, err := imagecache.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, m3, err := st3.Resolve(remoteRef)
	if err != nil {
		t.Fatal(err)
	}
	img3, _ := st3.Image(m3)
	p3, _ := store.Plan(img3)
	src := func(_ context.Context, d v1.Descriptor) (io.ReadCloser, error) {
		rc, _, err := st3.OpenBlob(d.Digest)
		return rc, err
	}
	amd64 := &v1.Platform{OS: "linux", Architecture: "amd64"}
	ir, err := cache.Import(ctx, "prod", p3.ImagesFor([]string{"worker"}, false), amd64, src)
	if err != nil {
		t.Fatal(err)
	}
	// app 4 + tool 3 (shared layer once) + index, amd64 manifest, config, layer.
	if ir.Images != 4 || ir.NewBlobs != 11 {
		t.Errorf("import = %+v, want 4 images and 11 blobs", ir)
	}
	srv := httptest.NewServer(mirror.New(mirror.Options{Content: cache}))
	defer srv.Close()
	mhost := strings.TrimPrefix(srv.URL, "http://")
	via := remote.WithTransport(mirrorTransport{mirror: mhost})

	cases := []struct {
		ref  string
		want v1.Hash
	}{
		{u.app, u.appDigest},
		{u.tool, u.toolDigest},
		{u.multi, u.multiDigest},
		{u.multiByDigest, u.multiDigest},
		{upstreamHost + "/library/app@" + u.appDigest.String(), u.appDigest},
	}
	for _, c := range cases {
		d, err := remote.Get(mustRef(t, c.ref), via)
		if err != nil || d.Digest != c.want {
			t.Errorf("GET %s through the mirror: %v %v, want %s", c.ref, d, err, c.want)
			continue
		}
		h, err := remote.Head(mustRef(t, c.ref), via)
		if err != nil || h.Digest != c.want || h.MediaType != d.MediaType || h.Size != d.Size {
			t.Errorf("HEAD %s: %+v %v", c.ref, h, err)
		}
	}
	// The image's layers through the mirror, checked by ggcr against their digests.
	for _, ref := range []string{u.app, u.multi} {
		img, err := remote.Image(mustRef(t, ref), via, remote.WithPlatform(*amd64))
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("%s through the mirror: %v", ref, err)
		}
	}
	if d, _ := remote.Image(mustRef(t, u.multi), via, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); d != nil {
		if dg, _ := d.Digest(); dg != u.amd64Digest {
			t.Errorf("amd64 manifest %s, want %s", dg, u.amd64Digest)
		}
	}
	// arm64 was not imported on this amd64 node: a 404, so an online runtime would go upstream.
	if _, err := remote.Image(mustRef(t, u.multi), via, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "arm64"})); err == nil || !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") {
		t.Errorf("arm64 through the mirror: %v, want MANIFEST_UNKNOWN", err)
	}
	// A master does not get the worker's images.
	if _, err := remote.Get(mustRef(t, upstreamHost+"/library/nope:1"), via); err == nil {
		t.Error("an image never imported was served")
	}
	// Range on a layer.
	layer := u.shared
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/library/app/blobs/"+layer.String()+"?ns="+url.QueryEscape(upstreamHost), nil)
	req.Header.Set("Range", "bytes=10-19")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	whole, _ := os.ReadFile(filepath.Join(cache.Dir(), "blobs", "sha256", layer.Hex))
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, whole[10:20]) || resp.Header.Get("Docker-Content-Digest") != layer.String() {
		t.Errorf("Range: %s %q (want %q)", resp.Status, part, whole[10:20])
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
