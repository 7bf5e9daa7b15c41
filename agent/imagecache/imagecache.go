// Package imagecache is the agent's on-disk cache of the container images that the
// cluster images applied on this node carry: the content the node-local registry
// mirror (agent/mirror) serves. Import adds the images of one owner (a cluster) with
// every manifest and blob verified against its digest, all or nothing; GC deletes the
// images of owners no longer applied and every blob no remaining image references.
//
// Layout, under the agent's data dir (DirName):
//
//	containers/blobs/sha256/<hex>  manifests, indexes, configs and layers, by digest
//	containers/images.json         owners -> images (name, descriptor, manifests, blobs)
//	containers/tmp/                staging of an Import in progress
//	containers/lock                flock held by Import and GC
//
// Readers (the mirror) take no lock: images.json is replaced atomically and re-read
// when it changes, and blobs are renamed in only once verified.
package imagecache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/agent/mirror"
	"github.com/flotilla-dev/flotilla/bundle/carry"
	"github.com/flotilla-dev/flotilla/bundle/plan"
	"github.com/flotilla-dev/flotilla/internal/atomicfile"
)

// DirName is the cache's directory in the agent's data dir.
const DirName = "containers"

// lockTimeout bounds the wait for another Import or GC.
const lockTimeout = 10 * time.Minute

// Image is one container image in the cache.
type Image struct {
	// Name is the normalized reference (plan.ContainerImage.Name): the mirror answers
	// its tag and digest in its registry and repository.
	Name       string        `json:"name"`
	Descriptor v1.Descriptor `json:"descriptor"`
	// Manifests and Blobs are the closure the node holds (carry.Walk for its platform).
	Manifests []v1.Descriptor `json:"manifests"`
	Blobs     []v1.Descriptor `json:"blobs"`
}

// file is images.json.
type file struct {
	Owners map[string][]Image `json:"owners"`
}

// Cache is a container image cache directory.
type Cache struct {
	dir string

	mu    sync.Mutex
	stamp string // images.json's size and mtime when idx was built
	idx   map[string]*repoIndex
}

type repoIndex struct {
	tags  map[string]v1.Descriptor
	mans  map[v1.Hash]v1.Descriptor
	blobs map[v1.Hash]v1.Descriptor
}

// Open opens (creating) the cache at dir, normally <data-dir>/containers.
func Open(dir string) (*Cache, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image cache %s: %w", dir, err)
	}
	for _, d := range []string{filepath.Join(abs, "blobs", "sha256"), filepath.Join(abs, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("image cache %s: %w", abs, err)
		}
	}
	return &Cache{dir: abs}, nil
}

// Dir returns the cache's directory.
func (c *Cache) Dir() string { return c.dir }

var hexRE = regexp.MustCompile(`^[a-f0-9]{64}$`)

// BlobPath returns where a blob lives; it refuses anything but a well-formed sha256.
func (c *Cache) BlobPath(h v1.Hash) (string, error) {
	if h.Algorithm != "sha256" || !hexRE.MatchString(h.Hex) {
		return "", fmt.Errorf("invalid blob digest %q: want sha256:<64 hex>", h.String())
	}
	return filepath.Join(c.dir, "blobs", "sha256", h.Hex), nil
}

// Has reports whether the cache holds the blob.
func (c *Cache) Has(h v1.Hash) bool {
	p, err := c.BlobPath(h)
	if err != nil {
		return false
	}
	_, err = os.Stat(p)
	return err == nil
}

