// Package archive carries cluster images across an air gap: Save writes images from the
// store as one tar holding an OCI image layout (optionally zstd-compressed), and Load
// verifies every blob of such an archive before anything enters the store.
package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/flotilla-dev/flotilla/bundle/progress"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

// SaveOptions configures Save.
type SaveOptions struct {
	Zstd     bool              // compress the tar with zstd
	Progress progress.Reporter // nil: silent
}

// Save writes the images refs name in st to w as a tar of an OCI image layout whose
// index.json names each image (org.opencontainers.image.ref.name).
func Save(ctx context.Context, st *store.Store, w io.Writer, refs []string, o SaveOptions) error {
	if len(refs) == 0 {
		return errors.New("save: name at least one image")
	}
	index := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	blobs := map[v1.Hash]int64{}
	for _, ref := range refs {
		d, err := st.Get(ref)
		if err != nil {
			return fmt.Errorf("save: %w", err)
		}
		if err := collect(st, d, blobs, 0); err != nil {
			return fmt.Errorf("save %s: %w", ref, err)
		}
		d.Annotations = nil
		if n, err := store.NormalizeName(ref); err == nil && !strings.Contains(ref, "@") && !strings.HasPrefix(ref, "sha256:") {
			if _, err := st.Get(n); err == nil {
				d.Annotations = map[string]string{store.RefNameAnnotation: n}
			}
		}
		index.Manifests = append(index.Manifests, d)
	}
	out := w
	var zw *zstd.Encoder
	if o.Zstd {
		var err error
		if zw, err = zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault)); err != nil {
			return err
		}
		out = zw
	}
	tw := tar.NewWriter(out)
	file := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	idx, err := json.MarshalIndent(index, "", "  ")
	if err != nil {
		return err
	}
	if err := file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := file("index.json", idx); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			return fmt.Errorf("save: %w", err)
		}
	}
	hashes := make([]v1.Hash, 0, len(blobs))
	var total int64
	for h, size := range blobs {
		hashes = append(hashes, h)
		total += size
	}
	sort.Slice(hashes, func(i, j int) bool { return hashes[i].Hex < hashes[j].Hex })
	rep := progress.OrNop(o.Progress)
	bar := rep.Start(fmt.Sprintf("save %d images", len(refs)), total)
	err = func() error {
		for _, h := range hashes {
			if err := ctx.Err(); err != nil {
				return err
			}
			rc, size, err := st.OpenBlob(h)
			if err != nil {
				return err
			}
			err = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "blobs/sha256/" + h.Hex, Mode: 0o644, Size: size, ModTime: time.Unix(0, 0)})
			if err == nil {
				_, err = io.Copy(tw, progress.Reader(rc, bar))
			}
			rc.Close()
			if err != nil {
				return fmt.Errorf("blob %s: %w", h, err)
			}
		}
		if err := tw.Close(); err != nil {
			return err
		}
		if zw != nil {
			return zw.Close()
		}
		return nil
	}()
	bar.Done(err)
	rep.Wait()
	if err != nil {
		return fmt.Errorf("save: %w", err)
	}
	return nil
}

