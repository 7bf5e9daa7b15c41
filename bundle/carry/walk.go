package carry

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// maxDepth bounds index nesting (an index of indexes of manifests is depth 2).
const maxDepth = 4

// MaxManifestSize bounds the manifests and indexes carry reads (registries use 4 MiB).
const MaxManifestSize = 4 << 20

// IsIndex reports whether mt is an OCI index or a Docker manifest list.
func IsIndex(mt types.MediaType) bool {
	return mt == types.OCIImageIndex || mt == types.DockerManifestList
}

// IsManifest reports whether mt is an OCI or Docker v2 image manifest.
func IsManifest(mt types.MediaType) bool {
	return mt == types.OCIManifestSchema1 || mt == types.DockerManifestSchema2
}

// checkMediaType refuses anything but the four manifest types a runtime pulls.
func checkMediaType(d v1.Descriptor) error {
	if IsIndex(d.MediaType) || IsManifest(d.MediaType) {
		return nil
	}
	return fmt.Errorf("manifest %s has unknown media type %q: flotilla carries OCI and Docker v2 images and indexes only", d.Digest, d.MediaType)
}

// verifyManifest checks raw against d's digest and size and that the JSON's own
// mediaType (when present) agrees with d's.
func verifyManifest(d v1.Descriptor, raw []byte) error {
	sum := sha256.Sum256(raw)
	got := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if got != d.Digest {
		return fmt.Errorf("manifest %s: content digest is %s: the source served other bytes", d.Digest, got)
	}
	if d.Size > 0 && int64(len(raw)) != d.Size {
		return fmt.Errorf("manifest %s: %d bytes, its descriptor says %d", d.Digest, len(raw), d.Size)
	}
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return fmt.Errorf("manifest %s: not JSON: %w", d.Digest, err)
	}
	if probe.MediaType != "" && probe.MediaType != d.MediaType {
		return fmt.Errorf("manifest %s says it is %s, its descriptor says %s", d.Digest, probe.MediaType, d.MediaType)
	}
	return nil
}

// children returns what a verified manifest or index references: child manifests (of
// an index) and blobs (config and layers of a manifest).
func children(d v1.Descriptor, raw []byte) (manifests, blobs []v1.Descriptor, err error) {
	if err := checkMediaType(d); err != nil {
		return nil, nil, err
	}
	if IsIndex(d.MediaType) {
		im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return nil, nil, fmt.Errorf("index %s: %w", d.Digest, err)
		}
		for _, c := range im.Manifests {
			if err := checkMediaType(c); err != nil {
				return nil, nil, fmt.Errorf("index %s: %w", d.Digest, err)
			}
		}
		return im.Manifests, nil, nil
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	return nil, append([]v1.Descriptor{m.Config}, m.Layers...), nil
}

// PlatformMatches reports whether an index entry's platform is want (a variant is
// compared only when want names one).
func PlatformMatches(have *v1.Platform, want v1.Platform) bool {
	return have != nil && have.OS == want.OS && have.Architecture == want.Architecture &&
		(want.Variant == "" || have.Variant == want.Variant)
}

// Closure is what a node needs of one container image: the manifests (the top one
// first) and the blobs (configs and layers) they reference, each once.
type Closure struct {
	Manifests []v1.Descriptor
	Blobs     []v1.Descriptor
}

// ReadManifest returns the bytes of the manifest d describes; Walk verifies them.
type ReadManifest func(d v1.Descriptor) ([]byte, error)

// ReadBlob adapts a read-by-digest function (store.Txn.ReadBlob and the like).
func ReadBlob(read func(v1.Hash) ([]byte, error)) ReadManifest {
	return func(d v1.Descriptor) ([]byte, error) { return read(d.Digest) }
}

// Walk lists the closure of top. With a platform, a multi-arch index contributes only
// the entries for that platform (the index itself stays whole, so its digest holds);
// nil means every platform. Every manifest read is checked against its digest.
func Walk(read ReadManifest, top v1.Descriptor, platform *v1.Platform) (*Closure, error) {
	c := &Closure{}
	seen := map[v1.Hash]bool{}
	var walk func(d v1.Descriptor, depth int) (int, error)
	walk = func(d v1.Descriptor, depth int) (int, error) {
		if depth > maxDepth {
			return 0, fmt.Errorf("manifest %s: indexes nested too deep", d.Digest)
		}
		if err := checkMediaType(d); err != nil {
			return 0, err
		}
		raw, err := read(d)
		if err != nil {
			return 0, fmt.Errorf("manifest %s: %w", d.Digest, err)
		}
		if err := verifyManifest(d, raw); err != nil {
			return 0, err
		}
		kids, blobs, err := children(d, raw)
		if err != nil {
			return 0, err
		}
		if !seen[d.Digest] {
			seen[d.Digest] = true
			c.Manifests = append(c.Manifests, v1.Descriptor{MediaType: d.MediaType, Size: int64(len(raw)), Digest: d.Digest})
		}
		for _, b := range blobs {
			if !seen[b.Digest] {
				seen[b.Digest] = true
				c.Blobs = append(c.Blobs, v1.Descriptor{MediaType: b.MediaType, Size: b.Size, Digest: b.Digest})
			}
		}
		images := 0
		if IsManifest(d.MediaType) {
			images = 1
		}
		for _, k := range kids {
			if platform != nil && k.Platform != nil && !PlatformMatches(k.Platform, *platform) {
				continue
			}
			if platform != nil && k.Platform == nil && IsManifest(k.MediaType) {
				continue // an index entry without a platform (attestations and the like)
			}
			n, err := walk(k, depth+1)
			if err != nil {
				return 0, err
			}
			images += n
		}
		return images, nil
	}
	n, err := walk(top, 0)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("image %s has no manifest for %s", top.Digest, platform)
	}
	return c, nil
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
