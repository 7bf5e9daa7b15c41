package unpack

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/flotilla-dev/flotilla/protocol"
)

// maxLinkHops bounds symlink resolution, as the kernel's ELOOP does.
const maxLinkHops = 40

// placer writes under one os.Root and remembers what it placed.
type placer struct {
	root    *os.Root
	isSlash bool // the root is "/": absolute symlinks in it point inside
	owners  bool
	noSync  bool
	// keepSetuid keeps setuid/setgid bits; by default they are dropped.
	keepSetuid bool
	records    []Record
	index      map[string]int // path -> position in records
	// seenEntries and seenBytes count what was read against declared contents.
	seenEntries int
	seenBytes   int64
	// copyBuf carries file contents from the layer to the files placed:
	// large, so a file costs a few big read and write calls, not one
	// pair per 32 KiB (io.Copy's buffer), which on a VM cost more than the copy.
	copyBuf []byte
}

// copyChunk is the size of placer.copyBuf.
const copyChunk = 1 << 20

func newPlacer(root string, owners bool) (*placer, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("create root %s: %w", root, err)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("open root %s: %w", root, err)
	}
	return &placer{root: r, isSlash: path.Clean(root) == "/", owners: owners, index: map[string]int{}}, nil
}

func (p *placer) record(r Record) {
	if i, ok := p.index[r.Path]; ok {
		if p.records[i].Kind == KindDir && r.Kind == KindDir {
			return // keep the first record: it knows whether we created the directory
		}
		p.records = append(p.records[:i], p.records[i+1:]...)
		for k, j := range p.index {
			if j > i {
				p.index[k] = j - 1
			}
		}
	}
	p.index[r.Path] = len(p.records)
	p.records = append(p.records, r)
}

func extract(ctx context.Context, blob io.ReadSeeker, digest, root string, o options) ([]Record, error) {
	if o.declared != nil {
		if err := checkDeclared(o.declared, root, o); err != nil {
			return nil, fmt.Errorf("layer %s refused, nothing placed: %w", digest, err)
		}
	} else {
		if err := scan(ctx, blob, root, o); err != nil {
			return nil, fmt.Errorf("layer %s refused, nothing placed: %w", digest, err)
		}
		if _, err := blob.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("layer %s: %w", digest, err)
		}
	}
	r, done, err := decompress(blob)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", digest, err)
	}
	defer done()
	p, err := newPlacer(root, o.owners)
	if err != nil {
		return nil, err
	}
	p.noSync, p.keepSetuid = o.noSync, o.keepSetuid
	defer p.root.Close()
	if o.maxBytes > 0 {
		r = &limitReader{r: r, left: o.maxBytes}
	}
	tr := tar.NewReader(r)
	var links []string // symlinks placed, checked again at the end
	for {
		if err := ctx.Err(); err != nil {
			return p.records, fmt.Errorf("layer %s: %w", digest, err)
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return p.records, fmt.Errorf("layer %s: read tar: %w", digest, err)
		}
		if err := p.withinDeclared(o.declared, hdr); err != nil {
			return p.records, fmt.Errorf("layer %s: %w", digest, &EntryError{Entry: truncate(hdr.Name), Err: err})
		}
		name, err := cleanEntry(hdr.Name)
		if err == nil && name != "" {
			err = p.entry(hdr, name, tr)
			if err == nil && hdr.Typeflag == tar.TypeSymlink {
				links = append(links, name)
			}
		}
		if err != nil {
			return p.records, fmt.Errorf("layer %s: %w", digest, &EntryError{Entry: hdr.Name, Err: err})
		}
	}
	// A later entry may have changed what an earlier link resolves through.
	for _, l := range links {
		if i, ok := p.index[l]; !ok || p.records[i].Kind != KindSymlink {
			continue
		}
		if err := p.checkLink(l, p.records[p.index[l]].Target); err != nil {
			_ = p.root.Remove(l)
			return p.records, fmt.Errorf("layer %s: %w", digest, &EntryError{Entry: l, Err: err})
		}
	}
	return p.records, nil
}

