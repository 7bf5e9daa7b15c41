package planner

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/flotilla-dev/flotilla/bundle/plan"
)

// planImages sets np.Images to the container images the node's roles get, with the
// blobs they need on the node's platform, and np.DropImages to those it had and loses.
func planImages(in Input, np *NodePlan, img *plan.Plan, arch string, applied Applied, isMaster0 bool) error {
	images := img.ImagesFor(np.Roles, isMaster0)
	defer func() { np.DropImages = droppedImages(applied.Images, np.Images) }()
	if len(images) == 0 {
		return nil
	}
	if arch == "" {
		return fmt.Errorf("the node reports no architecture: cannot choose the platform of its %d container images (is its agent current?)", len(images))
	}
	if in.Carried == nil {
		return fmt.Errorf("the image carries %d container images but the planner was given no way to read them", len(images))
	}
	im := &Images{Platform: "linux/" + arch, Images: images}
	seen := map[string]bool{}
	for _, ci := range images {
		blobs, err := in.Carried(ci, im.Platform)
		if err != nil {
			return fmt.Errorf("container image %s: %w", ci.Name, err)
		}
		for _, b := range blobs {
			if !seen[b.Digest] {
				seen[b.Digest] = true
				im.Blobs = append(im.Blobs, b)
				im.Size += b.Size
			}
		}
	}
	// Before the first run or service step, after the layers and files before it.
	im.Seq = -1
	if steps := img.StepsFor(np.Roles, isMaster0); len(steps) > 0 {
		im.Seq = steps[0].Seq
	} else {
		for _, l := range np.Layers {
			im.Seq = max(im.Seq, l.Seq)
		}
		for _, f := range np.Files {
			im.Seq = max(im.Seq, f.Seq)
		}
	}
	im.Digest = ImagesDigest(in.File.Cluster.Name, im.Platform, images)
	im.Skip = applied.ImagesDigest == im.Digest
	np.Images = im
	return nil
}

// ImagesDigest is the digest of an images step: the cache owner (the cluster), the
// platform and each image's name and digest, in order.
func ImagesDigest(cluster, platform string, images []plan.ContainerImage) string {
	h := sha256.New()
	fmt.Fprintf(h, "images\nowner %q\nplatform %q\n", cluster, platform)
	for _, ci := range images {
		fmt.Fprintf(h, "image %q %s\n", ci.Name, ci.Digest)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// AppliedImages is what a node holds once the images step succeeded.
func (im *Images) AppliedImages() []AppliedImage {
	out := make([]AppliedImage, 0, len(im.Images))
	for _, ci := range im.Images {
		out = append(out, AppliedImage{Name: ci.Name, Digest: ci.Digest})
	}
	return out
}

// droppedImages names the images of had that want (nil: none) no longer holds.
func droppedImages(had []AppliedImage, want *Images) []string {
	var out []string
	for _, a := range had {
		if want == nil || !slices.ContainsFunc(want.Images, func(c plan.ContainerImage) bool { return c.Name == a.Name && c.Digest == a.Digest }) {
			out = append(out, a.Name)
		}
	}
	return out
}

func appliedImageNames(a []AppliedImage) []string { return droppedImages(a, nil) }
