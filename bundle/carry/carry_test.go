package carry_test

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/carry"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

func TestParseRef(t *testing.T) {
	const dg = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cases := []struct{ in, want, repo string }{
		{"nginx", "docker.io/library/nginx:latest", "docker.io/library/nginx"},
		{"nginx:1.27", "docker.io/library/nginx:1.27", "docker.io/library/nginx"},
		{"docker.io/nginx:1.27", "docker.io/library/nginx:1.27", "docker.io/library/nginx"},
		{"index.docker.io/bitnami/redis:7", "docker.io/bitnami/redis:7", "docker.io/bitnami/redis"},
		{"registry.local:5000/a/b/c:v1", "registry.local:5000/a/b/c:v1", "registry.local:5000/a/b/c"},
		{"quay.io/x/y@" + dg, "quay.io/x/y@" + dg, "quay.io/x/y"},
		{"nginx:1.27@" + dg, "docker.io/library/nginx:1.27@" + dg, "docker.io/library/nginx"},
	}
	for _, c := range cases {
		r, err := carry.ParseRef(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if r.Name() != c.want || r.Repository() != c.repo {
			t.Errorf("%s: name %s repo %s, want %s %s", c.in, r.Name(), r.Repository(), c.want, c.repo)
		}
	}
	for _, bad := range []string{"", "UPPER/case", "a::b", "x@sha256:short", "x@md5:0123456789abcdef0123456789abcdef", "docker.io/../../etc:1", "r.io/a//b:1", "r.io/a/./b:1"} {
		if _, err := carry.ParseRef(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// pullAll pulls refs into one transaction and commits it.
func pullAll(t *testing.T, st *store.Store, o carry.Options, refs ...string) ([]v1.Descriptor, error) {
	t.Helper()
	tx, err := st.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Abort()
	var out []v1.Descriptor
	for _, s := range refs {
		r, err := carry.ParseRef(s)
		if err != nil {
			t.Fatal(err)
		}
		d, err := carry.Pull(context.Background(), tx, r, o)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, tx.Commit(context.Background(), nil)
}

func blobCount(t *testing.T, st *store.Store) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(st.Dir(), "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestPullKeepsEveryDigestAndStoresSharedBlobsOnce(t *testing.T) {
	u := newUpstream(t)
	st := openStore(t)
	descs, err := pullAll(t, st, carry.Options{}, u.app, u.tool, u.multi, u.multiByDigest)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		d  v1.Hash
		mt types.MediaType
	}{{u.appDigest, types.DockerManifestSchema2}, {u.toolDigest, types.OCIManifestSchema1}, {u.multiDigest, types.OCIImageIndex}, {u.multiDigest, types.OCIImageIndex}}
	for i, w := range want {
		if descs[i].Digest != w.d || descs[i].MediaType != w.mt {
			t.Errorf("image %d: %s %s, upstream serves %s %s", i, descs[i].Digest, descs[i].MediaType, w.d, w.mt)
		}
	}
	// app: manifest, config, 2 layers; tool: manifest, config, 1 own layer (shared
	// stored once); index: index + 2 x (manifest, config, layer).
	if n := blobCount(t, st); n != 4+3+7 {
		t.Errorf("store holds %d blobs, want 14 (the shared layer once)", n)
	}
	if !st.HasBlob(u.amd64Digest) || !st.HasBlob(u.arm64Digest) || !st.HasBlob(u.shared) {
		t.Error("a platform manifest or the shared layer is missing")
	}
	// A second pull fetches no blob again.
	u.reg.Reset()
	if _, err := pullAll(t, st, carry.Options{}, u.app, u.tool, u.multi); err != nil {
		t.Fatal(err)
	}
	if n := u.reg.Count("blob-get"); n != 0 {
		t.Errorf("second pull fetched %d blobs, want 0", n)
	}
}

func TestPullNarrowsToOnePlatform(t *testing.T) {
	u := newUpstream(t)
	st := openStore(t)
	o := carry.Options{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}
	descs, err := pullAll(t, st, o, u.multi, u.multiByDigest)
	if err != nil {
		t.Fatal(err)
	}
	if descs[0].Digest != u.arm64Digest || descs[0].MediaType != types.OCIManifestSchema1 {
		t.Errorf("narrowed tag gives %s %s, want the arm64 manifest %s", descs[0].Digest, descs[0].MediaType, u.arm64Digest)
	}
	if descs[1].Digest != u.multiDigest {
		t.Errorf("a digest reference must keep its index: got %s", descs[1].Digest)
	}
	o.Platform = &v1.Platform{OS: "linux", Architecture: "s390x"}
	if _, err := pullAll(t, openStore(t), o, u.multi); err == nil || !strings.Contains(err.Error(), "no linux/s390x manifest") {
		t.Errorf("narrowing to a platform the index lacks: %v", err)
	}
}

func TestPullRefusesBadInput(t *testing.T) {
	u := newUpstream(t)
	t.Run("ref not in the registry", func(t *testing.T) {
		st := openStore(t)
		_, err := pullAll(t, st, carry.Options{}, u.reg.Host+"/library/app:nope")
		if err == nil || !strings.Contains(err.Error(), "pull "+u.reg.Host+"/library/app:nope") || !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") {
			t.Fatalf("error %v: want the ref and the registry's error", err)
		}
		if n := blobCount(t, st); n != 0 {
			t.Errorf("%d blobs stored", n)
		}
	})
	t.Run("registry down", func(t *testing.T) {
		_, err := pullAll(t, openStore(t), carry.Options{}, "127.0.0.1:1/x/y:1")
		if err == nil || !strings.Contains(err.Error(), "pull 127.0.0.1:1/x/y:1") || !strings.Contains(err.Error(), "connection refused") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("blob whose content does not match its digest", func(t *testing.T) {
		data := u.reg.BlobData(u.shared.String())
		orig, err := os.ReadFile(data)
		if err != nil {
			t.Fatal(err)
		}
		bad := append([]byte(nil), orig...)
		bad[len(bad)/2] ^= 0xff
		if err := os.WriteFile(data, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(data, orig, 0o644)
		st := openStore(t)
		_, err = pullAll(t, st, carry.Options{}, u.app)
		var dm *store.DigestMismatchError
		if !errors.As(err, &dm) || !strings.Contains(err.Error(), u.shared.String()) {
			t.Fatalf("error %v: want a digest mismatch naming %s", err, u.shared)
		}
		if n := blobCount(t, st); n != 0 {
			t.Errorf("%d blobs stored after a failed pull", n)
		}
	})
	t.Run("unknown media type", func(t *testing.T) {
		srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
		defer srv.Close()
		host := strings.TrimPrefix(srv.URL, "http://")
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/v2/odd/thing/manifests/1", strings.NewReader(`{"schemaVersion":2,"mediaType":"application/vnd.example.thing+json"}`))
		req.Header.Set("Content-Type", "application/vnd.example.thing+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("put odd manifest: %v %v", err, resp)
		}
		st := openStore(t)
		_, err = pullAll(t, st, carry.Options{}, host+"/odd/thing:1")
		if err == nil || !strings.Contains(err.Error(), `unknown media type "application/vnd.example.thing+json"`) {
			t.Fatalf("error %v", err)
		}
		if n := blobCount(t, st); n != 0 {
			t.Errorf("%d blobs stored", n)
		}
	})
}

func TestWalk(t *testing.T) {
	u := newUpstream(t)
	st := openStore(t)
	descs, err := pullAll(t, st, carry.Options{}, u.multi, u.app)
	if err != nil {
		t.Fatal(err)
	}
	read := func(h v1.Hash) ([]byte, error) {
		rc, _, err := st.OpenBlob(h)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		b := new(strings.Builder)
		_, err = (&limitedCopy{b}).copy(rc)
		return []byte(b.String()), err
	}
	all, err := carry.Walk(carry.ReadBlob(read), descs[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Manifests) != 3 || len(all.Blobs) != 4 {
		t.Errorf("whole index: %d manifests %d blobs, want 3 and 4", len(all.Manifests), len(all.Blobs))
	}
	arm, err := carry.Walk(carry.ReadBlob(read), descs[0], &v1.Platform{OS: "linux", Architecture: "arm64"})
	if err != nil {
		t.Fatal(err)
	}
	if len(arm.Manifests) != 2 || arm.Manifests[0].Digest != u.multiDigest || arm.Manifests[1].Digest != u.arm64Digest || len(arm.Blobs) != 2 {
		t.Errorf("arm64 closure = %+v", arm)
	}
	if _, err := carry.Walk(carry.ReadBlob(read), descs[0], &v1.Platform{OS: "windows", Architecture: "amd64"}); err == nil {
		t.Error("a platform the index lacks walked without error")
	}
	// A reader that serves other bytes than the digest says is caught.
	tampered := func(d v1.Descriptor) ([]byte, error) {
		b, err := read(d.Digest)
		return append(b, ' '), err
	}
	if _, err := carry.Walk(tampered, descs[1], nil); err == nil || !strings.Contains(err.Error(), "content digest is") {
		t.Errorf("tampered manifest: %v", err)
	}
	// A child with an unknown media type is refused.
	fake := v1.Descriptor{MediaType: "application/vnd.docker.distribution.manifest.v1+prettyjws", Digest: u.appDigest}
	if _, err := carry.Walk(carry.ReadBlob(read), fake, nil); err == nil || !strings.Contains(err.Error(), "unknown media type") {
		t.Errorf("schema1: %v", err)
	}
}
