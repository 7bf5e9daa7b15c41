package rollout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/imagecache"
	"github.com/flotilla-dev/flotilla/agent/unpack"
	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
)

// images runs an "images" step: each blob the node's image cache lacks is
// fetched exactly as a layer blob is (Options.Fetch: peer-to-peer pieces checked as they
// land, or the controller's HTTPS; into the blob cache, verified), then the images
// are imported into the cache under the cluster's name (every manifest and blob
// verified again, all or nothing, replacing the set the cluster had), and blobs no
// image references any more are deleted. The fetched copies leave the blob cache
// once imported, unless a layer of some cluster uses the same blob.
// imageBlobFetches is how many blobs of one images step are fetched at once.
const imageBlobFetches = 3

func (x *steps) images(ctx context.Context, sc *agent.StepContext) error {
	var p protocol.ImagesPayload
	if err := decodePayload(sc, &p); err != nil {
		return err
	}
	images, plat, err := checkImagesPayload(&p)
	if err != nil {
		return fmt.Errorf("images step %q: %w", sc.Step.Name, err)
	}
	cache, err := imagecache.Open(agent.ImageCacheDir(sc.DataDir))
	if err != nil {
		return err
	}
	start := time.Now()
	fetched := map[v1.Hash]string{}
	var fetchedBytes int64
	defer func() {
		for h := range fetched {
			_ = x.gcBlob(sc.DataDir, h.Hex) // kept while a layer record names it
		}
	}()
	// Blobs come imageBlobFetches at a time: each one's pieces already flow
	// through a pipeline, and a few at once hide each blob's start-up (tracker
	// announce, first peers) behind the others' transfer.
	have := 0
	var todo []protocol.LayerPayload
	seen := map[v1.Hash]bool{}
	for _, b := range p.Blobs {
		h, _ := v1.NewHash(b.Digest) // checked above
		if seen[h] {
			continue
		}
		seen[h] = true
		if cache.Has(h) {
			have++
			continue
		}
		todo = append(todo, b)
	}
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		slots    = make(chan struct{}, imageBlobFetches)
	)
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, b := range todo {
		h, _ := v1.NewHash(b.Digest)
		select {
		case slots <- struct{}{}:
		case <-fctx.Done():
		}
		if fctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			unlock := x.blobs.lock(h.Hex)
			path, _, err := x.ensureBlob(fctx, sc, b, h.Hex, "container image blob")
			unlock()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
					cancel()
				}
				return
			}
			fetched[h] = path
			fetchedBytes += b.Size
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	src := func(_ context.Context, d v1.Descriptor) (io.ReadCloser, error) {
		path, ok := fetched[d.Digest]
		if !ok {
			return nil, fmt.Errorf("not in the cache and not among the step's %d blobs (the controller's plan and the images disagree)", len(p.Blobs))
		}
		return os.Open(path)
	}
	res, err := cache.Import(ctx, p.Cluster, images, plat, src)
	if err != nil {
		return err
	}
	pruned, err := cache.Prune(ctx)
	if err != nil {
		return fmt.Errorf("images of %s imported; deleting the blobs no image uses failed: %w", p.Cluster, err)
	}
	sc.Output("stdout", fmt.Sprintf("%d container images of %s in the node's cache for %s: fetched %d blobs (%s) in %s, %d were there already",
		res.Images, p.Cluster, p.Platform, len(fetched), human.Bytes(fetchedBytes), time.Since(start).Round(time.Millisecond), have))
	if pruned.Blobs > 0 {
		sc.Output("stdout", fmt.Sprintf("deleted %d blobs (%s) no container image uses any more", pruned.Blobs, human.Bytes(pruned.Bytes)))
	}
	// The images are for the node's registry mirror: a node whose mirror does
	// not serve (its address taken, say) must not pass for ready.
	if _, enabled, err := sc.RegistryMirror(ctx); enabled && err != nil {
		return fmt.Errorf("images of %s are in the node's cache, but %w; container runtimes cannot pull them from this node until it serves (`flotilla agent status` on the node says why; the next apply runs this step again)", p.Cluster, err)
	}
	return nil
}

// checkImagesPayload validates a payload and returns its images and platform.
func checkImagesPayload(p *protocol.ImagesPayload) ([]recipe.ContainerImage, *v1.Platform, error) {
	if err := validCluster(p.Cluster); err != nil {
		return nil, nil, err
	}
	if len(p.Images) == 0 || len(p.Images) > protocol.MaxImagesPerStep {
		return nil, nil, fmt.Errorf("%d images: want 1 to %d", len(p.Images), protocol.MaxImagesPerStep)
	}
	if len(p.Blobs) > protocol.MaxImageBlobs {
		return nil, nil, fmt.Errorf("%d blobs: at most %d", len(p.Blobs), protocol.MaxImageBlobs)
	}
	plat, err := v1.ParsePlatform(p.Platform)
	if err != nil || plat.OS == "" || plat.Architecture == "" {
		return nil, nil, fmt.Errorf("platform %q: want os/arch[/variant]", p.Platform)
	}
	for _, b := range p.Blobs {
		if _, err := unpack.DigestHex(b.Digest); err != nil {
			return nil, nil, fmt.Errorf("blob: %w", err)
		}
		if b.Size < 0 {
			return nil, nil, fmt.Errorf("blob %s: size %d", b.Digest, b.Size)
		}
	}
	images := make([]recipe.ContainerImage, 0, len(p.Images))
	for _, ci := range p.Images {
		if ci.Name == "" || ci.Digest == "" {
			return nil, nil, errors.New("an image without name or digest")
		}
		images = append(images, recipe.ContainerImage{Ref: ci.Name, Name: ci.Name, Digest: ci.Digest, MediaType: ci.MediaType, Size: ci.Size})
	}
	return images, plat, nil
}

// undoRemoveImages drops the cluster's container images from the node's cache.
func undoRemoveImages(ctx context.Context, sc *agent.StepContext, cluster string) error {
	cache, err := imagecache.Open(agent.ImageCacheDir(sc.DataDir))
	if err != nil {
		return err
	}
	res, err := cache.Remove(ctx, cluster)
	if err != nil {
		return fmt.Errorf("undo remove-images of %s: %w", cluster, err)
	}
	sc.Output("stdout", fmt.Sprintf("container images of %s removed from the node's cache: %d blobs (%s) deleted, blobs other clusters use kept",
		cluster, res.Blobs, human.Bytes(res.Bytes)))
	return nil
}
