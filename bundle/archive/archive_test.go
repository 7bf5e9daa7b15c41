package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func buildInto(t *testing.T, st *store.Store, tag, content, platforms string) {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "Kubefile"), []byte("FROM scratch\nCOPY f /opt/f\nON node COPY g.tmpl /etc/g\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "f"), []byte(content), 0o644)
	os.WriteFile(filepath.Join(dir, "g.tmpl"), []byte("{{ .Node.Name }}"), 0o644)
	plats, _ := build.ParsePlatforms(platforms)
	if _, err := build.Build(context.Background(), st, build.Options{ContextDir: dir, Tags: []string{tag}, Platforms: plats}); err != nil {
		t.Fatal(err)
	}
}

// contents maps every file of a store (except locks and bookkeeping) to its bytes.
func contents(t *testing.T, st *store.Store) map[string]string {
	out := map[string]string{}
	filepath.Walk(st.Dir(), func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || strings.Contains(p, "/flotilla/") {
			return err
		}
		b, _ := os.ReadFile(p)
		name := strings.TrimPrefix(p, st.Dir())
		if name == "/index.json" {
			b = sortedIndex(t, b)
		}
		out[name] = string(b)
		return nil
	})
	return out
}

// sortedIndex orders an index.json's entries by reference name: the order of
// entries carries no meaning, their content does.
func sortedIndex(t *testing.T, raw []byte) []byte {
	var im v1.IndexManifest
	if err := json.Unmarshal(raw, &im); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	slices.SortFunc(im.Manifests, func(a, b v1.Descriptor) int {
		return strings.Compare(a.Annotations[store.RefNameAnnotation], b.Annotations[store.RefNameAnnotation])
	})
	out, _ := json.MarshalIndent(im, "", "  ")
	return out
}

func TestSaveLoadRoundTrip(t *testing.T) {
	ctx := context.Background()
	src := openStore(t)
	buildInto(t, src, "one:1", "one", "")
	buildInto(t, src, "multi:1", "two", "linux/amd64,linux/arm64")
	for _, zstd := range []bool{false, true} {
		var buf bytes.Buffer
		if err := Save(ctx, src, &buf, []string{"one:1", "multi:1"}, SaveOptions{Zstd: zstd}); err != nil {
			t.Fatal(err)
		}
		if zstd != bytes.HasPrefix(buf.Bytes(), []byte{0x28, 0xb5, 0x2f, 0xfd}) {
			t.Errorf("zstd=%v but archive starts with % x", zstd, buf.Bytes()[:4])
		}
		dst := openStore(t)
		loaded, err := Load(ctx, dst, &buf, LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(loaded) != 2 {
			t.Fatalf("loaded %+v", loaded)
		}
		for _, ref := range []string{"one:1", "multi:1"} {
			a, _ := src.Get(ref)
			b, err := dst.Get(ref)
			if err != nil || a.Digest != b.Digest {
				t.Errorf("%s: loaded %s (%v), saved %s", ref, b.Digest, err, a.Digest)
			}
		}
		if a, b := contents(t, src), contents(t, dst); !reflect.DeepEqual(a, b) {
			for k, v := range a {
				if b[k] != v {
					t.Errorf("zstd=%v: %s differs after load:\n%s\nvs\n%s", zstd, k, v, b[k])
				}
			}
			for k := range b {
				if _, ok := a[k]; !ok {
					t.Errorf("zstd=%v: %s appeared after load", zstd, k)
				}
			}
		}
	}
}

func TestSaveIsDeterministic(t *testing.T) {
	src := openStore(t)
	buildInto(t, src, "one:1", "one", "")
	var a, b bytes.Buffer
	Save(context.Background(), src, &a, []string{"one:1"}, SaveOptions{})
	time.Sleep(10 * time.Millisecond) // the clock must move: the two saves must still be byte-identical
	Save(context.Background(), src, &b, []string{"one:1"}, SaveOptions{})
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two saves of the same image differ")
	}
}

// rewrite copies a tar, letting edit change each entry's header and content.
func rewrite(t *testing.T, in []byte, edit func(h *tar.Header, body []byte) []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	tr, tw := tar.NewReader(bytes.NewReader(in)), tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		body = edit(h, body)
		if body == nil {
			continue
		}
		h.Size = int64(len(body))
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		tw.WriteHeader(h)
		tw.Write(body)
	}
	tw.Close()
	return out.Bytes()
}

func TestLoadRefusesBadArchives(t *testing.T) {
	ctx := context.Background()
	src := openStore(t)
	buildInto(t, src, "one:1", strings.Repeat("payload ", 1000), "")
	var buf bytes.Buffer
	if err := Save(ctx, src, &buf, []string{"one:1"}, SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	img, _, _ := src.Resolve("one:1")
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	layerName := "blobs/sha256/" + ld.Hex
	cases := []struct {
		name string
		edit func(h *tar.Header, body []byte) []byte
		want string
	}{
		{"flipped byte in a layer", func(h *tar.Header, b []byte) []byte {
			if h.Name == layerName {
				b[len(b)/2] ^= 1
			}
			return b
		}, "digest mismatch"},
		{"layer replaced by other bytes", func(h *tar.Header, b []byte) []byte {
			if h.Name == layerName {
				return []byte("evil")
			}
			return b
		}, "digest mismatch"},
		{"layer missing", func(h *tar.Header, b []byte) []byte {
			if h.Name == layerName {
				return nil
			}
			return b
		}, "archive lacks blob"},
		{"path escape", func(h *tar.Header, b []byte) []byte {
			if h.Name == layerName {
				h.Name = "../../etc/evil"
			}
			return b
		}, "unexpected archive entry"},
		{"symlink entry", func(h *tar.Header, b []byte) []byte {
			if h.Name == "oci-layout" {
				h.Typeflag, h.Linkname = tar.TypeSymlink, "/etc/passwd"
				return []byte{}
			}
			return b
		}, "not a regular file"},
		{"no index", func(h *tar.Header, b []byte) []byte {
			if h.Name == "index.json" {
				return nil
			}
			return b
		}, "not an OCI image layout archive"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dst := openStore(t)
			buildInto(t, dst, "already:1", "present", "")
			before := contents(t, dst)
			_, err := Load(ctx, dst, bytes.NewReader(rewrite(t, buf.Bytes(), c.edit)), LoadOptions{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("load: %v, want %q", err, c.want)
			}
			if c.want == "digest mismatch" {
				var dm *store.DigestMismatchError
				if !errors.As(err, &dm) {
					t.Errorf("error %v is not a DigestMismatchError", err)
				}
			}
			if after := contents(t, dst); !reflect.DeepEqual(before, after) {
				t.Error("a refused archive changed the store")
			}
		})
	}
	if _, err := Load(ctx, openStore(t), strings.NewReader("not a tar at all, just text that is long enough to fail"), LoadOptions{}); err == nil {
		t.Error("load of garbage: want error")
	}
}
