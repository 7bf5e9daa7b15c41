package carry

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/bundle/progress"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

// Annotations of an OCI image layout's index.json entries that name an image.
const (
	// AnnotationRefName is the OCI layout's name of an entry: a tag ("3.10") as
	// docker save and ctr export write it, or a whole reference.
	AnnotationRefName = "org.opencontainers.image.ref.name"
	// AnnotationContainerdName is the whole reference containerd (ctr export) and
	// docker save write ("registry.k8s.io/pause:3.10").
	AnnotationContainerdName = "io.containerd.image.name"
)

// Bounds of a layout read from a tar: entries in the archive (directories too), and
// the size of index.json (MaxManifestSize, as for every manifest).
const maxLayoutTarEntries = 100000

// PullLayout stages into tx the image of the OCI image layout at layoutPath (a
// directory, or an uncompressed tar of one as docker save, ctr export and
// examples/kubernetes/tools/ociimage write) that ref names, byte for byte like Pull:
// every manifest and blob is checked against its digest while it is staged, so a
// layout whose content does not match its digests fails naming the blob. The entry of
// index.json is the one whose org.opencontainers.image.ref.name annotation is ref
// or ref's tag, or whose io.containerd.image.name is ref (compared normalized); with
// no such entry, the only entry there is. A ref with a digest must name that entry's
// digest. Nothing is committed.
func PullLayout(ctx context.Context, tx *store.Txn, layoutPath string, ref Ref, o Options) (v1.Descriptor, error) {
	src, err := openLayout(layoutPath)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer src.close()
	top, err := src.pick(ref)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("%s: %w", layoutPath, err)
	}
	p := &puller{ctx: ctx, tx: tx, src: src, rep: progress.OrNop(o.Progress)}
	raw, err := p.manifest(top)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("%s: %s: %w", layoutPath, ref.Name(), err)
	}
	desc, err := p.pull(top, raw, ref, o.Platform)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("%s: %s: %w", layoutPath, ref.Name(), err)
	}
	return desc, nil
}

// layoutFiles reads the regular files of a layout by their slash-separated names.
type layoutFiles interface {
	open(name string) (io.ReadCloser, int64, error)
	close() error
}

// layoutSource is a source reading an OCI image layout.
type layoutSource struct {
	files layoutFiles
	index v1.IndexManifest
}

func openLayout(p string) (*layoutSource, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("OCI image layout: %w", err)
	}
	var files layoutFiles
	switch {
	case fi.IsDir():
		root, err := os.OpenRoot(p)
		if err != nil {
			return nil, fmt.Errorf("OCI image layout: %w", err)
		}
		files = dirLayout{root}
	case fi.Mode().IsRegular():
		if files, err = openTarLayout(p); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("OCI image layout %s: not a directory or a tar file", p)
	}
	src := &layoutSource{files: files}
	raw, err := src.read("index.json", MaxManifestSize)
	if err == nil {
		err = jsonIndex(raw, &src.index)
	}
	if err != nil {
		files.close()
		return nil, fmt.Errorf("OCI image layout %s: index.json: %w", p, err)
	}
	return src, nil
}

func jsonIndex(raw []byte, im *v1.IndexManifest) error {
	parsed, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	*im = *parsed
	return nil
}

func (l *layoutSource) close() error { return l.files.close() }

// read returns a whole file of the layout, refusing one larger than limit.
func (l *layoutSource) read(name string, limit int64) ([]byte, error) {
	rc, size, err := l.files.open(name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if size > limit {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d it may have", name, size, limit)
	}
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is more than the %d bytes it may have", name, limit)
	}
	return b, nil
}

// blobName is where the layout keeps d: blobs/<algorithm>/<hex>. Only sha256
// digests (64 hex digits) are accepted, so the name has no path of its own.
func blobName(d v1.Descriptor) (string, error) {
	if d.Digest.Algorithm != "sha256" || len(d.Digest.Hex) != 64 || strings.Trim(d.Digest.Hex, "0123456789abcdef") != "" {
		return "", fmt.Errorf("digest %q: want sha256", d.Digest)
	}
	return "blobs/sha256/" + d.Digest.Hex, nil
}

func (l *layoutSource) manifest(d v1.Descriptor) ([]byte, error) {
	n, err := blobName(d)
	if err != nil {
		return nil, err
	}
	return l.read(n, MaxManifestSize)
}

func (l *layoutSource) blob(d v1.Descriptor) (io.ReadCloser, error) {
	n, err := blobName(d)
	if err != nil {
		return nil, err
	}
	rc, size, err := l.files.open(n)
	if err != nil {
		return nil, err
	}
	if d.Size >= 0 && size != d.Size {
		rc.Close()
		return nil, fmt.Errorf("%s is %d bytes, its descriptor says %d", n, size, d.Size)
	}
	return rc, nil
}

