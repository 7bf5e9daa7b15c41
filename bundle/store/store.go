// Package store keeps cluster images in an OCI image layout on disk, safe for several
// processes at once: blobs are staged and verified before they enter the layout, index.json
// changes under a file lock, and garbage collection excludes every writer.
//
// Layout: <dir>/oci-layout, <dir>/index.json, <dir>/blobs/sha256/… as the OCI spec says;
// flotilla's own bookkeeping (locks, staging, layer cache, build records) lives in
// <dir>/flotilla/, which OCI tools ignore.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/internal/atomicfile"
)

// EnvStore names the environment variable that overrides the default store directory.
const EnvStore = "FLOTILLA_STORE"

// RefNameAnnotation is the index.json annotation that carries an image's name.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// ErrNotFound is returned (wrapped) when a reference names nothing in the store.
var ErrNotFound = errors.New("not found in the local store")

// Store is an OCI image layout directory.
type Store struct {
	dir    string
	layout layout.Path
}

// DefaultDir returns $FLOTILLA_STORE, else /var/lib/flotilla/images for root, else
// $XDG_DATA_HOME/flotilla/images (~/.local/share when unset).
func DefaultDir() string {
	if d := os.Getenv(EnvStore); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/var/lib/flotilla/images"
	}
	data := os.Getenv("XDG_DATA_HOME")
	if data == "" {
		home, _ := os.UserHomeDir()
		data = filepath.Join(home, ".local", "share")
	}
	return filepath.Join(data, "flotilla", "images")
}

// Open opens the store at dir, creating an empty OCI layout there if needed.
func Open(dir string) (*Store, error) {
	if dir == "" {
		dir = DefaultDir()
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	for _, d := range []string{filepath.Join(abs, "blobs", "sha256"), filepath.Join(abs, "flotilla", "tmp"), filepath.Join(abs, "flotilla", "cache")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("open store %s: %w (run as root, or use a store directory this user can write: $%s)", abs, err, EnvStore)
		}
	}
	s := &Store{dir: abs, layout: layout.Path(abs)}
	if _, err := os.Stat(filepath.Join(abs, "oci-layout")); errors.Is(err, os.ErrNotExist) {
		if err := atomicfile.Write(filepath.Join(abs, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644); err != nil {
			return nil, fmt.Errorf("open store %s: %w", abs, err)
		}
	}
	if _, err := os.Stat(s.indexPath()); errors.Is(err, os.ErrNotExist) {
		if err := s.updateIndex(context.Background(), func(*v1.IndexManifest) (bool, error) { return true, nil }); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Dir returns the store's absolute directory.
func (s *Store) Dir() string { return s.dir }

// Layout returns the store as a go-containerregistry layout.Path (read-only use).
func (s *Store) Layout() layout.Path { return s.layout }

var hexRE = regexp.MustCompile(`^[a-f0-9]{64}$`)

// BlobPath returns the file of a blob; it refuses anything but a well-formed sha256.
func (s *Store) BlobPath(h v1.Hash) (string, error) {
	if h.Algorithm != "sha256" || !hexRE.MatchString(h.Hex) {
		return "", fmt.Errorf("invalid blob digest %q: want sha256:<64 hex>", h.String())
	}
	return filepath.Join(s.dir, "blobs", "sha256", h.Hex), nil
}

// HasBlob reports whether the store holds the blob.
func (s *Store) HasBlob(h v1.Hash) bool {
	p, err := s.BlobPath(h)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

// OpenBlob opens a blob by digest and returns its size. The bytes are as stored; the
// store only admits blobs whose content matches their digest.
func (s *Store) OpenBlob(h v1.Hash) (io.ReadCloser, int64, error) {
	p, err := s.BlobPath(h)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, fmt.Errorf("blob %s: %w", h, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("blob %s: %w", h, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("blob %s: %w", h, err)
	}
	return f, st.Size(), nil
}

// Image returns the image whose manifest has digest h.
func (s *Store) Image(h v1.Hash) (v1.Image, error) {
	img, err := newStoreImage(s, h)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", h, err)
	}
	return img, nil
}

// Index returns the image index whose manifest has digest h.
func (s *Store) Index(h v1.Hash) (v1.ImageIndex, error) {
	if !s.HasBlob(h) {
		return nil, fmt.Errorf("index %s: %w", h, ErrNotFound)
	}
	return &storeIndex{s: s, digest: h}, nil
}

// NormalizeName validates an image name and adds ":latest" when it has no tag or
// digest. Names stay as written otherwise (no docker.io expansion).
func NormalizeName(ref string) (string, error) {
	if ref == "" {
		return "", errors.New("empty image name")
	}
	if _, err := name.ParseReference(ref); err != nil {
		return "", fmt.Errorf("invalid image name %q: %w", ref, err)
	}
	if strings.Contains(ref, "@") {
		return ref, nil
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref, nil
	}
	return ref + ":latest", nil
}

// Entry is one image the store lists: a name (empty when untagged) and its descriptor.
type Entry struct {
	Name       string
	Descriptor v1.Descriptor
}

// List returns the images in index.json order.
func (s *Store) List() ([]Entry, error) {
	im, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(im.Manifests))
	for _, d := range im.Manifests {
		out = append(out, Entry{Name: d.Annotations[RefNameAnnotation], Descriptor: d})
	}
	return out, nil
}

// Get finds the descriptor a reference names: an image name (":latest" implied), a
// digest "sha256:…", a unique digest prefix of at least 6 hex digits, or name@sha256:….
func (s *Store) Get(ref string) (v1.Descriptor, error) {
	entries, err := s.List()
	if err != nil {
		return v1.Descriptor{}, err
	}
	digest := ""
	switch {
	case strings.HasPrefix(ref, "sha256:"):
		digest = strings.TrimPrefix(ref, "sha256:")
	case regexp.MustCompile(`^[a-f0-9]{6,64}$`).MatchString(ref):
		digest = ref
	case strings.Contains(ref, "@sha256:"):
		digest = ref[strings.Index(ref, "@sha256:")+len("@sha256:"):]
	}
	if digest != "" {
		var found []v1.Descriptor
		for _, e := range entries {
			if strings.HasPrefix(e.Descriptor.Digest.Hex, digest) && (len(found) == 0 || found[0].Digest != e.Descriptor.Digest) {
				found = append(found, e.Descriptor)
			}
		}
		switch {
		case len(found) == 1:
			d := found[0]
			d.Annotations = nil
			return d, nil
		case len(found) > 1:
			return v1.Descriptor{}, fmt.Errorf("digest prefix %q is ambiguous: give more digits", ref)
		}
		if len(digest) == 64 {
			return s.describeBlob(v1.Hash{Algorithm: "sha256", Hex: digest})
		}
		if strings.Contains(ref, ":") || strings.Contains(ref, "@") {
			return v1.Descriptor{}, fmt.Errorf("image %s: %w (flotilla images lists what it holds)", ref, ErrNotFound)
		}
		// A bare hex word may also be a name ("cafe01"): look it up as one.
	}
	n, err := NormalizeName(ref)
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, e := range entries {
		if e.Name == n {
			return e.Descriptor, nil
		}
	}
	return v1.Descriptor{}, fmt.Errorf("image %s: %w (build it, pull it or load it first)", n, ErrNotFound)
}

// describeBlob builds a descriptor for a manifest blob that index.json does not list
// (for example one platform of a multi-arch image).
func (s *Store) describeBlob(h v1.Hash) (v1.Descriptor, error) {
	rc, size, err := s.OpenBlob(h)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer rc.Close()
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests []any           `json:"manifests"`
	}
	b, err := io.ReadAll(io.LimitReader(rc, 4<<20))
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("read manifest %s: %w", h, err)
	}
	if err := jsonUnmarshal(b, &probe); err != nil {
		return v1.Descriptor{}, fmt.Errorf("blob %s is not a manifest: %w", h, err)
	}
	mt := probe.MediaType
	if mt == "" {
		mt = types.OCIManifestSchema1
		if probe.Manifests != nil {
			mt = types.OCIImageIndex
		}
	}
	return v1.Descriptor{MediaType: mt, Size: size, Digest: h}, nil
}

// HostPlatform is the platform of this machine.
func HostPlatform() v1.Platform { return v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH} }