// collect adds d and every blob it references to blobs (digest -> size).
func collect(st *store.Store, d v1.Descriptor, blobs map[v1.Hash]int64, depth int) error {
	if depth > 8 {
		return fmt.Errorf("manifest %s: nesting too deep", d.Digest)
	}
	blobs[d.Digest] = d.Size
	rc, _, err := st.OpenBlob(d.Digest)
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(io.LimitReader(rc, 8<<20))
	rc.Close()
	if err != nil {
		return err
	}
	m, err := parseManifest(raw)
	if err != nil {
		return fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	if m.Config != nil {
		blobs[m.Config.Digest] = m.Config.Size
	}
	for _, l := range m.Layers {
		blobs[l.Digest] = l.Size
	}
	for _, c := range m.Manifests {
		if err := collect(st, c, blobs, depth+1); err != nil {
			return err
		}
	}
	return nil
}

type anyManifest struct {
	Config    *v1.Descriptor  `json:"config"`
	Layers    []v1.Descriptor `json:"layers"`
	Manifests []v1.Descriptor `json:"manifests"`
}

func parseManifest(raw []byte) (*anyManifest, error) {
	var m anyManifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// LoadOptions configures Load.
type LoadOptions struct {
	Progress progress.Reporter // nil: silent
	Size     int64             // archive size for the progress bar; 0: unknown
}

var blobName = regexp.MustCompile(`^blobs/sha256/([a-f0-9]{64})$`)

// Load reads an archive written by Save (or any tar of an OCI image layout; plain,
// gzip or zstd) into st. Every blob is verified against its digest and every image must
// be complete before anything enters the store; on any error the store is unchanged.
// It returns the images loaded.
func Load(ctx context.Context, st *store.Store, r io.Reader, o LoadOptions) ([]store.Entry, error) {
	rep := progress.OrNop(o.Progress)
	total := o.Size
	if total <= 0 {
		total = -1
	}
	bar := rep.Start("load", total)
	entries, err := load(ctx, st, progress.Reader(r, bar))
	bar.Done(err)
	rep.Wait()
	return entries, err
}

func load(ctx context.Context, st *store.Store, r io.Reader) ([]store.Entry, error) {
	br := bufio.NewReader(r)
	magic, _ := br.Peek(4)
	var in io.Reader = br
	switch {
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("load: zstd: %w", err)
		}
		defer zr.Close()
		in = zr
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("load: gzip: %w", err)
		}
		defer zr.Close()
		in = zr
	}
	tx, err := st.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Abort()
	tr := tar.NewReader(in)
	var index *v1.IndexManifest
	sawLayout := false
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("load: not a readable tar archive: %w", err)
		}
		name := strings.TrimPrefix(h.Name, "./")
		switch {
		case h.Typeflag == tar.TypeDir && (name == "blobs/" || name == "blobs/sha256/" || name == "blobs" || name == "blobs/sha256"):
		case h.Typeflag != tar.TypeReg:
			return nil, fmt.Errorf("load: archive entry %q is not a regular file: refusing the archive", h.Name)
		case name == "oci-layout":
			sawLayout = true
		case name == "index.json":
			b, err := io.ReadAll(io.LimitReader(tr, 16<<20))
			if err != nil {
				return nil, fmt.Errorf("load: index.json: %w", err)
			}
			if index, err = v1.ParseIndexManifest(bytes.NewReader(b)); err != nil {
				return nil, fmt.Errorf("load: index.json: %w", err)
			}
		case blobName.MatchString(name):
			d := v1.Hash{Algorithm: "sha256", Hex: blobName.FindStringSubmatch(name)[1]}
			if err := tx.PutBlob(d, h.Size, tr); err != nil {
				return nil, fmt.Errorf("load: %w: the archive is damaged or was tampered with", err)
			}
		default:
			return nil, fmt.Errorf("load: unexpected archive entry %q (want oci-layout, index.json, blobs/sha256/<digest>): refusing the archive", h.Name)
		}
	}
	if !sawLayout || index == nil {
		return nil, errors.New("load: not an OCI image layout archive (no oci-layout or index.json): make it with flotilla save")
	}
	tags := map[string]v1.Descriptor{}
	var out []store.Entry
	for _, d := range index.Manifests {
		if err := verify(tx, d, 0); err != nil {
			return nil, fmt.Errorf("load: image %s: %w", d.Digest, err)
		}
		n := d.Annotations[store.RefNameAnnotation]
		if n != "" {
			if _, err := store.NormalizeName(n); err != nil {
				return nil, fmt.Errorf("load: image %s: %w", d.Digest, err)
			}
		}
		tags[n] = v1.Descriptor{MediaType: d.MediaType, Size: d.Size, Digest: d.Digest, Platform: d.Platform}
		out = append(out, store.Entry{Name: n, Descriptor: d})
	}
	if err := tx.Commit(ctx, tags); err != nil {
		return nil, err
	}
	return out, nil
}

// verify checks that d and everything it references is present with the right size.
// Content was checked against digests as the blobs arrived.
func verify(tx *store.Txn, d v1.Descriptor, depth int) error {
	if depth > 8 {
		return fmt.Errorf("manifest %s: nesting too deep", d.Digest)
	}
	if !tx.Has(d.Digest) {
		return fmt.Errorf("archive lacks manifest %s", d.Digest)
	}
	raw, err := tx.ReadBlob(d.Digest)
	if err != nil {
		return err
	}
	if int64(len(raw)) != d.Size {
		return fmt.Errorf("manifest %s is %d bytes, its descriptor says %d", d.Digest, len(raw), d.Size)
	}
	m, err := parseManifest(raw)
	if err != nil {
		return fmt.Errorf("manifest %s: %w", d.Digest, err)
	}
	refs := append([]v1.Descriptor(nil), m.Layers...)
	if m.Config != nil {
		refs = append(refs, *m.Config)
	}
	for _, b := range refs {
		if !tx.Has(b.Digest) {
			return fmt.Errorf("archive lacks blob %s that manifest %s references", b.Digest, d.Digest)
		}
	}
	for _, c := range m.Manifests {
		if err := verify(tx, c, depth+1); err != nil {
			return err
		}
	}
	return nil
}
