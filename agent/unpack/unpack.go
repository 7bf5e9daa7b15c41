// Package unpack extracts verified OCI layer blobs and places rendered files under a
// target root without ever writing outside it, and records what it placed so that
// Remove can undo it.
//
// Safety rules: the blob's sha256 is checked before anything is placed (the blob is
// spooled to a temporary file first, or hashed in place by UnpackFile); entries with an
// absolute path, a ".." component or a whiteout name are refused, as are device nodes,
// fifos and unknown entry types; all file system access goes through os.Root, so that an
// existing symlink pointing outside the root is never written through; a symlink's
// target may use ".." only as a leading prefix, must resolve inside the root when it is
// created and is checked again once the whole layer is placed (absolute targets are
// rewritten relative to the link, so they resolve inside the root whatever the root);
// a hardlink must point to a regular file placed earlier by the same layer. Regular
// files are written to a temporary file in the same directory and renamed into place.
package unpack

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/flotilla-dev/flotilla/protocol"
)

// Kind is what a Record placed.
type Kind string

// Record kinds.
const (
	KindFile     Kind = "file"
	KindDir      Kind = "dir"
	KindSymlink  Kind = "symlink"
	KindHardlink Kind = "hardlink"
)

// Record is one path placed under the root, enough to undo it.
type Record struct {
	Path    string      `json:"path"`              // slash-separated, relative to the root
	Kind    Kind        `json:"kind"`              //
	Mode    fs.FileMode `json:"mode"`              // permission (and setuid/setgid/sticky) bits
	Digest  string      `json:"digest,omitempty"`  // sha256:… of the content (files and hardlinks)
	Target  string      `json:"target,omitempty"`  // symlink target as placed; hardlink source path
	Created bool        `json:"created,omitempty"` // directories: created by this placement
}

// ErrDigestMismatch means the blob is not the one asked for; nothing was placed.
var ErrDigestMismatch = errors.New("digest mismatch")

// EntryError is a refused or failed layer entry.
type EntryError struct {
	Entry string // the entry's name as written in the archive
	Err   error
}

func (e *EntryError) Error() string { return fmt.Sprintf("layer entry %q: %v", e.Entry, e.Err) }
func (e *EntryError) Unwrap() error { return e.Err }

// Option changes how Unpack works.
type Option func(*options)

type options struct {
	tempDir    string
	maxBytes   int64
	maxEntries int
	keepSetuid bool
	freeSpace  func(dir string) (int64, error)
	owners     bool
	noSync     bool // tests only: skip fsync before rename
	verified   bool // the caller just proved the blob's digest
	declared   *protocol.LayerContents
}

// WithVerifiedBlob says the caller has just proved the blob matches its digest
// (its pieces matched a signed piece list, or it was hashed as it arrived):
// UnpackFile then does not hash it once more. A blob read back from a cache
// is not verified: it may have changed on disk since.
func WithVerifiedBlob() Option { return func(o *options) { o.verified = true } }

// WithDeclaredContents gives the layer's contents as its build recorded them
// and the controller's signed step carried them (file bytes, entries, longest
// path). The bounds and the free space are checked against them before
// anything is placed, instead of reading the whole layer once more first; the
// extraction then refuses to go past them. Only for a blob whose digest is
// proven: the contents are a fact about exactly those bytes.
func WithDeclaredContents(c *protocol.LayerContents) Option {
	return func(o *options) { o.declared = c }
}

// WithTempDir spools blobs in dir instead of the system temporary directory.
func WithTempDir(dir string) Option { return func(o *options) { o.tempDir = dir } }

// WithMaxBytes refuses a layer whose uncompressed tar stream, or the files in
// it, exceed n bytes (0: DefaultMaxBytes, <0: no limit).
func WithMaxBytes(n int64) Option { return func(o *options) { o.maxBytes = n } }

// WithOwners sets whether entries keep their uid and gid (default: only when running as root).
func WithOwners(keep bool) Option { return func(o *options) { o.owners = keep } }

