package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/imagecache"
	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/internal/registrytest"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The "images" method delivers container images instead of a layer: ten
// images of S/10 random bytes each (one layer per image), pushed to a real
// registry (Debian's docker-registry) on the machine, carried by a cluster
// image built from them (`IMAGE ref…`), then the registry is stopped and
// `flotilla apply` puts them into every agent's image cache (the node-local
// registry mirror serves them from there) through the same peer-to-peer
// pieces as layers. T runs from the apply's start to its end.

const benchImages = 10

// buildImagesImage pushes benchImages container images totalling size bytes to
// a throwaway registry, builds a cluster image carrying them, stops the registry.
func buildImagesImage(t *testing.T, work, stores string, size int64) rolloutImage {
	t.Helper()
	reg := registrytest.Start(t, registrytest.Options{})
	defer reg.Stop()
	var refs []string
	for _, p := range pushRandomImages(t, context.Background(), reg.Host, size) {
		refs = append(refs, reg.Host+"/"+p)
	}
	img := rolloutImage{storeDir: filepath.Join(stores, "images-store"), ref: "bench-images:1"}
	st, err := store.Open(img.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	ctxDir := filepath.Join(work, "images-image")
	os.MkdirAll(ctxDir, 0o755)
	os.WriteFile(filepath.Join(ctxDir, "Kubefile"), []byte("FROM scratch\nIMAGE "+strings.Join(refs, " ")+"\n"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := build.Build(ctx, st, build.Options{ContextDir: ctxDir, Tags: []string{img.ref}}); err != nil {
		t.Fatalf("build the benchmark image with %d container images: %v", benchImages, err)
	}
	return img
}

// pushRandomImages pushes benchImages container images of total/benchImages
// random bytes each (one gzip layer: what remote.Write sends, whatever media type
// random.Layer is told) to the registry at host, and returns their
// repository:tag paths (bench/app<i>:1).
func pushRandomImages(t *testing.T, ctx context.Context, host string, total int64) []string {
	t.Helper()
	var paths []string
	for i := range benchImages {
		l, err := random.Layer(total/benchImages, types.OCILayer)
		if err != nil {
			t.Fatal(err)
		}
		img, err := mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON), l)
		if err != nil {
			t.Fatal(err)
		}
		p := fmt.Sprintf("bench/app%d:1", i)
		r, err := name.ParseReference(host + "/" + p)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
			t.Fatalf("push %s: %v", r, err)
		}
		paths = append(paths, p)
	}
	return paths
}

// imagesCached checks that the agent in agentDir holds every benchmark image.
func imagesCached(agentDir string) error {
	c, err := imagecache.Open(agent.ImageCacheDir(agentDir))
	if err != nil {
		return err
	}
	imgs, err := c.Images()
	if err != nil {
		return err
	}
	if n := len(imgs["bench"]); n != benchImages {
		return fmt.Errorf("%d of %d container images in the cache", n, benchImages)
	}
	return nil
}
