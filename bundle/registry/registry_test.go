package registry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/internal/registrytest"
)

func openStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// buildImage builds a three-layer image (two COPY, one ON role COPY) into st.
func buildImage(t testing.TB, st *store.Store, tag string, platforms string) v1.Descriptor {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"Kubefile": "FROM scratch\nCOPY a /opt/a\nCOPY b /opt/b\nON master COPY c /opt/c\nON master RUN cat /opt/c\n",
		"a":        strings.Repeat("a", 100<<10), "b": "b", "c": "c",
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	plats, _ := build.ParsePlatforms(platforms)
	res, err := build.Build(context.Background(), st, build.Options{ContextDir: dir, Tags: []string{tag}, Platforms: plats})
	if err != nil {
		t.Fatal(err)
	}
	return res.Descriptor
}

// blobSet lists every blob digest the store holds.
func blobSet(t testing.TB, st *store.Store) []string {
	ents, err := os.ReadDir(filepath.Join(st.Dir(), "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestPushRmiPullRoundTrip(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Start(t, registrytest.Options{})
	for _, platforms := range []string{"", "linux/amd64,linux/arm64"} {
		t.Run("platforms="+platforms, func(t *testing.T) {
			st := openStore(t)
			ref := reg.Host + "/flotilla/roundtrip:" + map[string]string{"": "single", "linux/amd64,linux/arm64": "multi"}[platforms]
			built := buildImage(t, st, ref, platforms)
			before := blobSet(t, st)
			if _, err := Push(ctx, st, ref, "", Options{Insecure: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Untag(ctx, ref); err != nil {
				t.Fatal(err)
			}
			if _, err := st.GC(ctx); err != nil {
				t.Fatal(err)
			}
			if left := blobSet(t, st); len(left) != 0 {
				t.Fatalf("rmi left %d blobs", len(left))
			}
			pulled, err := Pull(ctx, st, ref, Options{Insecure: true})
			if err != nil {
				t.Fatal(err)
			}
			if pulled.Digest != built.Digest {
				t.Fatalf("pulled %s, built %s", pulled.Digest, built.Digest)
			}
			if after := blobSet(t, st); !reflect.DeepEqual(before, after) {
				t.Errorf("blobs after pull differ from blobs after build:\n%v\n%v", before, after)
			}
			img, _, err := st.Resolve(ref)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate.Image(img); err != nil {
				t.Fatal(err)
			}
			if p, err := store.Plan(img); err != nil || len(p.Layers) != 3 || p.Layers[2].Role != "master" {
				t.Fatalf("plan after pull: %+v %v", p, err)
			}
		})
	}
}

func TestSecondPushUploadsNoBlob(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Start(t, registrytest.Options{})
	st := openStore(t)
	ref := reg.Host + "/flotilla/twice:1"
	buildImage(t, st, ref, "")
	if _, err := Push(ctx, st, ref, "", Options{Insecure: true}); err != nil {
		t.Fatal(err)
	}
	if n := reg.Count("upload"); n == 0 {
		t.Fatal("first push made no upload request: the counting proxy sees nothing")
	}
	reg.Reset()
	if _, err := Push(ctx, st, ref, "", Options{Insecure: true}); err != nil {
		t.Fatal(err)
	}
	if n := reg.Count("upload"); n != 0 {
		t.Errorf("second push made %d blob upload requests, want 0", n)
	}
	if reg.Count("blob-head")+reg.Count("manifest-get") == 0 {
		t.Error("second push asked the registry nothing: the proxy is not in the path")
	}
	// A second tag of the same image in the same repository uploads no blob either.
	reg.Reset()
	if _, err := Push(ctx, st, ref, reg.Host+"/flotilla/twice:2", Options{Insecure: true}); err != nil {
		t.Fatal(err)
	}
	if n := reg.Count("upload"); n != 0 {
		t.Errorf("push under a new tag made %d uploads, want 0", n)
	}
}

func TestPullRefusesTamperedBlob(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Start(t, registrytest.Options{})
	src := openStore(t)
	ref := reg.Host + "/flotilla/tampered:1"
	buildImage(t, src, ref, "")
	if _, err := Push(ctx, src, ref, "", Options{Insecure: true}); err != nil {
		t.Fatal(err)
	}
	img, _, _ := src.Resolve(ref)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	data := reg.BlobData(d.String())
	b, err := os.ReadFile(data)
	if err != nil {
		t.Fatalf("registry blob file: %v", err)
	}
	b[len(b)/2] ^= 0xff // same size, wrong content
	if err := os.WriteFile(data, b, 0o644); err != nil {
		t.Fatal(err)
	}
	dst := openStore(t)
	_, err = Pull(ctx, dst, ref, Options{Insecure: true})
	var dm *store.DigestMismatchError
	if !errors.As(err, &dm) || !strings.Contains(err.Error(), "digest mismatch") {
		t.Fatalf("pull of a tampered blob: %v, want a digest mismatch", err)
	}
	if left := blobSet(t, dst); len(left) != 0 {
		t.Errorf("failed pull left %d blobs in the store", len(left))
	}
	if list, _ := dst.List(); len(list) != 0 {
		t.Errorf("failed pull tagged %+v", list)
	}
}

func TestPullMissingImage(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	_, err := Pull(context.Background(), openStore(t), reg.Host+"/nothing/here:1", Options{Insecure: true})
	if err == nil || !strings.Contains(err.Error(), "check the name and tag") {
		t.Fatalf("pull of a missing image: %v", err)
	}
}

func BenchmarkSecondPush(b *testing.B) {
	ctx := context.Background()
	reg := registrytest.Start(b, registrytest.Options{})
	st := openStore(b)
	ref := reg.Host + "/flotilla/bench:1"
	buildImage(b, st, ref, "")
	if _, err := Push(ctx, st, ref, "", Options{Insecure: true}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Push(ctx, st, ref, "", Options{Insecure: true}); err != nil {
			b.Fatal(err)
		}
	}
}
