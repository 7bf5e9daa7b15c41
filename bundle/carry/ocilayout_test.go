package carry_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/carry"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

// layoutImage is one index.json entry of a test layout.
type layoutImage struct {
	img         v1.Image          // or idx
	idx         v1.ImageIndex     // a multi-arch index
	annotations map[string]string // of the entry
}

// ociImage returns a one-layer OCI image with a random layer of n bytes.
func ociImage(t *testing.T, n int64) v1.Image {
	t.Helper()
	l, err := random.Layer(n, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: l, MediaType: types.OCILayer})
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// writeLayout writes an OCI image layout directory holding images.
func writeLayout(t *testing.T, dir string, images ...layoutImage) {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, li := range images {
		if li.idx != nil {
			err = p.AppendIndex(li.idx, layout.WithAnnotations(li.annotations))
		} else {
			err = p.AppendImage(li.img, layout.WithAnnotations(li.annotations))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// tarLayout writes dir as a tar (names with a "./" prefix, as tar -C dir . writes
// them, directories included) plus extra entries.
func tarLayout(t *testing.T, dir, out string, extra map[string]string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		name := "./" + filepath.ToSlash(rel)
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755})
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b))}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for n, c := range extra {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(c))}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(c))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func pullLayout(t *testing.T, st *store.Store, path, ref string, o carry.Options) (v1.Descriptor, error) {
	t.Helper()
	r, err := carry.ParseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := st.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Abort()
	d, err := carry.PullLayout(context.Background(), tx, path, r, o)
	if err != nil {
		return d, err
	}
	return d, tx.Commit(context.Background(), nil)
}