// cleanEntry returns the entry's slash path relative to the root ("" for the root itself).
func cleanEntry(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", errors.New("path contains a NUL byte")
	}
	if strings.HasPrefix(name, "/") {
		return "", errors.New("absolute path refused")
	}
	var parts []string
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
		case "..":
			return "", errors.New(`".." in path refused`)
		default:
			if strings.HasPrefix(c, ".wh.") {
				return "", errors.New("whiteout entries are not supported on nodes")
			}
			parts = append(parts, c)
		}
	}
	return strings.Join(parts, "/"), nil
}

func (p *placer) entry(hdr *tar.Header, name string, r io.Reader) error {
	mode := hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if !p.keepSetuid {
		mode &^= fs.ModeSetuid | fs.ModeSetgid
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := p.mkdirs(name, mode); err != nil {
			return err
		}
		if i, ok := p.index[name]; ok && p.records[i].Created {
			return p.chown(name, hdr) // never re-own a directory that was already there (/etc)
		}
		return nil
	case tar.TypeReg, tar.TypeRegA:
		if err := p.mkdirs(path.Dir(name), 0o755); err != nil {
			return err
		}
		return p.writeFile(name, mode, r, hdr)
	case tar.TypeSymlink:
		if err := p.mkdirs(path.Dir(name), 0o755); err != nil {
			return err
		}
		return p.symlink(name, hdr.Linkname, hdr)
	case tar.TypeLink:
		if err := p.mkdirs(path.Dir(name), 0o755); err != nil {
			return err
		}
		return p.hardlink(name, hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock:
		return errors.New("device nodes are refused")
	case tar.TypeFifo:
		return errors.New("fifos are refused")
	}
	return fmt.Errorf("entry type %q is not supported", hdr.Typeflag)
}

// mkdirs creates dir and its missing parents, recording those it creates; an existing
// component must be a directory or a symlink to one that resolves inside the root.
func (p *placer) mkdirs(dir string, mode fs.FileMode) error {
	if dir == "." || dir == "" {
		return nil
	}
	parts := strings.Split(dir, "/")
	for i := range parts {
		sub := strings.Join(parts[:i+1], "/")
		last := i == len(parts)-1
		fi, err := p.root.Lstat(sub)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			m := fs.FileMode(0o755)
			if last {
				m = mode
			}
			if err := p.root.Mkdir(sub, 0o700); err != nil {
				return fmt.Errorf("create directory %s: %w", sub, err)
			}
			if err := p.root.Chmod(sub, m); err != nil {
				return fmt.Errorf("chmod directory %s: %w", sub, err)
			}
			p.record(Record{Path: sub, Kind: KindDir, Mode: m, Created: true})
		case err != nil:
			return fmt.Errorf("inspect %s: %w", sub, err)
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := p.root.Readlink(sub)
			if err != nil {
				return fmt.Errorf("read link %s: %w", sub, err)
			}
			if err := p.checkLink(sub, target); err != nil {
				return fmt.Errorf("%s is a symlink that leaves the root: %w", sub, err)
			}
			if st, err := p.root.Stat(sub); err != nil || !st.IsDir() {
				return fmt.Errorf("%s is a symlink to something that is not a directory", sub)
			}
		case !fi.IsDir():
			return fmt.Errorf("%s exists and is not a directory", sub)
		default:
			if last {
				p.record(Record{Path: sub, Kind: KindDir, Mode: fi.Mode().Perm()})
			}
		}
	}
	return nil
}

func tempName(name string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return path.Join(path.Dir(name), ".flotilla-tmp-"+hex.EncodeToString(b[:])+"-"+path.Base(name))
}

// writeFile places r at name atomically: a temporary file in the same directory, renamed.
func (p *placer) writeFile(name string, mode fs.FileMode, r io.Reader, hdr *tar.Header) error {
	if fi, err := p.root.Lstat(name); err == nil && fi.IsDir() {
		return fmt.Errorf("%s exists and is a directory", name)
	}
	tmp := tempName(name)
	f, err := p.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	h := sha256.New()
	if p.copyBuf == nil {
		p.copyBuf = make([]byte, copyChunk)
	}
	_, err = io.CopyBuffer(io.MultiWriter(f, h), r, p.copyBuf)
	if err == nil && !p.noSync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	// Owner first: a chown clears the setuid and setgid bits a chmod set.
	if err == nil && hdr != nil && p.owners {
		err = p.root.Lchown(tmp, hdr.Uid, hdr.Gid)
	}
	if err == nil {
		err = p.root.Chmod(tmp, mode)
	}
	if err == nil {
		err = p.root.Rename(tmp, name)
	}
	if err != nil {
		_ = p.root.Remove(tmp)
		return fmt.Errorf("write %s: %w", name, err)
	}
	p.record(Record{Path: name, Kind: KindFile, Mode: mode, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil))})
	return nil
}