func (c *Cache) lock(ctx context.Context) (func(), error) {
	f, err := os.OpenFile(filepath.Join(c.dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("image cache lock: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, lockTimeout)
	defer cancel()
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("image cache lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("image cache lock %s: %w", f.Name(), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *Cache) indexPath() string { return filepath.Join(c.dir, "images.json") }

func (c *Cache) read() (*file, error) {
	f := &file{Owners: map[string][]Image{}}
	b, err := os.ReadFile(c.indexPath())
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.indexPath(), err)
	}
	if err := json.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("parse %s: %w", c.indexPath(), err)
	}
	if f.Owners == nil {
		f.Owners = map[string][]Image{}
	}
	return f, nil
}

func (c *Cache) write(f *file) error {
	return atomicfile.WriteJSON(c.indexPath(), f, 0o644)
}

// Images returns every owner's images.
func (c *Cache) Images() (map[string][]Image, error) {
	f, err := c.read()
	if err != nil {
		return nil, err
	}
	return f.Owners, nil
}

// Source opens a blob an Import needs and the cache lacks (the peer-to-peer fetcher,
// a cluster image store, …); Import verifies what it returns.
type Source func(ctx context.Context, d v1.Descriptor) (io.ReadCloser, error)

// ImportResult says what an Import added.
type ImportResult struct {
	Images   int   // images the owner now has
	NewBlobs int   // blobs fetched from the source
	Bytes    int64 // their size
}

// Import makes images the owner's set (replacing what the owner had: an upgrade drops
// the old images, GC frees their blobs). For each image it reads the manifest or index
// and, for platform (nil: all), the manifests and blobs under it, taking what the cache
// lacks from src (nil: the cache must hold everything). Every byte is verified against
// its digest and size; on any error nothing is stored and images.json is unchanged.
func (c *Cache) Import(ctx context.Context, owner string, images []plan.ContainerImage, platform *v1.Platform, src Source) (ImportResult, error) {
	var res ImportResult
	if err := validOwner(owner); err != nil {
		return res, err
	}
	unlock, err := c.lock(ctx)
	if err != nil {
		return res, err
	}
	defer unlock()
	stage, err := os.MkdirTemp(filepath.Join(c.dir, "tmp"), "import-")
	if err != nil {
		return res, fmt.Errorf("image cache: %w", err)
	}
	defer os.RemoveAll(stage)
	im := &importer{c: c, ctx: ctx, src: src, stage: stage, staged: map[v1.Hash]string{}}
	var out []Image
	for _, ci := range images {
		img, err := im.image(ci, platform)
		if err != nil {
			return res, fmt.Errorf("import %s for %s: %w: nothing stored", ci.Name, owner, err)
		}
		out = append(out, img)
	}
	f, err := c.read()
	if err != nil {
		return res, err
	}
	for h, p := range im.staged {
		dst, _ := c.BlobPath(h)
		if err := os.Rename(p, dst); err != nil {
			return res, fmt.Errorf("import for %s: %w", owner, err)
		}
		res.NewBlobs++
	}
	res.Bytes = im.bytes
	f.Owners[owner] = out
	if err := c.write(f); err != nil {
		return res, err
	}
	res.Images = len(out)
	return res, nil
}

func validOwner(owner string) error {
	if owner == "" || len(owner) > 256 || strings.ContainsAny(owner, "\x00\n") {
		return fmt.Errorf("image cache owner %q: want a non-empty name (the cluster's)", owner)
	}
	return nil
}

type importer struct {
	c      *Cache
	ctx    context.Context
	src    Source
	stage  string
	staged map[v1.Hash]string
	bytes  int64
}

func (im *importer) image(ci plan.ContainerImage, platform *v1.Platform) (Image, error) {
	r, err := carry.ParseRef(ci.Name)
	if err != nil {
		return Image{}, err
	}
	if r.Name() != ci.Name {
		return Image{}, fmt.Errorf("name %q is not normalized (want %q)", ci.Name, r.Name())
	}
	h, err := v1.NewHash(ci.Digest)
	if err != nil {
		return Image{}, fmt.Errorf("digest %q: %w", ci.Digest, err)
	}
	if r.Digest != "" && r.Digest != ci.Digest {
		return Image{}, fmt.Errorf("the reference names %s but the image is %s", r.Digest, ci.Digest)
	}
	top := v1.Descriptor{MediaType: types.MediaType(ci.MediaType), Size: ci.Size, Digest: h}
	cl, err := carry.Walk(im.manifest, top, platform)
	if err != nil {
		return Image{}, err
	}
	for _, b := range cl.Blobs {
		if err := im.blob(b); err != nil {
			return Image{}, err
		}
	}
	return Image{Name: ci.Name, Descriptor: top, Manifests: cl.Manifests, Blobs: cl.Blobs}, nil
}

// manifest reads a manifest from the cache, the staging area or the source (staging
// it; carry.Walk verifies the bytes, and blob verifies them as they are staged).
func (im *importer) manifest(d v1.Descriptor) ([]byte, error) {
	if p, ok := im.staged[d.Digest]; ok {
		return os.ReadFile(p)
	}
	if p, err := im.c.BlobPath(d.Digest); err == nil && im.c.Has(d.Digest) {
		return os.ReadFile(p)
	}
	if d.Size > carry.MaxManifestSize {
		return nil, fmt.Errorf("manifest %s is %d bytes, more than the %d a manifest may have", d.Digest, d.Size, carry.MaxManifestSize)
	}
	if err := im.blob(d); err != nil {
		return nil, err
	}
	return os.ReadFile(im.staged[d.Digest])
}

// blob stages a blob from the source, verifying digest and size (size < 0: unknown).
func (im *importer) blob(d v1.Descriptor) error {
	if _, err := im.c.BlobPath(d.Digest); err != nil {
		return err
	}
	if _, ok := im.staged[d.Digest]; ok || im.c.Has(d.Digest) {
		return nil
	}
	if im.src == nil {
		return fmt.Errorf("blob %s: not in the cache and no source to fetch it from", d.Digest)
	}
	if err := im.ctx.Err(); err != nil {
		return err
	}
	rc, err := im.src(im.ctx, d)
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(im.stage, "blob-")
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	var h hash.Hash = sha256.New()
	limit := d.Size
	if limit < 0 {
		limit = carry.MaxManifestSize
	}
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(rc, limit+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	got := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	switch {
	case n > limit:
		return fmt.Errorf("blob %s: the source sent more than %d bytes", d.Digest, limit)
	case d.Size >= 0 && n != d.Size:
		return fmt.Errorf("blob %s: the source sent %d bytes, the manifest says %d", d.Digest, n, d.Size)
	case got != d.Digest:
		return fmt.Errorf("blob %s: digest mismatch: the source sent content whose digest is %s", d.Digest, got)
	}
	p := filepath.Join(im.stage, d.Digest.Hex)
	if err := os.Rename(f.Name(), p); err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	im.staged[d.Digest] = p
	im.bytes += n
	return nil
}

// GCResult says what GC removed.
type GCResult struct {
	Owners int   // owners dropped
	Blobs  int   // blobs deleted
	Bytes  int64 // bytes freed
}

// GC keeps the images of the owners in keep (the clusters still applied on this
// node), drops every other owner's, and deletes each blob no remaining image
// references (a blob shared by two images stays while either is kept).
func (c *Cache) GC(ctx context.Context, keep []string) (GCResult, error) {
	return c.gc(ctx, func(owner string) bool { return slices.Contains(keep, owner) })
}

// Remove drops one owner's images (a cluster deleted from, or no longer giving images
// to, this node) and deletes every blob no other owner's image references. Owners
// imported meanwhile stay: the decision is taken under the cache's lock.
func (c *Cache) Remove(ctx context.Context, owner string) (GCResult, error) {
	if err := validOwner(owner); err != nil {
		return GCResult{}, err
	}
	return c.gc(ctx, func(o string) bool { return o != owner })
}

// Prune deletes every blob no owner's image references (after an Import replaced an
// owner's set, the images it dropped).
func (c *Cache) Prune(ctx context.Context) (GCResult, error) {
	return c.gc(ctx, func(string) bool { return true })
}

func (c *Cache) gc(ctx context.Context, keep func(owner string) bool) (GCResult, error) {
	var res GCResult
	unlock, err := c.lock(ctx)
	if err != nil {
		return res, err
	}
	defer unlock()
	f, err := c.read()
	if err != nil {
		return res, err
	}
	changed := false
	for owner := range f.Owners {
		if !keep(owner) {
			delete(f.Owners, owner)
			res.Owners++
			changed = true
		}
	}
	if changed {
		if err := c.write(f); err != nil {
			return res, err
		}
	}
	live := map[string]bool{}
	for _, imgs := range f.Owners {
		for _, img := range imgs {
			for _, d := range append(append([]v1.Descriptor{img.Descriptor}, img.Manifests...), img.Blobs...) {
				live[d.Digest.Hex] = true
			}
		}
	}
	dir := filepath.Join(c.dir, "blobs", "sha256")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return res, fmt.Errorf("image cache gc: %w", err)
	}
	for _, e := range ents {
		if live[e.Name()] {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			return res, fmt.Errorf("image cache gc: %w", err)
		}
		res.Blobs++
		res.Bytes += info.Size()
	}
	// No Import is running (the lock): staging left behind is from a crash.
	if tmp, err := os.ReadDir(filepath.Join(c.dir, "tmp")); err == nil {
		for _, e := range tmp {
			os.RemoveAll(filepath.Join(c.dir, "tmp", e.Name()))
		}
	}
	return res, ctx.Err()
}

// index returns the per-repository lookup tables, rebuilt when images.json changed.
func (c *Cache) index() (map[string]*repoIndex, error) {
	st, err := os.Stat(c.indexPath())
	stamp := ""
	if err == nil {
		var ino uint64
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			ino = sys.Ino
		}
		stamp = fmt.Sprintf("%d/%d/%d", ino, st.Size(), st.ModTime().UnixNano())
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idx != nil && stamp == c.stamp {
		return c.idx, nil
	}
	f, err := c.read()
	if err != nil {
		return nil, err
	}
	idx := map[string]*repoIndex{}
	owners := make([]string, 0, len(f.Owners))
	for o := range f.Owners {
		owners = append(owners, o)
	}
	sort.Strings(owners) // the same tag in two owners: the first owner by name wins
	for _, o := range owners {
		for _, img := range f.Owners[o] {
			r, err := carry.ParseRef(img.Name)
			if err != nil {
				continue
			}
			ri := idx[r.Repository()]
			if ri == nil {
				ri = &repoIndex{tags: map[string]v1.Descriptor{}, mans: map[v1.Hash]v1.Descriptor{}, blobs: map[v1.Hash]v1.Descriptor{}}
				idx[r.Repository()] = ri
			}
			if _, ok := ri.tags[r.Tag]; r.Tag != "" && !ok {
				ri.tags[r.Tag] = img.Descriptor
			}
			for _, m := range append([]v1.Descriptor{img.Descriptor}, img.Manifests...) {
				ri.mans[m.Digest] = m
				ri.blobs[m.Digest] = m
			}
			for _, b := range img.Blobs {
				ri.blobs[b.Digest] = b
			}
		}
	}
	c.idx, c.stamp = idx, stamp
	return idx, nil
}

func (c *Cache) repo(registry, repo string) (*repoIndex, error) {
	idx, err := c.index()
	if err != nil {
		return nil, err
	}
	ri := idx[registry+"/"+repo]
	if ri == nil {
		return nil, fmt.Errorf("%s/%s: %w", registry, repo, mirror.ErrNotFound)
	}
	return ri, nil
}

// Resolve implements mirror.Content.
func (c *Cache) Resolve(registry, repo, reference string) (v1.Descriptor, error) {
	ri, err := c.repo(registry, repo)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if strings.Contains(reference, ":") {
		h, err := v1.NewHash(reference)
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("%s: %w", reference, mirror.ErrNotFound)
		}
		if d, ok := ri.mans[h]; ok {
			return d, nil
		}
	} else if d, ok := ri.tags[reference]; ok {
		return d, nil
	}
	return v1.Descriptor{}, fmt.Errorf("%s/%s %s: %w", registry, repo, reference, mirror.ErrNotFound)
}

// Blob implements mirror.Content.
func (c *Cache) Blob(registry, repo string, digest v1.Hash) (v1.Descriptor, error) {
	ri, err := c.repo(registry, repo)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if d, ok := ri.blobs[digest]; ok {
		return d, nil
	}
	return v1.Descriptor{}, fmt.Errorf("%s/%s %s: %w", registry, repo, digest, mirror.ErrNotFound)
}

// Open implements mirror.Content.
func (c *Cache) Open(digest v1.Hash) (io.ReadSeekCloser, error) {
	p, err := c.BlobPath(digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", digest, mirror.ErrNotFound)
	}
	return f, err
}

// Tags implements mirror.Content.
func (c *Cache) Tags(registry, repo string) ([]string, error) {
	ri, err := c.repo(registry, repo)
	if err != nil {
		return nil, err
	}
	tags := make([]string, 0, len(ri.tags))
	for t := range ri.tags {
		tags = append(tags, t)
	}
	sort.Strings(tags)
	return tags, nil
}