// Resolve returns the image a reference names, for the host platform when it names a
// multi-arch index, and the image's manifest digest.
func (s *Store) Resolve(ref string) (v1.Image, v1.Hash, error) {
	return s.ResolvePlatform(ref, nil)
}

// ResolvePlatform is Resolve for a given platform (nil: the host's).
func (s *Store) ResolvePlatform(ref string, p *v1.Platform) (v1.Image, v1.Hash, error) {
	d, err := s.Get(ref)
	if err != nil {
		return nil, v1.Hash{}, err
	}
	return s.imageFor(d, p, ref)
}

func (s *Store) imageFor(d v1.Descriptor, p *v1.Platform, ref string) (v1.Image, v1.Hash, error) {
	if !d.MediaType.IsIndex() {
		img, err := s.Image(d.Digest)
		return img, d.Digest, err
	}
	want := HostPlatform()
	if p != nil {
		want = *p
	}
	idx, err := s.Index(d.Digest)
	if err != nil {
		return nil, v1.Hash{}, err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("image %s: %w", ref, err)
	}
	var have []string
	for _, m := range im.Manifests {
		if m.Platform == nil {
			continue
		}
		have = append(have, m.Platform.String())
		if m.Platform.OS == want.OS && m.Platform.Architecture == want.Architecture && (want.Variant == "" || m.Platform.Variant == want.Variant) {
			if m.MediaType.IsIndex() {
				return s.imageFor(m, p, ref)
			}
			img, err := s.Image(m.Digest)
			return img, m.Digest, err
		}
	}
	return nil, v1.Hash{}, fmt.Errorf("image %s has no %s variant (it has %s): choose one of those platforms", ref, want.String(), strings.Join(have, ", "))
}

// Plan decodes the flotilla plan carried in an image's config labels.
func Plan(img v1.Image) (*recipe.Recipe, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read image config: %w", err)
	}
	return recipe.FromLabels(cfg.Config.Labels)
}
