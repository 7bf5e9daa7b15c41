package planner

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/bundle/plan"
)

const (
	ciApp    = "sha256:a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"
	ciAppV2  = "sha256:a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2"
	ciTool   = "sha256:b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1"
	ciShared = "sha256:c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0"
)

// imagesImage is testImage carrying app (every role) and tool (nodes only).
func imagesImage(app string) *plan.Plan {
	p := testImage()
	p.Images = []plan.ContainerImage{
		{Ref: "registry.test/app:1", Name: "registry.test/app:1", Digest: app, MediaType: "application/vnd.oci.image.index.v1+json", Size: 300, Roles: []string{plan.RoleAll}},
		{Ref: "registry.test/tool@" + ciTool, Name: "registry.test/tool@" + ciTool, Digest: ciTool, MediaType: "application/vnd.oci.image.manifest.v1+json", Size: 200, Roles: []string{plan.RoleNode}},
	}
	return p
}

// fakeCarried returns, per image and platform, the top manifest, a platform manifest,
// a blob of its own and a blob every image shares; it counts its calls.
func fakeCarried(calls *[]string) func(plan.ContainerImage, string) ([]ImageBlob, error) {
	return func(ci plan.ContainerImage, platform string) ([]ImageBlob, error) {
		*calls = append(*calls, ci.Name+" "+platform)
		own := sha([]byte(ci.Digest + platform))
		return []ImageBlob{
			{Digest: ci.Digest, Size: ci.Size, MediaType: ci.MediaType},
			{Digest: own, Size: 1000, MediaType: "application/vnd.oci.image.layer.v1.tar+gzip"},
			{Digest: ciShared, Size: 5000, MediaType: "application/vnd.oci.image.layer.v1.tar+gzip"},
		}, nil
	}
}

func imageNames(im *Images) []string {
	if im == nil {
		return nil
	}
	var out []string
	for _, ci := range im.Images {
		out = append(out, ci.Name)
	}
	return out
}

// TestImagesPlan: which node gets which container images, for its platform, where the
// step sits, what the plan prints, and skip on re-apply.
func TestImagesPlan(t *testing.T) {
	var calls []string
	in := Input{File: cf(t, threeTwo), Image: imagesImage(ciApp), ImageDigest: "sha256:aaaa", Agents: agents(3), Carried: fakeCarried(&calls)}
	p := mustPlan(t, in)
	m1, n1 := p.Node("m1"), p.Node("n1")
	if got := imageNames(m1.Images); !slices.Equal(got, []string{"registry.test/app:1"}) {
		t.Errorf("m1 (master) gets images %v, want app only (tool is for nodes)", got)
	}
	if got := imageNames(n1.Images); !slices.Equal(got, []string{"registry.test/app:1", "registry.test/tool@" + ciTool}) {
		t.Errorf("n1 (node) gets images %v, want app and tool", got)
	}
	if m1.Images.Platform != "linux/amd64" || n1.Images.Platform != "linux/arm64" {
		t.Errorf("platforms: m1 %s, n1 %s; want each node's arch", m1.Images.Platform, n1.Images.Platform)
	}
	if len(n1.Images.Blobs) != 5 || n1.Images.Size != 300+1000+200+1000+5000 {
		t.Errorf("n1 blobs %d (%d bytes): want 5, the shared one once", len(n1.Images.Blobs), n1.Images.Size)
	}
	// Memoizing is the caller's business; the planner asks once per node and image.
	if len(calls) != 3+2*2 {
		t.Errorf("Carried called %d times: %v", len(calls), calls)
	}
	if m1.Images.Digest == p.Node("m2").Images.Digest && m1.Images.Digest == "" {
		t.Error("no images digest")
	}
	if m1.Images.Digest == n1.Images.Digest {
		t.Error("nodes with other images and platforms share an images digest")
	}
	// Run order: after the layers before the first step, before that step.
	var order []string
	for _, it := range n1.Ordered() {
		switch {
		case it.Layer != nil:
			order = append(order, "layer")
		case it.File != nil:
			order = append(order, "file")
		case it.Images != nil:
			order = append(order, "images")
		default:
			order = append(order, "step")
		}
	}
	if want := []string{"layer", "layer", "file", "images", "step"}; !slices.Equal(order, want) {
		t.Errorf("n1 run order %v, want %v", order, want)
	}
	var text bytes.Buffer
	if err := p.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"IMAGES", "+ images for linux/arm64: fetch what the node's cache lacks of 5 blobs",
		"+ image registry.test/app:1 sha256:a1a1a1a1a1a1 (roles all)", "+ image registry.test/tool@" + ciTool + " (roles node)"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("plan text lacks %q:\n%s", want, text.String())
		}
	}

	// Re-apply: the images are there, nothing to do.
	in.Applied = applied(p)
	again := mustPlan(t, in)
	if again.Changed() {
		t.Errorf("re-apply changes something: %v", summary(again))
	}
	if n := again.Node("n1"); n.Images == nil || !n.Images.Skip {
		t.Errorf("re-apply: n1 images %+v, want skipped", n.Images)
	}
	text.Reset()
	_ = again.WriteText(&text)
	if !strings.Contains(text.String(), "=2") {
		t.Errorf("re-apply plan table does not show n1's 2 images as present:\n%s", text.String())
	}
}

