package backup_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/archive"
	"github.com/flotilla-dev/flotilla/bundle/backup"
	"github.com/flotilla-dev/flotilla/bundle/registry"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/internal/registrytest"
)

func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// write stores a backup of cluster with content data made at created.
func write(t *testing.T, st *store.Store, cluster string, created time.Time, data string) *backup.Backup {
	t.Helper()
	ctx := context.Background()
	tx, err := st.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Abort()
	w, err := tx.NewBlob()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	h, n, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	b, err := backup.Write(ctx, tx, backup.Meta{Cluster: cluster, Image: "example/etcd:1", ImageDigest: "sha256:" + strings.Repeat("a", 64),
		Node: "m1", Role: "master", Created: created}, h, n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWriteListGetVerify(t *testing.T) {
	st := openStore(t)
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	b1 := write(t, st, "c1", t0, "first")
	b2 := write(t, st, "c1", t0.Add(time.Hour), "second")
	same := write(t, st, "c1", t0.Add(time.Hour), "same second")
	write(t, st, "c2", t0, "other cluster")

	if b1.Ref != "flotilla-backup/c1:20260301T100000Z" {
		t.Errorf("ref = %s", b1.Ref)
	}
	if same.Ref != b2.Ref+"-2" {
		t.Errorf("second backup in the same second: ref %s, want %s-2", same.Ref, b2.Ref)
	}
	list, err := backup.List(st, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[2].Ref != b1.Ref {
		t.Fatalf("list c1 = %+v, want 3 newest first", list)
	}
	all, _ := backup.List(st, "")
	if len(all) != 4 {
		t.Fatalf("list all = %d, want 4", len(all))
	}
	for _, ref := range []string{b1.Ref, b1.Manifest.Digest.String(), b1.Manifest.Digest.Hex[:12], "c1:20260301T100000Z"} {
		got, err := backup.Get(st, ref)
		if err != nil {
			t.Fatalf("Get(%s): %v", ref, err)
		}
		if got.Meta.Cluster != "c1" || got.Meta.Size != 5 || got.Meta.Node != "m1" || got.Blob.Digest != b1.Blob.Digest || got.Ref != b1.Ref {
			t.Errorf("Get(%s) = %+v", ref, got)
		}
		if err := backup.Verify(st, got); err != nil {
			t.Errorf("Verify: %v", err)
		}
	}
	// Damage the file in the store: Verify says so.
	p, _ := st.BlobPath(b1.Blob.Digest)
	if err := os.WriteFile(p, []byte("fir5t"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := backup.Verify(st, b1); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Errorf("Verify of a damaged backup = %v", err)
	}
}

func TestGetRefusesWhatIsNotABackup(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	write(t, st, "c1", time.Now(), "x")
	// A plain manifest named like a backup: not listed, refused by Get.
	tx, err := st.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	raw := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	w, _ := tx.NewBlob()
	w.Write(raw)
	h, n, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	cw, _ := tx.NewBlob()
	cw.Write([]byte("{}"))
	if _, _, err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx, map[string]v1.Descriptor{"flotilla-backup/c1:fake": {MediaType: types.OCIManifestSchema1, Digest: h, Size: n}}); err != nil {
		t.Fatal(err)
	}
	if _, err := backup.Get(st, "flotilla-backup/c1:fake"); err == nil || !strings.Contains(err.Error(), "is not a flotilla backup") {
		t.Errorf("Get of a plain manifest = %v", err)
	}
	if list, _ := backup.List(st, "c1"); len(list) != 1 {
		t.Errorf("List = %+v, want only the real backup", list)
	}
	if _, err := backup.Get(st, "no-such:1"); err == nil {
		t.Error("Get of a missing name succeeded")
	}
}

func TestPrune(t *testing.T) {
	st := openStore(t)
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	var refs []string
	for i := range 5 {
		refs = append(refs, write(t, st, "c1", t0.Add(time.Duration(i)*time.Minute), strings.Repeat("x", i+1)).Ref)
	}
	other := write(t, st, "c2", t0, "keep me")
	removed, err := backup.Prune(context.Background(), st, "c1", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 3 || removed[0] != refs[2] {
		t.Fatalf("removed %v, want the 3 oldest", removed)
	}
	list, _ := backup.List(st, "c1")
	if len(list) != 2 || list[0].Ref != refs[4] || list[1].Ref != refs[3] {
		t.Fatalf("left %+v", list)
	}
	if _, err := backup.Get(st, other.Ref); err != nil {
		t.Errorf("other cluster's backup: %v", err)
	}
	if err := backup.Verify(st, &list[0]); err != nil {
		t.Error(err)
	}
	if _, err := backup.Prune(context.Background(), st, "c1", 0); err == nil {
		t.Error("keep 0 accepted")
	}
}

func TestPruneCollectsBlobs(t *testing.T) {
	st := openStore(t)
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	old := write(t, st, "c1", t0, "old backup")
	write(t, st, "c1", t0.Add(time.Minute), "new backup")
	if _, err := backup.Prune(context.Background(), st, "c1", 1); err != nil {
		t.Fatal(err)
	}
	if st.HasBlob(old.Blob.Digest) || st.HasBlob(old.Manifest.Digest) {
		t.Error("the pruned backup's blobs are still in the store")
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	ctx := context.Background()
	src := openStore(t)
	b := write(t, src, "c1", time.Now(), "snapshot bytes")
	var buf bytes.Buffer
	if err := archive.Save(ctx, src, &buf, []string{b.Ref}, archive.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	dst := openStore(t)
	if _, err := archive.Load(ctx, dst, &buf, archive.LoadOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := backup.Get(dst, b.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if got.Manifest.Digest != b.Manifest.Digest || backup.Verify(dst, got) != nil {
		t.Errorf("loaded %+v, want %+v", got, b)
	}
}

func TestPushPullRoundTrip(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Start(t, registrytest.Options{})
	src := openStore(t)
	b := write(t, src, "c1", time.Now(), strings.Repeat("etcd snapshot ", 1000))
	dest := reg.Host + "/backups/c1:latest"
	if _, err := registry.Push(ctx, src, b.Ref, dest, registry.Options{Insecure: true}); err != nil {
		t.Fatal(err)
	}
	dst := openStore(t)
	desc, err := registry.Pull(ctx, dst, dest, registry.Options{Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != b.Manifest.Digest {
		t.Fatalf("pulled %s, pushed %s", desc.Digest, b.Manifest.Digest)
	}
	got, err := backup.Get(dst, dest)
	if err != nil {
		t.Fatal(err)
	}
	if got.Meta.Cluster != "c1" || backup.Verify(dst, got) != nil {
		t.Errorf("pulled backup %+v", got)
	}
}
