// Package backup is the format of a cluster backup in an image store: an OCI
// artifact (image manifest with artifactType ArtifactType) whose config blob is
// the backup's metadata (Meta, JSON) and whose one layer is the backup file as
// the image's BACKUP command wrote it. It is named in index.json as
// flotilla-backup/<cluster>:<YYYYMMDDThhmmssZ>, so push, pull, save, load, rmi
// and the store's garbage collection treat it like any image.
//
// It writes, lists, reads and verifies backups; it knows nothing of nodes or
// the rollout engine.
package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/store"
)

// Media types of a backup artifact.
const (
	ArtifactType    = "application/vnd.flotilla.backup.v1"
	ConfigMediaType = "application/vnd.flotilla.backup.config.v1+json"
	LayerMediaType  = "application/vnd.flotilla.backup.layer.v1"
	// RefPrefix starts the name of every backup: RefPrefix + cluster + ":" + time.
	RefPrefix = "flotilla-backup/"
	// TimeFormat is the tag of a backup: its creation time in UTC.
	TimeFormat = "20060102T150405Z"
	// maxJSON bounds a backup's manifest and config as read from the store.
	maxJSON = 1 << 20
)

// Meta is a backup's config blob.
type Meta struct {
	Cluster     string    `json:"cluster"`
	Image       string    `json:"image"`       // the cluster image reference
	ImageDigest string    `json:"imageDigest"` // and its digest
	Node        string    `json:"node"`        // the member that made it
	Role        string    `json:"role"`        // its BACKUP role
	Created     time.Time `json:"created"`     // UTC
	Size        int64     `json:"size"`        // of the backup file
}

// Backup is one backup in a store.
type Backup struct {
	Ref      string        // flotilla-backup/<cluster>:<time>
	Manifest v1.Descriptor // the artifact's manifest
	Blob     v1.Descriptor // the backup file
	Meta     Meta
}

