package rollout

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/imagecache"
	"github.com/flotilla-dev/flotilla/agent/imagecache/imagecachetest"
	"github.com/flotilla-dev/flotilla/bundle/plan"
	"github.com/flotilla-dev/flotilla/protocol"
)

// imagesFixture is two images sharing a layer, served by a blob server.
type imagesFixture struct {
	srv    *blobServer
	images []plan.ContainerImage
	src    imagecachetest.Source
}

func newImagesFixture(t *testing.T) *imagesFixture {
	src := imagecachetest.Source{}
	shared := imagecachetest.Layer(t, 5000)
	one := src.AddImage(t, "registry.test/one:1", imagecachetest.Image(t, nil, shared, imagecachetest.Layer(t, 2000)))
	two := src.AddImage(t, "registry.test/two:1", imagecachetest.Image(t, nil, shared, imagecachetest.Layer(t, 2000)))
	f := &imagesFixture{srv: newBlobServer(t), images: []plan.ContainerImage{one, two}, src: src}
	for d, b := range src {
		f.srv.blobs[d.String()] = b
	}
	return f
}

func (f *imagesFixture) payload(images ...plan.ContainerImage) protocol.ImagesPayload {
	p := protocol.ImagesPayload{Cluster: "c1", Platform: "linux/amd64"}
	for _, ci := range images {
		p.Images = append(p.Images, protocol.CarriedImage{Name: ci.Name, Digest: ci.Digest, MediaType: ci.MediaType, Size: ci.Size})
	}
	for d, b := range f.src {
		p.Blobs = append(p.Blobs, protocol.LayerPayload{Cluster: "c1", Digest: d.String(), Size: int64(len(b)),
			URL: f.srv.srv.URL + "/blobs/" + d.String(), Token: "good"})
	}
	return p
}

func cacheOwners(t *testing.T, dataDir string) []string {
	t.Helper()
	c, err := imagecache.Open(agent.ImageCacheDir(dataDir))
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := c.Images()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for o, list := range imgs {
		for _, i := range list {
			out = append(out, o+"="+i.Name)
		}
	}
	slices.Sort(out)
	return out
}