// withoutSync skips the fsync before each rename (for the fuzz test's throughput).
func withoutSync() Option { return func(o *options) { o.noSync = true } }

func newOptions(opts []Option) options {
	o := options{owners: os.Geteuid() == 0, freeSpace: freeSpace}
	for _, f := range opts {
		f(&o)
	}
	if o.maxBytes == 0 {
		o.maxBytes = DefaultMaxBytes
	}
	if o.maxEntries == 0 {
		o.maxEntries = DefaultMaxEntries
	}
	return o
}

// Unpack verifies blob against digest ("sha256:<hex>") and, only if it matches,
// extracts it (tar, gzip- or zstd-compressed tar) under root, which is created if missing.
// It returns what it placed, in order.
//
// Before placing anything the layer is read through once and refused with
// ErrLimit if it exceeds its bounds (WithMaxBytes, WithMaxEntries, path
// length, free space under root), so a refused layer leaves nothing behind.
// Setuid and setgid bits are dropped unless WithSetuid(true).
func Unpack(ctx context.Context, blob io.Reader, digest, root string, opts ...Option) ([]Record, error) {
	o := newOptions(opts)
	want, err := DigestHex(digest)
	if err != nil {
		return nil, err
	}
	spool, err := os.CreateTemp(o.tempDir, "flotilla-layer-*")
	if err != nil {
		return nil, fmt.Errorf("spool layer %s: %w", digest, err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(spool, h), ctxReader{ctx, blob}); err != nil {
		return nil, fmt.Errorf("spool layer %s: %w", digest, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return nil, fmt.Errorf("layer %s: %w: the blob hashes to sha256:%s", digest, ErrDigestMismatch, got)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("spool layer %s: %w", digest, err)
	}
	return extract(ctx, spool, digest, root, o)
}

// UnpackFile is Unpack for a blob already on disk: it hashes the file in place first.
func UnpackFile(ctx context.Context, blobPath, digest, root string, opts ...Option) ([]Record, error) {
	o := newOptions(opts)
	want, err := DigestHex(digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(blobPath)
	if err != nil {
		return nil, fmt.Errorf("open layer %s: %w", digest, err)
	}
	defer f.Close()
	if o.verified {
		return extract(ctx, f, digest, root, o)
	}
	h := sha256.New()
	if _, err := io.Copy(h, ctxReader{ctx, f}); err != nil {
		return nil, fmt.Errorf("hash layer %s (%s): %w", digest, blobPath, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return nil, fmt.Errorf("layer %s (%s): %w: the blob hashes to sha256:%s", digest, blobPath, ErrDigestMismatch, got)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("read layer %s: %w", digest, err)
	}
	return extract(ctx, f, digest, root, o)
}

// DigestHex checks a layer digest "sha256:<64 hex>" and returns the lower-case hex.
func DigestHex(d string) (string, error) {
	hexPart, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hexPart) != 64 {
		return "", fmt.Errorf("layer digest %q is not sha256:<64 hex digits>", d)
	}
	if _, err := hex.DecodeString(hexPart); err != nil {
		return "", fmt.Errorf("layer digest %q is not sha256:<64 hex digits>", d)
	}
	return strings.ToLower(hexPart), nil
}

// readChunk is the read buffer of a layer blob: a compressed layer is read
// in calls of this size, not bufio's default 4 KiB.
const readChunk = 256 << 10

// decompress sniffs the blob's first bytes.
func decompress(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReaderSize(r, readChunk)
	magic, _ := br.Peek(4)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		return gunzip(br)
	case len(magic) == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd:
		return unzstd(br)
	case len(magic) >= 3 && string(magic[:3]) == "BZh":
		return nil, nil, errors.New("bzip2 layers are not supported: use gzip, zstd or plain tar")
	case len(magic) >= 4 && magic[0] == 0xfd && string(magic[1:4]) == "7zX":
		return nil, nil, errors.New("xz layers are not supported: use gzip, zstd or plain tar")
	}
	return br, func() {}, nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