// manifest is an OCI image manifest with artifactType (go-containerregistry's
// v1.Manifest may not carry it).
type manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     types.MediaType   `json:"mediaType"`
	ArtifactType  string            `json:"artifactType,omitempty"`
	Config        v1.Descriptor     `json:"config"`
	Layers        []v1.Descriptor   `json:"layers"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// Ref is the name of cluster's backup made at created.
func Ref(cluster string, created time.Time) string {
	return RefPrefix + cluster + ":" + created.UTC().Format(TimeFormat)
}

// Write stages the artifact of a backup whose file is blob (already staged in
// tx or in the store, size bytes) and commits tx with the artifact named
// Ref(m.Cluster, m.Created); a name taken already (two backups in one second)
// gets a suffix. It returns the backup.
func Write(ctx context.Context, tx *store.Txn, m Meta, blob v1.Hash, size int64) (*Backup, error) {
	if m.Cluster == "" || m.Created.IsZero() {
		return nil, errors.New("backup: cluster and creation time are required")
	}
	if !tx.Has(blob) {
		return nil, fmt.Errorf("backup: blob %s is neither staged nor stored", blob)
	}
	m.Created = m.Created.UTC().Truncate(time.Second)
	m.Size = size
	ref := Ref(m.Cluster, m.Created)
	if _, err := store.NormalizeName(ref); err != nil {
		return nil, fmt.Errorf("backup of cluster %s: %w", m.Cluster, err)
	}
	for i := 2; ; i++ {
		if _, err := tx.Store().Get(ref); err != nil {
			break
		}
		ref = fmt.Sprintf("%s-%d", Ref(m.Cluster, m.Created), i)
	}
	cfg, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	cfgDesc, err := put(tx, cfg)
	if err != nil {
		return nil, fmt.Errorf("backup config: %w", err)
	}
	cfgDesc.MediaType = ConfigMediaType
	layer := v1.Descriptor{MediaType: LayerMediaType, Digest: blob, Size: size,
		Annotations: map[string]string{"org.opencontainers.image.title": "backup"}}
	man := manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1, ArtifactType: ArtifactType, Config: cfgDesc,
		Layers: []v1.Descriptor{layer}, Annotations: map[string]string{"org.opencontainers.image.created": m.Created.Format(time.RFC3339)}}
	raw, err := json.Marshal(man)
	if err != nil {
		return nil, err
	}
	desc, err := put(tx, raw)
	if err != nil {
		return nil, fmt.Errorf("backup manifest: %w", err)
	}
	desc.MediaType = types.OCIManifestSchema1
	if err := tx.Commit(ctx, map[string]v1.Descriptor{ref: desc}); err != nil {
		return nil, fmt.Errorf("backup %s: %w", ref, err)
	}
	return &Backup{Ref: ref, Manifest: desc, Blob: layer, Meta: m}, nil
}

func put(tx *store.Txn, b []byte) (v1.Descriptor, error) {
	sum := sha256.Sum256(b)
	h := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if err := tx.PutBlob(h, int64(len(b)), bytes.NewReader(b)); err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{Digest: h, Size: int64(len(b))}, nil
}

// read returns the backup the manifest at d is, or an error saying why it is not one.
func read(st *store.Store, name string, d v1.Descriptor) (*Backup, error) {
	raw, err := readBlob(st, d.Digest)
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%s: manifest %s: %w", name, d.Digest, err)
	}
	if m.ArtifactType != ArtifactType || m.Config.MediaType != ConfigMediaType || len(m.Layers) != 1 || m.Layers[0].MediaType != LayerMediaType {
		return nil, fmt.Errorf("%s (%s) is not a flotilla backup (artifact type %q, want %q with one %s layer): `flotilla backups` lists them",
			name, d.Digest, m.ArtifactType, ArtifactType, LayerMediaType)
	}
	cfg, err := readBlob(st, m.Config.Digest)
	if err != nil {
		return nil, fmt.Errorf("%s: config: %w", name, err)
	}
	b := &Backup{Ref: name, Manifest: v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}, Blob: m.Layers[0]}
	if err := json.Unmarshal(cfg, &b.Meta); err != nil {
		return nil, fmt.Errorf("%s: config: %w", name, err)
	}
	if b.Meta.Size != b.Blob.Size {
		return nil, fmt.Errorf("%s: its config says %d bytes, its layer %d", name, b.Meta.Size, b.Blob.Size)
	}
	return b, nil
}

func readBlob(st *store.Store, h v1.Hash) ([]byte, error) {
	rc, size, err := st.OpenBlob(h)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if size > maxJSON {
		return nil, fmt.Errorf("blob %s: %d bytes, more than a backup's manifest or config may have", h, size)
	}
	return io.ReadAll(io.LimitReader(rc, maxJSON))
}

// List returns the backups in st (of cluster, or all when cluster is ""), newest first.
func List(st *store.Store, cluster string) ([]Backup, error) {
	entries, err := st.List()
	if err != nil {
		return nil, err
	}
	var out []Backup
	for _, e := range entries {
		if !strings.HasPrefix(e.Name, RefPrefix) {
			continue
		}
		b, err := read(st, e.Name, e.Descriptor)
		if err != nil {
			continue // named like a backup but not one: not listed
		}
		if cluster == "" || b.Meta.Cluster == cluster {
			out = append(out, *b)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Meta.Created.Equal(out[j].Meta.Created) {
			return out[i].Meta.Created.After(out[j].Meta.Created)
		}
		return out[i].Ref > out[j].Ref
	})
	return out, nil
}

// Get finds the backup ref names: a backup name, a manifest digest or a unique
// digest prefix (as store.Get), or a name without RefPrefix ("<cluster>:<time>").
func Get(st *store.Store, ref string) (*Backup, error) {
	d, err := st.Get(ref)
	if err != nil && !strings.HasPrefix(ref, RefPrefix) && strings.Contains(ref, ":") && !strings.HasPrefix(ref, "sha256:") {
		if d2, err2 := st.Get(RefPrefix + ref); err2 == nil {
			d, err, ref = d2, nil, RefPrefix+ref
		}
	}
	if err != nil {
		return nil, fmt.Errorf("backup %s: %w", ref, err)
	}
	name := ref
	if entries, lerr := st.List(); lerr == nil {
		for _, e := range entries {
			if e.Descriptor.Digest == d.Digest && strings.HasPrefix(e.Name, RefPrefix) {
				name = e.Name
				break
			}
		}
	}
	return read(st, name, d)
}

// Verify hashes the backup file in the store again and checks it against its
// digest and size.
func Verify(st *store.Store, b *Backup) error {
	rc, size, err := st.OpenBlob(b.Blob.Digest)
	if err != nil {
		return fmt.Errorf("backup %s: its file %s: %w", b.Ref, b.Blob.Digest, err)
	}
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return fmt.Errorf("backup %s: read %s: %w", b.Ref, b.Blob.Digest, err)
	}
	got := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	if n != b.Blob.Size || size != b.Blob.Size || got != b.Blob.Digest {
		return fmt.Errorf("backup %s does not verify: its file should be %s (%d bytes) and is %s (%d bytes): it was damaged in the store; use another backup",
			b.Ref, b.Blob.Digest, b.Blob.Size, got, n)
	}
	return nil
}

// Prune keeps the newest keep backups of cluster, untags the older ones and
// garbage-collects the store. It returns the names it removed.
func Prune(ctx context.Context, st *store.Store, cluster string, keep int) ([]string, error) {
	if keep < 1 {
		return nil, fmt.Errorf("keep %d: want at least 1", keep)
	}
	list, err := List(st, cluster)
	if err != nil {
		return nil, err
	}
	if len(list) <= keep {
		return nil, nil
	}
	var names []string
	for _, b := range list[keep:] {
		names = append(names, b.Ref)
	}
	if _, err := st.Untag(ctx, names...); err != nil {
		return nil, fmt.Errorf("drop old backups of %s: %w", cluster, err)
	}
	if _, err := st.GC(ctx); err != nil {
		return names, fmt.Errorf("drop old backups of %s: garbage collection: %w", cluster, err)
	}
	return names, nil
}
