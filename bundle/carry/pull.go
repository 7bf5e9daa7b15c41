package carry

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/flotilla-dev/flotilla/bundle/regclient"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/flotilla-dev/flotilla/bundle/progress"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

// Options configures Pull.
type Options struct {
	Keychain  authn.Keychain    // nil: Docker's config ($DOCKER_CONFIG or ~/.docker)
	Transport http.RoundTripper // nil: http.DefaultTransport
	Insecure  bool              // plain HTTP for registries that are not on loopback
	// Platform narrows a multi-arch index named by a tag to that platform's manifest
	// (stored byte for byte; the index is not). A digest reference is never narrowed:
	// the digest names the index.
	Platform *v1.Platform
	Progress progress.Reporter // nil: silent
}

func (o Options) nameOpts() []name.Option { return regclient.NameOptions(o.Insecure) }

func (o Options) remoteOpts(ctx context.Context) []remote.Option {
	return regclient.RemoteOptions(ctx, o.Keychain, o.Transport)
}

// Pull stages the image ref names into tx: its manifest or index, every child manifest
// and every blob, each checked against its digest. Blobs the store or tx already holds
// are not fetched again. It returns the descriptor of what the reference resolves to.
// Nothing is committed: the caller commits tx, or aborts it and nothing is stored.
func Pull(ctx context.Context, tx *store.Txn, ref Ref, o Options) (v1.Descriptor, error) {
	nr, err := ref.remote(o.nameOpts()...)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("pull %s: %w", ref.Name(), err)
	}
	src := &registrySource{repo: nr.Context(), opts: o.remoteOpts(ctx)}
	rd, err := remote.Get(nr, src.opts...)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("pull %s: %w", ref.Name(), err)
	}
	desc := v1.Descriptor{MediaType: rd.MediaType, Size: rd.Size, Digest: rd.Digest}
	if ref.Digest != "" && desc.Digest.String() != ref.Digest {
		return v1.Descriptor{}, fmt.Errorf("pull %s: the registry served %s", ref.Name(), desc.Digest)
	}
	p := &puller{ctx: ctx, tx: tx, src: src, rep: progress.OrNop(o.Progress)}
	desc, err = p.pull(desc, rd.Manifest, ref, o.Platform)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("pull %s: %w", ref.Name(), err)
	}
	return desc, nil
}

// source is where a puller reads an image's manifests and blobs: a registry
// (registrySource) or a local OCI image layout (layoutSource). Neither is trusted:
// the puller verifies every manifest and the transaction every blob against its digest.
type source interface {
	// manifest returns the bytes of the manifest or index d names.
	manifest(d v1.Descriptor) ([]byte, error)
	// blob opens the config or layer blob d.
	blob(d v1.Descriptor) (io.ReadCloser, error)
}

// registrySource reads from one repository of a registry.
type registrySource struct {
	repo name.Repository
	opts []remote.Option
}

func (r *registrySource) manifest(d v1.Descriptor) ([]byte, error) {
	rd, err := remote.Get(r.repo.Digest(d.Digest.String()), r.opts...)
	if err != nil {
		return nil, err
	}
	return rd.Manifest, nil
}

func (r *registrySource) blob(d v1.Descriptor) (io.ReadCloser, error) {
	l, err := remote.Layer(r.repo.Digest(d.Digest.String()), r.opts...)
	if err != nil {
		return nil, err
	}
	return l.Compressed()
}

type puller struct {
	ctx context.Context
	tx  *store.Txn
	src source
	rep progress.Reporter
}

// pull stages the image whose top manifest or index is desc (raw, not yet verified):
// narrowed to platform when it is an index named by a tag, then everything it
// references. It returns the descriptor of what was staged as the image.
func (p *puller) pull(desc v1.Descriptor, raw []byte, ref Ref, platform *v1.Platform) (v1.Descriptor, error) {
	if err := checkMediaType(desc); err != nil {
		return v1.Descriptor{}, err
	}
	var err error
	if IsIndex(desc.MediaType) && platform != nil && ref.Digest == "" {
		if desc, raw, err = p.narrow(desc, raw, *platform); err != nil {
			return v1.Descriptor{}, err
		}
	}
	if err := p.walk(desc, raw, 0); err != nil {
		return v1.Descriptor{}, err
	}
	p.rep.Wait()
	return desc, nil
}

// narrow picks the platform's entry of an index.
func (p *puller) narrow(idx v1.Descriptor, raw []byte, want v1.Platform) (v1.Descriptor, []byte, error) {
	if err := verifyManifest(idx, raw); err != nil {
		return v1.Descriptor{}, nil, err
	}
	kids, _, err := children(idx, raw)
	if err != nil {
		return v1.Descriptor{}, nil, err
	}
	var have []string
	for _, k := range kids {
		if k.Platform != nil {
			have = append(have, k.Platform.String())
		}
		if PlatformMatches(k.Platform, want) {
			d := v1.Descriptor{MediaType: k.MediaType, Size: k.Size, Digest: k.Digest}
			b, err := p.manifest(d)
			return d, b, err
		}
	}
	return v1.Descriptor{}, nil, fmt.Errorf("index %s has no %s manifest (it has %v)", idx.Digest, want.String(), have)
}

// manifest reads a child manifest from the transaction or the source.
func (p *puller) manifest(d v1.Descriptor) ([]byte, error) {
	if p.tx.Has(d.Digest) {
		return p.tx.ReadBlob(d.Digest)
	}
	if d.Size > MaxManifestSize {
		return nil, fmt.Errorf("manifest %s is %d bytes, more than the %d a manifest may have", d.Digest, d.Size, MaxManifestSize)
	}
	b, err := p.src.manifest(d)
	if err != nil {
		return nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	return b, nil
}

// walk stages a verified manifest and everything it references.
func (p *puller) walk(d v1.Descriptor, raw []byte, depth int) error {
	if err := p.ctx.Err(); err != nil {
		return err
	}
	if depth > maxDepth {
		return fmt.Errorf("manifest %s: indexes nested too deep", d.Digest)
	}
	if err := verifyManifest(d, raw); err != nil {
		return err
	}
	kids, blobs, err := children(d, raw)
	if err != nil {
		return err
	}
	for _, k := range kids {
		b, err := p.manifest(k)
		if err != nil {
			return err
		}
		if err := p.walk(k, b, depth+1); err != nil {
			return err
		}
	}
	for _, b := range blobs {
		if err := p.blob(b); err != nil {
			return err
		}
	}
	return p.tx.PutBlob(d.Digest, int64(len(raw)), bytesReader(raw))
}

// blob stages one config or layer blob, verified as it arrives.
func (p *puller) blob(d v1.Descriptor) error {
	if _, err := p.tx.Store().BlobPath(d.Digest); err != nil {
		return err
	}
	if p.tx.Has(d.Digest) {
		return nil
	}
	rc, err := p.src.blob(d)
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	defer rc.Close()
	bar := p.rep.Start("blob "+d.Digest.Hex[:12], d.Size)
	err = p.tx.PutBlob(d.Digest, d.Size, io.Reader(progress.Reader(rc, bar)))
	bar.Done(err)
	return err
}