func digestOf(t *testing.T, x interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	d, err := x.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestPullLayout(t *testing.T) {
	base := t.TempDir()
	pause, dns, other := ociImage(t, 2000), ociImage(t, 3000), ociImage(t, 1000)
	pauseD, dnsD := digestOf(t, pause), digestOf(t, dns)
	amd, arm := ociImage(t, 1500), ociImage(t, 1600)
	multi := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	multiD, amdD := digestOf(t, multi), digestOf(t, amd)

	// two: ociimage's and ctr export's annotations; both tags and whole names.
	two := filepath.Join(base, "two")
	writeLayout(t, two,
		layoutImage{img: pause, annotations: map[string]string{carry.AnnotationContainerdName: "registry.k8s.io/pause:3.10", carry.AnnotationRefName: "3.10"}},
		layoutImage{img: dns, annotations: map[string]string{carry.AnnotationContainerdName: "flotilla.local/k8s-dns:v1"}})
	tarLayout(t, two, filepath.Join(base, "two.tar"), nil)
	// one: a single entry without a name.
	one := filepath.Join(base, "one")
	writeLayout(t, one, layoutImage{img: dns})
	tarLayout(t, one, filepath.Join(base, "one.tar"), nil)
	// anon: two entries, no names.
	anon := filepath.Join(base, "anon")
	writeLayout(t, anon, layoutImage{img: pause}, layoutImage{img: other})
	// full: the ref.name annotation is a whole reference (oras, skopeo).
	full := filepath.Join(base, "full")
	writeLayout(t, full, layoutImage{img: other}, layoutImage{img: pause, annotations: map[string]string{carry.AnnotationRefName: "docker.io/library/busybox:1.36"}})
	// multi: a two-platform index.
	multiDir := filepath.Join(base, "multi")
	writeLayout(t, multiDir, layoutImage{idx: multi, annotations: map[string]string{carry.AnnotationRefName: "v3"}})
	// tampered: pause's layer changed (same size), in a directory and a tar.
	tampered := filepath.Join(base, "tampered")
	writeLayout(t, tampered, layoutImage{img: pause})
	ls, _ := pause.Layers()
	layerD := digestOf(t, ls[0])
	lp := filepath.Join(tampered, "blobs", "sha256", layerD.Hex)
	b, err := os.ReadFile(lp)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(lp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	tarLayout(t, tampered, filepath.Join(base, "tampered.tar"), nil)
	// missingblob: the layer is not there.
	missing := filepath.Join(base, "missingblob")
	writeLayout(t, missing, layoutImage{img: pause})
	os.Remove(filepath.Join(missing, "blobs", "sha256", layerD.Hex))
	// traversal and other bad tars.
	tarLayout(t, one, filepath.Join(base, "dotdot.tar"), map[string]string{"blobs/../../etc/passwd": "x"})
	tarLayout(t, one, filepath.Join(base, "abs.tar"), map[string]string{"/etc/passwd": "x"})
	tarLayout(t, one, filepath.Join(base, "dup.tar"), map[string]string{"index.json": "{}"})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	raw, _ := os.ReadFile(filepath.Join(base, "one.tar"))
	zw.Write(raw)
	zw.Close()
	os.WriteFile(filepath.Join(base, "one.tar.gz"), gz.Bytes(), 0o644)
	os.WriteFile(filepath.Join(base, "notatar"), []byte("hello"), 0o644)
	os.MkdirAll(filepath.Join(base, "empty"), 0o755)

	amd64 := &v1.Platform{OS: "linux", Architecture: "amd64"}
	cases := []struct {
		name, path, ref string
		platform        *v1.Platform
		want            v1.Hash
		err             string // substring of the error; empty: success
	}{
		{name: "dir, tag annotation", path: "two", ref: "registry.k8s.io/pause:3.10", want: pauseD},
		{name: "dir, containerd name", path: "two", ref: "flotilla.local/k8s-dns:v1", want: dnsD},
		{name: "tar, containerd name", path: "two.tar", ref: "registry.k8s.io/pause:3.10", want: pauseD},
		{name: "tar, normalized names match", path: "two.tar", ref: "flotilla.local/k8s-dns:v1@" + dnsD.String(), want: dnsD},
		{name: "single entry without a name", path: "one", ref: "registry.example/anything:1", want: dnsD},
		{name: "single entry in a tar", path: "one.tar", ref: "registry.example/anything:1", want: dnsD},
		{name: "whole reference in ref.name", path: "full", ref: "busybox:1.36", want: pauseD},
		{name: "digest picks the entry", path: "anon", ref: "x.io/a@" + pauseD.String(), want: pauseD},
		{name: "index kept whole", path: "multi", ref: "x.io/web:v3", want: multiD},
		{name: "index narrowed to a platform", path: "multi", ref: "x.io/web:v3", platform: amd64, want: amdD},
		{name: "ambiguous entries", path: "anon", ref: "x.io/a:1",
			err: "no entry of index.json is named x.io/a:1 (org.opencontainers.image.ref.name or io.containerd.image.name annotation), and there are 2: " + pauseD.String() + "; " + digestOf(t, other).String()},
		{name: "no entry of that name", path: "two", ref: "registry.k8s.io/pause:3.9",
			err: `there are 2: ` + pauseD.String() + ` (io.containerd.image.name="registry.k8s.io/pause:3.10", org.opencontainers.image.ref.name="3.10"); ` + dnsD.String()},
		{name: "digest mismatch", path: "two", ref: "registry.k8s.io/pause:3.10@" + dnsD.String(), err: "2 entries of index.json are named"},
		{name: "digest of the only entry differs", path: "one", ref: "x.io/a:1@" + pauseD.String(), err: "names digest " + pauseD.String() + ", the layout's entry is " + dnsD.String()},
		{name: "tampered blob in a directory", path: "tampered", ref: "x.io/a:1", err: "blob " + layerD.String()},
		{name: "tampered blob in a tar", path: "tampered.tar", ref: "x.io/a:1", err: "blob " + layerD.String()},
		{name: "blob missing", path: "missingblob", ref: "x.io/a:1", err: "blobs/sha256/" + layerD.Hex + ": not in the layout"},
		{name: "traversal in a tar", path: "dotdot.tar", ref: "x.io/a:1", err: `tar entry "blobs/../../etc/passwd": a name with .. is refused`},
		{name: "absolute name in a tar", path: "abs.tar", ref: "x.io/a:1", err: `tar entry "/etc/passwd": an absolute`},
		{name: "a name twice in a tar", path: "dup.tar", ref: "x.io/a:1", err: `tar entry "index.json" is in the tar twice`},
		{name: "gzip", path: "one.tar.gz", ref: "x.io/a:1", err: "gzip-compressed tar"},
		{name: "not a tar", path: "notatar", ref: "x.io/a:1", err: "notatar: read tar: unexpected EOF"},
		{name: "no index.json", path: "empty", ref: "x.io/a:1", err: "index.json: not in the layout"},
		{name: "missing path", path: "nope.tar", ref: "x.io/a:1", err: "nope.tar: no such file or directory"},
		{name: "platform the index lacks", path: "multi", ref: "x.io/web:v3", platform: &v1.Platform{OS: "linux", Architecture: "s390x"}, err: "no linux/s390x manifest"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := openStore(t)
			d, err := pullLayout(t, st, filepath.Join(base, c.path), c.ref, carry.Options{Platform: c.platform})
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want %q", err, c.err)
				}
				if n := blobCount(t, st); n != 0 {
					t.Errorf("%d blobs stored after a failed pull", n)
				}
				if strings.HasPrefix(c.name, "tampered") {
					var dm *store.DigestMismatchError
					if !errors.As(err, &dm) {
						t.Errorf("error %v is not a digest mismatch", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Digest != c.want {
				t.Fatalf("pulled %s, want %s", d.Digest, c.want)
			}
			// Round trip: the store holds the layout's manifests and blobs byte for
			// byte: every digest the layout names is there, and the store's content
			// hashes to it.
			cl, err := carry.Walk(carry.ReadBlob(func(h v1.Hash) ([]byte, error) { return os.ReadFile(filepath.Join(st.Dir(), "blobs", "sha256", h.Hex)) }), d, c.platform)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range append(cl.Manifests, cl.Blobs...) {
				if !st.HasBlob(x.Digest) {
					t.Errorf("store lacks %s", x.Digest)
					continue
				}
				stored, _ := os.ReadFile(filepath.Join(st.Dir(), "blobs", "sha256", x.Digest.Hex))
				inLayout, err := os.ReadFile(filepath.Join(base, strings.TrimSuffix(c.path, ".tar"), "blobs", "sha256", x.Digest.Hex))
				if err != nil || !bytes.Equal(stored, inLayout) {
					t.Errorf("blob %s: stored bytes differ from the layout's (%v)", x.Digest, err)
				}
			}
			if n := blobCount(t, st); n != len(cl.Manifests)+len(cl.Blobs) {
				t.Errorf("store holds %d blobs, the image has %d", n, len(cl.Manifests)+len(cl.Blobs))
			}
		})
	}
}

// A manifest larger than MaxManifestSize in a layout is refused before it is read.
func TestPullLayoutBoundsManifests(t *testing.T) {
	dir := t.TempDir()
	writeLayout(t, dir, layoutImage{img: ociImage(t, 100)})
	big := bytes.Repeat([]byte(" "), carry.MaxManifestSize+1)
	os.WriteFile(filepath.Join(dir, "index.json"), big, 0o644)
	if _, err := pullLayout(t, openStore(t), dir, "x.io/a:1", carry.Options{}); err == nil || !strings.Contains(err.Error(), "index.json is 4194305 bytes, more than the 4194304") {
		t.Errorf("error %v", err)
	}
}