func (p *placer) chown(name string, hdr *tar.Header) error {
	if !p.owners {
		return nil
	}
	if err := p.root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown %s: %w", name, err)
	}
	return nil
}

func (p *placer) symlink(name, target string, hdr *tar.Header) error {
	if target == "" || strings.ContainsRune(target, 0) {
		return errors.New("symlink with an empty or invalid target")
	}
	if strings.HasPrefix(target, "/") {
		// Relative to the link, so that it resolves inside the root whatever the root is.
		rel, err := relTo(path.Dir(name), strings.TrimPrefix(path.Clean(target), "/"))
		if err != nil {
			return err
		}
		target = rel
	}
	if err := p.checkLink(name, target); err != nil {
		return fmt.Errorf("symlink to %q: %w", hdr.Linkname, err)
	}
	if fi, err := p.root.Lstat(name); err == nil && fi.IsDir() {
		return fmt.Errorf("%s exists and is a directory", name)
	}
	tmp := tempName(name)
	if err := p.root.Symlink(target, tmp); err != nil {
		return fmt.Errorf("create symlink %s: %w", name, err)
	}
	if p.owners {
		_ = p.root.Lchown(tmp, hdr.Uid, hdr.Gid)
	}
	if err := p.root.Rename(tmp, name); err != nil {
		_ = p.root.Remove(tmp)
		return fmt.Errorf("place symlink %s: %w", name, err)
	}
	p.record(Record{Path: name, Kind: KindSymlink, Mode: 0o777, Target: target})
	return nil
}

// relTo returns the relative path from dir to target (both clean, relative to the root).
func relTo(dir, target string) (string, error) {
	if dir == "." {
		dir = ""
	}
	var from, to []string
	if dir != "" {
		from = strings.Split(dir, "/")
	}
	if target != "" && target != "." {
		to = strings.Split(target, "/")
	}
	i := 0
	for i < len(from) && i < len(to) && from[i] == to[i] {
		i++
	}
	var parts []string
	for range from[i:] {
		parts = append(parts, "..")
	}
	parts = append(parts, to[i:]...)
	if len(parts) == 0 {
		return ".", nil
	}
	return strings.Join(parts, "/"), nil
}

// checkLink refuses a symlink at name whose target leaves the root: ".." may only lead
// the target, and the resolved path, through the links that exist now, stays inside.
func (p *placer) checkLink(name, target string) error {
	if strings.HasPrefix(target, "/") {
		if !p.isSlash {
			return errors.New("absolute target points outside the root")
		}
		target = strings.TrimPrefix(target, "/")
		name = "x" // resolve from the root
	}
	seenNormal := false
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "..":
			if seenNormal {
				return errors.New(`".." after a path component in a link target refused`)
			}
		case "", ".":
		default:
			seenNormal = true
		}
	}
	hops := 0
	_, err := p.resolve(path.Dir(name), target, &hops)
	return err
}