// TestImagesUpgradeAndRemoval: a changed image set re-imports (and re-runs the steps
// after it) on the nodes that get it only; dropping every image, scaling down and
// deleting garbage-collect the cluster's images.
func TestImagesUpgradeAndRemoval(t *testing.T) {
	var calls []string
	in := Input{File: cf(t, threeTwo), Image: imagesImage(ciApp), ImageDigest: "sha256:aaaa", Agents: agents(3), Carried: fakeCarried(&calls)}
	in.Applied = applied(mustPlan(t, in))

	// Upgrade app: every node imports again, and its steps run again.
	in.Image, in.ImageDigest = imagesImage(ciAppV2), "sha256:bbbb"
	up := mustPlan(t, in)
	for _, n := range up.Nodes() {
		if n.Images == nil || n.Images.Skip {
			t.Errorf("upgrade: %s images %+v, want a new import", n.Node, n.Images)
			continue
		}
		if !slices.Equal(n.DropImages, []string{"registry.test/app:1"}) {
			t.Errorf("upgrade: %s drops %v, want the old app", n.Node, n.DropImages)
		}
		for _, s := range n.Steps {
			if s.Skip || s.Reason != "container images changed" {
				t.Errorf("upgrade: %s step %s skip %v reason %q, want run for changed images", n.Node, s.Command, s.Skip, s.Reason)
			}
		}
		if slices.ContainsFunc(n.Undo, func(u Undo) bool { return u.Kind == UndoRemoveImages }) {
			t.Errorf("upgrade: %s removes its images: the images step replaces them", n.Node)
		}
	}
	var text bytes.Buffer
	_ = up.WriteText(&text)
	if !strings.Contains(text.String(), "- image registry.test/app:1 (no longer carried") {
		t.Errorf("upgrade plan does not say app:1 goes:\n%s", text.String())
	}

	// An image without container images: each node drops the cluster's from its cache.
	in.Image, in.ImageDigest = testImage(), "sha256:cccc"
	none := mustPlan(t, in)
	for _, n := range none.Nodes() {
		if n.Images != nil || !slices.Contains(n.Undo, Undo{Kind: UndoRemoveImages, Target: "demo"}) {
			t.Errorf("no images: %s images %v undo %v, want remove-images demo", n.Node, n.Images, n.Undo)
		}
	}

	// Scale down (n2 leaves) and delete (no hosts).
	in.Image, in.ImageDigest = imagesImage(ciApp), "sha256:aaaa"
	in.Applied = applied(mustPlan(t, in))
	in.File = cf(t, "    - {names: [m1, 10.0.0.12, m3], roles: [master]}\n    - {names: [n1], roles: [node], env: {LOG: debug}}\n")
	down := mustPlan(t, in)
	n2 := down.Node("n2")
	if n2 == nil || n2.Action != ActionRemove || !slices.Contains(n2.Undo, Undo{Kind: UndoRemoveImages, Target: "demo"}) || len(n2.DropImages) != 2 {
		t.Fatalf("scale down: n2 %+v, want removal with remove-images of both images", n2)
	}
	if n := down.Node("n1"); n.Action != ActionNoop {
		t.Errorf("scale down: n1 %s, want noop", n.Action)
	}
	empty := *in.File
	empty.Cluster.Hosts = nil
	in.File = &empty
	del := mustPlan(t, in)
	for _, n := range del.Nodes() {
		if n.Action != ActionRemove || !slices.Contains(n.Undo, Undo{Kind: UndoRemoveImages, Target: "demo"}) {
			t.Errorf("delete: %s %s undo %v", n.Node, n.Action, n.Undo)
		}
	}
}

func TestImagesPlanErrors(t *testing.T) {
	bad := func(plan.ContainerImage, string) ([]ImageBlob, error) {
		return nil, errors.New("image sha256:a1a1 has no manifest for linux/arm64")
	}
	ags := agents(3)
	tests := []struct {
		name    string
		in      Input
		wantErr []string
	}{
		{"no reader", Input{Agents: ags}, []string{"carries 1 container images", "no way to read them"}},
		{"platform missing", Input{Agents: ags, Carried: bad}, []string{"node n1", "container image registry.test/app:1", "no manifest for linux/arm64"}},
		{"no arch", Input{Agents: func() []Agent { a := agents(3); a[0].Arch = ""; return a }(), Carried: fakeCarried(new([]string))},
			[]string{"node m1", "reports no architecture"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := imagesImage(ciApp)
			img.Images = img.Images[:1]
			tc.in.File, tc.in.Image = cf(t, threeTwo), img
			_, err := Plan(tc.in)
			if err == nil {
				t.Fatal("planned")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
