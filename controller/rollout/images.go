package rollout

import (
	"context"
	"fmt"
	"io"

	"github.com/flotilla-dev/flotilla/bundle/carry"
	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DefaultMaxImagePieceBytes bounds the piece lists one images step carries (a task is
// one NATS message of at most 1 MiB, signed): blobs past it are fetched from the
// controller's HTTPS alone, with a warning.
const DefaultMaxImagePieceBytes = 384 << 10

// imagesStep builds a node's images step: every blob of its container images as a
// layer blob is fetched (URL, token, and through DecorateLayer the piece list and the
// Clusterfile's bandwidth caps), so the agent fetches what its cache lacks the same
// way, peer to peer.
func (r *rolloutRun) imagesStep(ctx context.Context, node string, im *planner.Images) (protocol.Step, error) {
	cluster := r.plan.Cluster
	p := protocol.ImagesPayload{Cluster: cluster, Platform: im.Platform}
	for _, ci := range im.Images {
		p.Images = append(p.Images, protocol.CarriedImage{Name: ci.Name, Digest: ci.Digest, MediaType: ci.MediaType, Size: ci.Size})
	}
	budget, unseeded := r.e.opts.MaxImagePieceBytes, 0
	for _, b := range im.Blobs {
		// The token is minted for each attempt (mintTokens).
		lp := protocol.LayerPayload{Cluster: cluster, Digest: b.Digest, Size: b.Size, URL: r.e.blobURL(b.Digest)}
		if d := r.e.opts.DecorateLayer; d != nil {
			if err := d(ctx, LayerRequest{Cluster: &r.cf.Cluster, Node: node, Payload: &lp}); err != nil {
				return protocol.Step{}, fmt.Errorf("node %s: container image blob %s: %w", node, b.Digest, err)
			}
		}
		if n := len(lp.Pieces); n > 0 {
			if n > budget {
				lp.Pieces = nil
				unseeded++
			} else {
				budget -= n
			}
		}
		p.Blobs = append(p.Blobs, lp)
	}
	if unseeded > 0 {
		r.e.log.Warn("container image blobs past the task's piece-list budget are fetched from the controller alone",
			"cluster", cluster, "node", node, "blobs", unseeded, "budget", r.e.opts.MaxImagePieceBytes)
	}
	name := fmt.Sprintf("images: %d container images for %s (%d blobs, %s)", len(im.Images), im.Platform, len(im.Blobs), human.Bytes(im.Size))
	return protocol.Step{Name: name, Kind: protocol.KindImages, Payload: mustJSON(p), Digest: im.Digest}, nil
}

// carried returns the planner's Input.Carried over the engine's store: carry.Walk of
// each image for the node's platform (every manifest read checked against its
// digest), memoized per image and platform for one plan.
func (e *Engine) carried() func(recipe.ContainerImage, string) ([]planner.ImageBlob, error) {
	memo := map[string][]planner.ImageBlob{}
	return func(ci recipe.ContainerImage, platform string) ([]planner.ImageBlob, error) {
		key := ci.Digest + " " + platform
		if b, ok := memo[key]; ok {
			return b, nil
		}
		plat, err := v1.ParsePlatform(platform)
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", platform, err)
		}
		h, err := v1.NewHash(ci.Digest)
		if err != nil {
			return nil, fmt.Errorf("digest %q: %w", ci.Digest, err)
		}
		top := v1.Descriptor{MediaType: types.MediaType(ci.MediaType), Size: ci.Size, Digest: h}
		cl, err := carry.Walk(carry.ReadBlob(e.readManifest), top, plat)
		if err != nil {
			return nil, fmt.Errorf("%w (the cluster image in the controller's store %s is incomplete or was built for other platforms)", err, e.store.Dir())
		}
		var out []planner.ImageBlob
		for _, d := range append(cl.Manifests, cl.Blobs...) {
			out = append(out, planner.ImageBlob{Digest: d.Digest.String(), Size: d.Size, MediaType: string(d.MediaType)})
		}
		memo[key] = out
		return out, nil
	}
}

// readManifest reads a manifest blob from the store, at most carry.MaxManifestSize bytes.
func (e *Engine) readManifest(h v1.Hash) ([]byte, error) {
	rc, size, err := e.store.OpenBlob(h)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if size > carry.MaxManifestSize {
		return nil, fmt.Errorf("manifest %s is %d bytes, more than the %d a manifest may have", h, size, carry.MaxManifestSize)
	}
	return io.ReadAll(io.LimitReader(rc, carry.MaxManifestSize+1))
}
