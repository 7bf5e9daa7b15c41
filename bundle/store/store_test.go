package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

func hashOf(b []byte) v1.Hash {
	s := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func putRandom(t *testing.T, s *Store, tag string) (v1.Image, v1.Descriptor) {
	t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := s.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	d, err := tx.PutImage(context.Background(), img, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(context.Background(), map[string]v1.Descriptor{tag: d}); err != nil {
		t.Fatal(err)
	}
	return img, d
}

func TestPutResolveAndValidate(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img, d := putRandom(t, s, "reg.local/a")
	want, _ := img.Digest()
	for _, ref := range []string{"reg.local/a", "reg.local/a:latest", want.String(), want.Hex[:12], "reg.local/a@" + want.String()} {
		got, h, err := s.Resolve(ref)
		if err != nil {
			t.Fatalf("Resolve(%q): %v", ref, err)
		}
		if h != want {
			t.Errorf("Resolve(%q) = %s, want %s", ref, h, want)
		}
		if err := validate.Image(got); err != nil {
			t.Errorf("Resolve(%q): invalid image: %v", ref, err)
		}
	}
	if d.MediaType != types.DockerManifestSchema2 && d.MediaType != types.OCIManifestSchema1 {
		t.Errorf("descriptor media type %q", d.MediaType)
	}
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	rc, size, err := s.OpenBlob(ld)
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if ls, _ := layers[0].Size(); ls != size {
		t.Errorf("OpenBlob size %d, want %d", size, ls)
	}
	for _, bad := range []string{"nothere:1", "sha256:" + strings.Repeat("0", 64), "abcdef"} {
		if _, _, err := s.Resolve(bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("Resolve(%q) = %v, want ErrNotFound", bad, err)
		}
	}
	if _, _, err := s.OpenBlob(v1.Hash{Algorithm: "sha256", Hex: "../../etc/passwd"}); err == nil {
		t.Error("OpenBlob accepted a path")
	}
}

func TestPutBlobRejectsWrongContent(t *testing.T) {
	s, _ := Open(t.TempDir())
	tx, err := s.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Abort()
	good := []byte("good")
	err = tx.PutBlob(hashOf(good), -1, bytes.NewReader([]byte("evil")))
	var dm *DigestMismatchError
	if !errors.As(err, &dm) {
		t.Fatalf("PutBlob with wrong content = %v, want DigestMismatchError", err)
	}
	if tx.Has(hashOf(good)) || tx.Staged() != 0 {
		t.Error("a mismatched blob was staged")
	}
}

func TestAbortLeavesStoreUnchanged(t *testing.T) {
	s, _ := Open(t.TempDir())
	tx, _ := s.Begin(context.Background())
	blob := []byte("staged only")
	if err := tx.PutBlob(hashOf(blob), int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if !tx.Has(hashOf(blob)) || s.HasBlob(hashOf(blob)) {
		t.Fatal("staged blob must be visible to the txn only")
	}
	tx.Abort()
	if s.HasBlob(hashOf(blob)) {
		t.Fatal("aborted blob entered the store")
	}
	ents, _ := os.ReadDir(filepath.Join(s.Dir(), "flotilla", "tmp"))
	if len(ents) != 0 {
		t.Errorf("staging not cleaned: %v", ents)
	}
}

func TestTagUntagGC(t *testing.T) {
	ctx := context.Background()
	s, _ := Open(t.TempDir())
	a, ad := putRandom(t, s, "a:1")
	_, bd := putRandom(t, s, "b:1")
	// c shares a's layers and adds one.
	extra, _ := random.Layer(256, types.OCILayer)
	c, err := mutate.AppendLayers(a, extra)
	if err != nil {
		t.Fatal(err)
	}
	tx, _ := s.Begin(ctx)
	cd, err := tx.PutImage(ctx, c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx, map[string]v1.Descriptor{"c:1": cd}); err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(ctx, "a:2", ad); err != nil {
		t.Fatal(err)
	}
	list, _ := s.List()
	if len(list) != 4 {
		t.Fatalf("list = %+v", list)
	}
	// Removing one of two names deletes nothing.
	if _, err := s.Untag(ctx, "a:1"); err != nil {
		t.Fatal(err)
	}
	if res, err := s.GC(ctx); err != nil || res.Blobs != 0 {
		t.Fatalf("GC after untagging a shared image: %+v %v", res, err)
	}
	// Removing a by digest removes a:2; a's layers stay (c uses them), a's config goes.
	if _, err := s.Untag(ctx, ad.Digest.String()); err != nil {
		t.Fatal(err)
	}
	res, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Blobs != 2 { // a's manifest and config
		t.Errorf("GC removed %d blobs, want 2 (manifest and config of a)", res.Blobs)
	}
	al, _ := a.Layers()
	for _, l := range al {
		d, _ := l.Digest()
		if !s.HasBlob(d) {
			t.Errorf("layer %s shared with c was collected", d)
		}
	}
	for _, ref := range []string{"b:1", "c:1"} {
		img, _, err := s.Resolve(ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("%s damaged by GC: %v", ref, err)
		}
	}
	_ = bd
}

func TestConcurrentWritersKeepEveryTag(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	const n = 12
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := Open(dir) // separate handles, as separate processes would have
			if err != nil {
				errs <- err
				return
			}
			img, _ := random.Image(128, 1)
			tx, err := s.Begin(ctx)
			if err != nil {
				errs <- err
				return
			}
			d, err := tx.PutImage(ctx, img, nil)
			if err == nil {
				err = tx.Commit(ctx, map[string]v1.Descriptor{fmt.Sprintf("img:%d", i): d})
			}
			if err == nil && i%3 == 0 {
				_, err = s.GC(ctx)
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	s, _ := Open(dir)
	list, _ := s.List()
	if len(list) != n {
		t.Fatalf("%d tags survived concurrent writers, want %d", len(list), n)
	}
	for _, e := range list {
		img, _, err := s.Resolve(e.Name)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("%s: %v", e.Name, err)
		}
	}
}

func TestIndexPlatformSelection(t *testing.T) {
	ctx := context.Background()
	s, _ := Open(t.TempDir())
	var adds []mutate.IndexAddendum
	for _, arch := range []string{"amd64", "arm64"} {
		img, _ := random.Image(64, 1)
		cf, _ := img.ConfigFile()
		cf.OS, cf.Architecture = "linux", arch
		img, _ = mutate.ConfigFile(img, cf)
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	tx, _ := s.Begin(ctx)
	d, err := tx.PutIndex(ctx, idx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx, map[string]v1.Descriptor{"multi:1": d}); err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	for i, arch := range []string{"amd64", "arm64"} {
		_, h, err := s.ResolvePlatform("multi:1", &v1.Platform{OS: "linux", Architecture: arch})
		if err != nil || h != im.Manifests[i].Digest {
			t.Errorf("%s: %s %v, want %s", arch, h, err, im.Manifests[i].Digest)
		}
	}
	if _, _, err := s.ResolvePlatform("multi:1", &v1.Platform{OS: "linux", Architecture: "s390x"}); err == nil || !strings.Contains(err.Error(), "has no linux/s390x variant") {
		t.Errorf("missing platform: %v", err)
	}
	got, err := s.Index(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(got); err != nil {
		t.Errorf("stored index invalid: %v", err)
	}
}

func TestNormalizeName(t *testing.T) {
	cases := map[string]string{
		"hello":                    "hello:latest",
		"hello:1":                  "hello:1",
		"localhost:5000/hello":     "localhost:5000/hello:latest",
		"localhost:5000/hello:2.1": "localhost:5000/hello:2.1",
	}
	for in, want := range cases {
		if got, err := NormalizeName(in); err != nil || got != want {
			t.Errorf("NormalizeName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "UPPER:1", "a b"} {
		if _, err := NormalizeName(bad); err == nil {
			t.Errorf("NormalizeName(%q): want error", bad)
		}
	}
}