// resolve walks target from dir (a path relative to the root) through existing
// symlinks and returns the resolved components; it fails if the walk leaves the root.
func (p *placer) resolve(dir, target string, hops *int) ([]string, error) {
	var stack []string
	if dir != "." && dir != "" {
		// The link's own directory may pass through symlinks too (e.g. lib -> usr/lib).
		var err error
		if stack, err = p.resolve(".", dir, hops); err != nil {
			return nil, err
		}
	}
	parts := strings.Split(target, "/")
	for i, c := range parts {
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return nil, errors.New("target leaves the root")
			}
			stack = stack[:len(stack)-1]
			continue
		}
		cur := strings.Join(append(append([]string{}, stack...), c), "/")
		fi, err := p.root.Lstat(cur)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			stack = append(stack, c)
			continue
		}
		if *hops++; *hops > maxLinkHops {
			return nil, errors.New("too many levels of symbolic links")
		}
		link, err := p.root.Readlink(cur)
		if err != nil {
			return nil, fmt.Errorf("read link %s: %w", cur, err)
		}
		base := strings.Join(stack, "/")
		if strings.HasPrefix(link, "/") {
			if !p.isSlash {
				return nil, fmt.Errorf("passes through %s, an absolute link out of the root", cur)
			}
			base, link = ".", strings.TrimPrefix(link, "/")
		}
		// Not path.Join: cleaning "link/.." lexically would skip resolving link.
		if rest := strings.Join(parts[i+1:], "/"); rest != "" {
			link += "/" + rest
		}
		return p.resolve(base, link, hops)
	}
	return stack, nil
}

func (p *placer) hardlink(name, linkname string) error {
	src, err := cleanEntry(linkname)
	if err != nil {
		return fmt.Errorf("hardlink to %q: %w", linkname, err)
	}
	i, ok := p.index[src]
	if !ok || p.records[i].Kind != KindFile {
		return fmt.Errorf("hardlink to %q: only links to regular files placed earlier by the same layer are allowed", linkname)
	}
	if fi, err := p.root.Lstat(src); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("hardlink to %q: it is no longer a regular file", linkname)
	}
	if fi, err := p.root.Lstat(name); err == nil && fi.IsDir() {
		return fmt.Errorf("%s exists and is a directory", name)
	}
	tmp := tempName(name)
	if err := p.root.Link(src, tmp); err != nil {
		return fmt.Errorf("hardlink %s to %s: %w", name, src, err)
	}
	if err := p.root.Rename(tmp, name); err != nil {
		_ = p.root.Remove(tmp)
		return fmt.Errorf("place hardlink %s: %w", name, err)
	}
	rec := p.records[i]
	p.record(Record{Path: name, Kind: KindHardlink, Mode: rec.Mode, Digest: rec.Digest, Target: src})
	return nil
}

// withinDeclared counts the entry against the layer's declared contents (nil:
// nothing declared, the pre-pass checked the layer): a layer that holds more
// than its build recorded stops here.
func (p *placer) withinDeclared(d *protocol.LayerContents, hdr *tar.Header) error {
	if d == nil {
		return nil
	}
	p.seenEntries++
	if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA {
		p.seenBytes += hdr.Size
	}
	if p.seenEntries > d.Entries || p.seenBytes > d.FileBytes {
		return fmt.Errorf("%w: the layer holds more than its build recorded (%d entries, %d bytes of files)", ErrLimit, d.Entries, d.FileBytes)
	}
	return checkNameLen(hdr.Name)
}

// checkDeclared checks a layer's declared contents against the bounds and the
// free space under root, before anything is placed.
func checkDeclared(d *protocol.LayerContents, root string, o options) error {
	if d.FileBytes < 0 || d.Entries < 0 || d.LongestPath < 0 {
		return fmt.Errorf("declared contents %+v: negative", *d)
	}
	if o.maxBytes > 0 && d.FileBytes > o.maxBytes {
		return fmt.Errorf("%w: %d bytes of files, more than %d (raise it with the image label dev.flotilla.unpack.max-bytes)", ErrLimit, d.FileBytes, o.maxBytes)
	}
	if o.maxEntries > 0 && d.Entries > o.maxEntries {
		return fmt.Errorf("%w: %d entries, more than %d (raise it with the image label dev.flotilla.unpack.max-entries)", ErrLimit, d.Entries, o.maxEntries)
	}
	if d.LongestPath > MaxPathLen {
		return fmt.Errorf("%w: a path of %d bytes, more than %d", ErrLimit, d.LongestPath, MaxPathLen)
	}
	free, err := o.freeSpace(root)
	if err != nil {
		return fmt.Errorf("free space under %s: %w", root, err)
	}
	if d.FileBytes > free-freeReserve {
		return fmt.Errorf("%w: %d bytes of files, %d bytes free under %s (keeping %d free)", ErrLimit, d.FileBytes, free, root, int64(freeReserve))
	}
	return nil
}