// pick chooses the index.json entry ref names (see PullLayout).
func (l *layoutSource) pick(ref Ref) (v1.Descriptor, error) {
	entries := l.index.Manifests
	var match []v1.Descriptor
	for _, e := range entries {
		if entryNames(e, ref) {
			match = append(match, e)
		}
	}
	switch {
	case len(match) == 0 && len(entries) == 1:
		match = entries
	case len(match) == 0:
		return v1.Descriptor{}, fmt.Errorf("no entry of index.json is named %s (%s or %s annotation), and there are %d: %s",
			ref.Name(), AnnotationRefName, AnnotationContainerdName, len(entries), describeEntries(entries))
	}
	for _, m := range match[1:] {
		if m.Digest != match[0].Digest {
			return v1.Descriptor{}, fmt.Errorf("%d entries of index.json are named %s, with different digests: %s", len(match), ref.Name(), describeEntries(match))
		}
	}
	e := match[0]
	if ref.Digest != "" && e.Digest.String() != ref.Digest {
		return v1.Descriptor{}, fmt.Errorf("%s names digest %s, the layout's entry is %s", ref.Name(), ref.Digest, describeEntries([]v1.Descriptor{e}))
	}
	return v1.Descriptor{MediaType: e.MediaType, Size: e.Size, Digest: e.Digest}, nil
}

// entryNames reports whether an index.json entry carries ref's name: its ref.name
// annotation is the reference or its tag, or its containerd name is the reference
// (both normalized). A digest reference also names the entry with that digest.
func entryNames(e v1.Descriptor, ref Ref) bool {
	if ref.Digest != "" && e.Digest.String() == ref.Digest {
		return true
	}
	same := func(s string) bool {
		r, err := ParseRef(s)
		return err == nil && r.Name() == ref.Name()
	}
	if n := e.Annotations[AnnotationRefName]; n != "" && ((ref.Tag != "" && n == ref.Tag) || same(n)) {
		return true
	}
	n := e.Annotations[AnnotationContainerdName]
	return n != "" && same(n)
}

// describeEntries lists entries for an error: digest and names, at most ten.
func describeEntries(entries []v1.Descriptor) string {
	var parts []string
	for i, e := range entries {
		if i == 10 {
			parts = append(parts, fmt.Sprintf("and %d more", len(entries)-i))
			break
		}
		s := e.Digest.String()
		var names []string
		for _, k := range []string{AnnotationContainerdName, AnnotationRefName} {
			if v := e.Annotations[k]; v != "" {
				names = append(names, fmt.Sprintf("%s=%q", k, v))
			}
		}
		if len(names) > 0 {
			s += " (" + strings.Join(names, ", ") + ")"
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}

// dirLayout reads a layout directory; os.Root keeps every name (and every symlink)
// inside it.
type dirLayout struct{ root *os.Root }

func (d dirLayout) open(name string) (io.ReadCloser, int64, error) {
	fi, err := d.root.Stat(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, 0, fmt.Errorf("%s: not in the layout", name)
		}
		return nil, 0, err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("%s: not a regular file", name)
	}
	f, err := d.root.Open(name)
	if err != nil {
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

func (d dirLayout) close() error { return d.root.Close() }

// tarLayout reads a layout from an uncompressed tar without unpacking it: one pass
// over the headers records where each regular file's data is.
type tarLayout struct {
	f     *os.File
	files map[string]tarFile
}

type tarFile struct {
	off, size int64
	regular   bool
}

func openTarLayout(p string) (*tarLayout, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("OCI image layout: %w", err)
	}
	t, err := scanTar(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("OCI image layout %s: %w", p, err)
	}
	return t, nil
}

func scanTar(f *os.File) (*tarLayout, error) {
	var magic [2]byte
	if n, _ := f.ReadAt(magic[:], 0); n == 2 && magic == [2]byte{0x1f, 0x8b} {
		return nil, errors.New("a gzip-compressed tar: flotilla reads uncompressed layout tars (gunzip it)")
	}
	t := &tarLayout{f: f, files: map[string]tarFile{}}
	tr := tar.NewReader(f)
	for n := 0; ; n++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read tar: %w", err)
		}
		if n >= maxLayoutTarEntries {
			return nil, fmt.Errorf("more than %d entries in the tar", maxLayoutTarEntries)
		}
		name, err := tarName(h.Name)
		if err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeDir {
			continue
		}
		if _, dup := t.files[name]; dup {
			return nil, fmt.Errorf("tar entry %q is in the tar twice", h.Name)
		}
		tf := tarFile{regular: h.Typeflag == tar.TypeReg, size: h.Size}
		if tf.regular {
			off, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				return nil, err
			}
			tf.off = off
		}
		t.files[name] = tf
	}
	return t, nil
}

// tarName cleans a tar entry's name ("./index.json" is "index.json") and refuses
// names that leave the layout: absolute, or with a ".." component.
func tarName(n string) (string, error) {
	if strings.HasPrefix(n, "/") || strings.Contains(n, "\\") {
		return "", fmt.Errorf("tar entry %q: an absolute or backslashed name is refused", n)
	}
	for _, c := range strings.Split(n, "/") {
		if c == ".." {
			return "", fmt.Errorf("tar entry %q: a name with .. is refused", n)
		}
	}
	return path.Clean(n), nil
}

func (t *tarLayout) open(name string) (io.ReadCloser, int64, error) {
	tf, ok := t.files[name]
	if !ok {
		return nil, 0, fmt.Errorf("%s: not in the layout", name)
	}
	if !tf.regular {
		return nil, 0, fmt.Errorf("%s: not a regular file in the tar", name)
	}
	return io.NopCloser(io.NewSectionReader(t.f, tf.off, tf.size)), tf.size, nil
}

func (t *tarLayout) close() error { return t.f.Close() }
