package unpack

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"syscall"
)

// Default bounds of one layer; an image raises them in its plan (bundle/plan,
// the dev.flotilla.unpack.* labels), which the layer step passes on.
const (
	// DefaultMaxBytes bounds a layer's uncompressed tar stream: a layer
	// that inflates past it (a gzip bomb) is refused.
	DefaultMaxBytes = 2 << 30
	// DefaultMaxEntries bounds the entries of one layer (a Debian root file
	// system has about 20 000).
	DefaultMaxEntries = 200_000
	// MaxPathLen and MaxNameLen are Linux's PATH_MAX and NAME_MAX.
	MaxPathLen = 4096
	MaxNameLen = 255
	// freeReserve is the room a layer must leave on the target's file system.
	freeReserve = 64 << 20
)

// ErrLimit means a layer exceeds a bound (size, entries, path length, free
// disk space); it was refused before anything was placed.
var ErrLimit = errors.New("layer exceeds a limit")

// WithMaxEntries refuses a layer with more than n entries (0: DefaultMaxEntries, <0: no limit).
func WithMaxEntries(n int) Option { return func(o *options) { o.maxEntries = n } }

// WithSetuid keeps the setuid and setgid bits of the layer's entries. By
// default they are dropped: a layer gets set-id programs on a node only when
// its image declares them (bundle/plan's dev.flotilla.unpack.setuid label).
func WithSetuid(keep bool) Option { return func(o *options) { o.keepSetuid = keep } }

// withFreeSpace replaces the file system query (tests).
func withFreeSpace(f func(dir string) (int64, error)) Option {
	return func(o *options) { o.freeSpace = f }
}

// freeSpace is the bytes available to an unprivileged writer on dir's file system.
func freeSpace(dir string) (int64, error) {
	for {
		var st syscall.Statfs_t
		err := syscall.Statfs(dir, &st)
		if err == nil {
			return int64(st.Bavail) * int64(st.Bsize), nil
		}
		if !errors.Is(err, syscall.ENOENT) || filepath.Dir(dir) == dir {
			return 0, err
		}
		dir = filepath.Dir(dir) // the root is created later
	}
}

// scan reads the whole layer once before anything is placed and refuses it
// if it breaks a bound, so that a refused layer leaves nothing half-placed
// and a bomb costs at most maxBytes of decompression, never disk.
func scan(ctx context.Context, blob io.Reader, root string, o options) error {
	r, done, err := decompress(blob)
	if err != nil {
		return err
	}
	defer done()
	var lr *limitReader
	if o.maxBytes > 0 {
		lr = &limitReader{r: r, left: o.maxBytes}
		r = lr
	}
	tr := tar.NewReader(r)
	var entries int
	var content int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if lr != nil && lr.hit {
			return fmt.Errorf("%w: more than %d bytes uncompressed (raise it with the image label dev.flotilla.unpack.max-bytes)", ErrLimit, o.maxBytes)
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		entries++
		if o.maxEntries > 0 && entries > o.maxEntries {
			return fmt.Errorf("%w: more than %d entries (raise it with the image label dev.flotilla.unpack.max-entries)", ErrLimit, o.maxEntries)
		}
		if err := checkNameLen(hdr.Name); err != nil {
			return &EntryError{Entry: truncate(hdr.Name), Err: err}
		}
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA {
			content += hdr.Size
			if o.maxBytes > 0 && content > o.maxBytes {
				return fmt.Errorf("%w: entry %q makes %d bytes of files, more than %d (raise it with the image label dev.flotilla.unpack.max-bytes)",
					ErrLimit, truncate(hdr.Name), content, o.maxBytes)
			}
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			if lr != nil && lr.hit {
				return fmt.Errorf("%w: more than %d bytes uncompressed (raise it with the image label dev.flotilla.unpack.max-bytes)", ErrLimit, o.maxBytes)
			}
			return fmt.Errorf("read tar entry %q: %w", truncate(hdr.Name), err)
		}
	}
	free, err := o.freeSpace(root)
	if err != nil {
		return fmt.Errorf("free space under %s: %w", root, err)
	}
	if content > free-freeReserve {
		return fmt.Errorf("%w: %d bytes of files, %d bytes free under %s (keeping %d free)", ErrLimit, content, free, root, int64(freeReserve))
	}
	return nil
}

func checkNameLen(name string) error {
	if len(name) > MaxPathLen {
		return fmt.Errorf("%w: path of %d bytes, more than %d", ErrLimit, len(name), MaxPathLen)
	}
	start := 0
	for i := 0; i <= len(name); i++ {
		if i == len(name) || name[i] == '/' {
			if i-start > MaxNameLen {
				return fmt.Errorf("%w: path component of %d bytes, more than %d", ErrLimit, i-start, MaxNameLen)
			}
			start = i + 1
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 120 {
		return s[:120] + "…"
	}
	return s
}

type limitReader struct {
	r    io.Reader
	left int64
	hit  bool
}

func (l *limitReader) Read(b []byte) (int, error) {
	if l.left <= 0 {
		// One byte more tells a stream of exactly the limit from a longer one.
		var one [1]byte
		for {
			n, err := l.r.Read(one[:])
			if n > 0 {
				l.hit = true
				return 0, errors.New("layer is larger than the allowed size")
			}
			if err != nil {
				return 0, err
			}
		}
	}
	if int64(len(b)) > l.left {
		b = b[:l.left]
	}
	n, err := l.r.Read(b)
	l.left -= int64(n)
	return n, err
}
