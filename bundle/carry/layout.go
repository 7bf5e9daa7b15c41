package carry

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
)

// Annotations of a carried image's descriptor in a cluster image's index.
const (
	// AnnotationRef is the image's normalized name (recipe.ContainerImage.Name).
	AnnotationRef = "dev.flotilla.container.ref"
	// AnnotationRoles lists the roles whose hosts get it, comma-separated ("all").
	AnnotationRoles = "dev.flotilla.container.roles"
)

// Index returns the OCI index of a cluster image that carries container images: first
// the cluster image's manifests (one per platform, each with its platform), then one
// descriptor per carried image, pointing at its manifest or index as its registry
// serves it, with no platform (so platform selection never picks it) and with the
// annotations above. Registries, crane and oras copy every child of an index, so the
// container images travel wherever the cluster image goes.
func Index(cluster []v1.Descriptor, images []recipe.ContainerImage) ([]byte, v1.Descriptor, error) {
	im := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	for _, d := range cluster {
		if d.Platform == nil {
			return nil, v1.Descriptor{}, fmt.Errorf("cluster manifest %s has no platform", d.Digest)
		}
		im.Manifests = append(im.Manifests, d)
	}
	for _, c := range images {
		h, err := v1.NewHash(c.Digest)
		if err != nil {
			return nil, v1.Descriptor{}, fmt.Errorf("container image %s: %w", c.Name, err)
		}
		im.Manifests = append(im.Manifests, v1.Descriptor{
			MediaType: types.MediaType(c.MediaType), Size: c.Size, Digest: h,
			Annotations: map[string]string{AnnotationRef: c.Name, AnnotationRoles: strings.Join(c.Roles, ",")},
		})
	}
	raw, err := json.Marshal(im)
	if err != nil {
		return nil, v1.Descriptor{}, fmt.Errorf("encode index: %w", err)
	}
	sum := sha256.Sum256(raw)
	return raw, v1.Descriptor{MediaType: types.OCIImageIndex, Size: int64(len(raw)), Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}}, nil
}

// IsCarried reports whether an index entry is a carried container image.
func IsCarried(d v1.Descriptor) bool { return d.Annotations[AnnotationRef] != "" }

// Carried is one container image a cluster image's index names.
type Carried struct {
	Name       string        `json:"name"`
	Roles      []string      `json:"roles"`
	Descriptor v1.Descriptor `json:"descriptor"`
}

// List returns the carried images of a cluster image's raw index (none for a plain
// manifest).
func List(raw []byte) ([]Carried, error) {
	im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("cluster image index: %w", err)
	}
	var out []Carried
	for _, d := range im.Manifests {
		if !IsCarried(d) {
			continue
		}
		c := Carried{Name: d.Annotations[AnnotationRef], Descriptor: v1.Descriptor{MediaType: d.MediaType, Size: d.Size, Digest: d.Digest}}
		if r := d.Annotations[AnnotationRoles]; r != "" {
			c.Roles = strings.Split(r, ",")
		}
		out = append(out, c)
	}
	return out, nil
}
