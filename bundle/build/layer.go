package build

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"

	"github.com/flotilla-dev/flotilla/bundle/progress"
	"github.com/flotilla-dev/flotilla/protocol"
)

// entry is one file, directory or symlink of a layer.
type entry struct {
	name string // path relative to / on the node, no leading slash
	typ  byte   // tar.TypeReg, tar.TypeDir or tar.TypeSymlink
	mode int64  // permission and setuid/setgid/sticky bits
	size int64
	link string // symlink target
	src  string // file to read for TypeReg
}

// fileMode converts fs mode bits to tar's.
func fileMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

// writeTar writes entries sorted by name with fixed times and owner 0, so the same
// inputs always give the same bytes.
func writeTar(w io.Writer, entries []entry, mtime time.Time) error {
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{
			Typeflag: e.typ,
			Name:     e.name,
			Mode:     e.mode,
			ModTime:  mtime,
			Format:   tar.FormatPAX,
		}
		switch e.typ {
		case tar.TypeDir:
			h.Name = strings.TrimSuffix(e.name, "/") + "/"
		case tar.TypeSymlink:
			h.Linkname = e.link
		case tar.TypeReg:
			h.Size = e.size
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("tar %s: %w", e.name, err)
		}
		if e.typ != tar.TypeReg {
			continue
		}
		f, err := os.Open(e.src)
		if err != nil {
			return err
		}
		n, err := io.Copy(tw, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("read %s: %w", e.src, err)
		}
		if n != e.size {
			return fmt.Errorf("%s changed size during the build", e.src)
		}
	}
	return tw.Close()
}

// layerInfo is what the layer cache remembers for a diffID.
type layerInfo struct {
	DiffID   string                  `json:"diffID"`
	Digest   string                  `json:"digest"`
	Size     int64                   `json:"size"`
	Contents *protocol.LayerContents `json:"contents,omitempty"`
}

// contentsOf is what writeTar puts into a layer for entries.
func contentsOf(entries []entry) *protocol.LayerContents {
	c := &protocol.LayerContents{Entries: len(entries)}
	for _, e := range entries {
		n := len(e.name)
		if e.typ == tar.TypeDir {
			n = len(strings.TrimSuffix(e.name, "/")) + 1
		}
		c.LongestPath = max(c.LongestPath, n)
		if e.typ == tar.TypeReg {
			c.FileBytes += e.size
		}
	}
	return c
}

// makeLayer returns the layer for entries: the diffID is computed first, and when the
// cache knows a stored blob with that diffID nothing is compressed or written.
func (b *builder) makeLayer(label string, entries []entry) (v1.Layer, layerInfo, error) {
	h := sha256.New()
	if err := writeTar(h, entries, b.mtime); err != nil {
		return nil, layerInfo{}, err
	}
	diffID := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	var info layerInfo
	key := "layer-" + diffID.Hex + "-gzip"
	if b.st.CacheGet(key, &info) && info.DiffID == diffID.String() {
		if d, err := v1.NewHash(info.Digest); err == nil && b.tx.Has(d) {
			l, err := b.tx.Layer(d, diffID, info.Size, types.OCILayer)
			info.Contents = contentsOf(entries)
			return l, info, err
		}
	}
	bw, err := b.tx.NewBlob()
	if err != nil {
		return nil, layerInfo{}, err
	}
	zw, err := gzip.NewWriterLevel(bw, gzip.DefaultCompression)
	if err != nil {
		bw.Abort()
		return nil, layerInfo{}, err
	}
	dh := sha256.New()
	var total int64
	for _, e := range entries {
		total += e.size
	}
	bar := progress.OrNop(b.opts.Progress).Start(label, total)
	err = writeTar(io.MultiWriter(zw, dh, progress.Writer(bar)), entries, b.mtime)
	bar.Done(err)
	if err != nil {
		bw.Abort()
		return nil, layerInfo{}, err
	}
	if err := zw.Close(); err != nil {
		bw.Abort()
		return nil, layerInfo{}, err
	}
	if got := hex.EncodeToString(dh.Sum(nil)); got != diffID.Hex {
		bw.Abort()
		return nil, layerInfo{}, fmt.Errorf("build context changed while building a layer: run the build again")
	}
	digest, size, err := bw.Close()
	if err != nil {
		return nil, layerInfo{}, err
	}
	info = layerInfo{DiffID: diffID.String(), Digest: digest.String(), Size: size, Contents: contentsOf(entries)}
	b.pending[key] = info
	l, err := b.tx.Layer(digest, diffID, size, types.OCILayer)
	return l, info, err
}

// cachedLayer returns a layer the cache names if its blob is still stored.
func (b *builder) cachedLayer(info layerInfo) (v1.Layer, layerInfo, bool) {
	d, err1 := v1.NewHash(info.Digest)
	id, err2 := v1.NewHash(info.DiffID)
	if err1 != nil || err2 != nil || !b.tx.Has(d) {
		return nil, layerInfo{}, false
	}
	l, err := b.tx.Layer(d, id, info.Size, types.OCILayer)
	return l, info, err == nil
}