// TestImagesStep: the step fetches what the cache lacks (verified), imports it for
// the cluster, leaves no copy in the layer blob cache; a second run fetches nothing;
// a tampered blob stores nothing; remove-images empties the cache.
func TestImagesStep(t *testing.T) {
	f := newImagesFixture(t)
	n := newNode(t, f.srv.caPEM())
	ev, err := n.run(protocol.KindImages, f.payload(f.images...))
	if err != nil {
		t.Fatalf("images step: %v\n%v", err, ev.lines("stderr"))
	}
	if got := cacheOwners(t, n.dataDir); !slices.Equal(got, []string{"c1=registry.test/one:1", "c1=registry.test/two:1"}) {
		t.Errorf("cache holds %v", got)
	}
	if gets, _ := f.srv.stats(); gets != 7 {
		t.Errorf("fetched %d blobs, want 7 (2 manifests, 2 configs, 3 layers: the shared one once)", gets)
	}
	if left, _ := os.ReadDir(filepath.Join(n.dataDir, "blobs", "sha256")); len(left) != 0 {
		t.Errorf("%d copies left in the layer blob cache", len(left))
	}
	if out := strings.Join(ev.lines("stdout"), "\n"); !strings.Contains(out, "2 container images of c1 in the node's cache for linux/amd64: fetched 7 blobs") {
		t.Errorf("output:\n%s", out)
	}
	// Again (a lost task sent again): nothing fetched.
	if _, err := n.run(protocol.KindImages, f.payload(f.images...)); err != nil {
		t.Fatal(err)
	}
	if gets, _ := f.srv.stats(); gets != 7 {
		t.Errorf("second run fetched %d more blobs", gets-7)
	}
	// Upgrade to "one" only: two's own blobs are deleted, the shared layer stays.
	if _, err := n.run(protocol.KindImages, f.payload(f.images[0])); err != nil {
		t.Fatal(err)
	}
	if got := cacheOwners(t, n.dataDir); !slices.Equal(got, []string{"c1=registry.test/one:1"}) {
		t.Errorf("after the upgrade the cache holds %v", got)
	}
	if left, _ := os.ReadDir(filepath.Join(agent.ImageCacheDir(n.dataDir), "blobs", "sha256")); len(left) != 4 {
		t.Errorf("%d blobs after dropping two, want one's 4", len(left))
	}
	// remove-images.
	if _, err := n.run(protocol.KindUndo, protocol.UndoPayload{Cluster: "c1", Kind: protocol.UndoRemoveImages, Target: "c1"}); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Join(agent.ImageCacheDir(n.dataDir), "blobs", "sha256")); len(left) != 0 || len(cacheOwners(t, n.dataDir)) != 0 {
		t.Errorf("after remove-images: %d blobs, owners %v", len(left), cacheOwners(t, n.dataDir))
	}
	if _, err := n.run(protocol.KindUndo, protocol.UndoPayload{Cluster: "c1", Kind: protocol.UndoRemoveImages, Target: "c2"}); err == nil {
		t.Error("remove-images of another cluster than the step's was accepted")
	}

	// A server sending other bytes: the step fails, the cache stays empty.
	f.srv.corrupt = true
	n2 := newNode(t, f.srv.caPEM())
	if _, err := n2.run(protocol.KindImages, f.payload(f.images...)); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Errorf("tampered blobs: %v, want a digest error", err)
	}
	if got := cacheOwners(t, n2.dataDir); len(got) != 0 {
		t.Errorf("tampered blobs: the cache holds %v", got)
	}
}

// TestImagesStepRefusesBadPayload: every bound and malformed field is refused before
// anything is fetched.
func TestImagesStepRefusesBadPayload(t *testing.T) {
	f := newImagesFixture(t)
	tests := []struct {
		name string
		mod  func(p *protocol.ImagesPayload)
		want string
	}{
		{"cluster escapes", func(p *protocol.ImagesPayload) { p.Cluster = "../x" }, "cluster name"},
		{"no images", func(p *protocol.ImagesPayload) { p.Images = nil }, "0 images"},
		{"too many images", func(p *protocol.ImagesPayload) {
			p.Images = make([]protocol.CarriedImage, protocol.MaxImagesPerStep+1)
		}, "want 1 to 4096"},
		{"too many blobs", func(p *protocol.ImagesPayload) {
			p.Blobs = make([]protocol.LayerPayload, protocol.MaxImageBlobs+1)
		}, "at most 65536"},
		{"bad platform", func(p *protocol.ImagesPayload) { p.Platform = "amd64" }, "platform"},
		{"bad blob digest", func(p *protocol.ImagesPayload) { p.Blobs[0].Digest = "sha256:../../etc" }, "blob"},
		{"negative size", func(p *protocol.ImagesPayload) { p.Blobs[0].Size = -1 }, "size -1"},
		{"unnamed image", func(p *protocol.ImagesPayload) { p.Images[0].Name = "" }, "without name"},
		{"name not normalized", func(p *protocol.ImagesPayload) { p.Images[0].Name = "one:1" }, "not normalized"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, f.srv.caPEM())
			before, _ := f.srv.stats()
			p := f.payload(f.images...)
			tc.mod(&p)
			_, err := n.run(protocol.KindImages, p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if got := cacheOwners(t, n.dataDir); len(got) != 0 {
				t.Errorf("the cache holds %v", got)
			}
			if tc.name != "name not normalized" { // refused at import, after the fetch
				if after, _ := f.srv.stats(); after != before {
					t.Errorf("%d blobs fetched before the refusal", after-before)
				}
			}
		})
	}
}
