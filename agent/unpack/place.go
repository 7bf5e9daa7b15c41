package unpack

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"
)

// PlaceFile writes content at p (absolute on the node, i.e. relative to root) with mode,
// atomically, creating missing parent directories. It returns what it placed: the
// directories it created and the file.
func PlaceFile(root, p string, mode fs.FileMode, content []byte) ([]Record, error) {
	name, err := cleanEntry(strings.TrimPrefix(p, "/"))
	if err != nil || name == "" {
		if err == nil {
			err = errors.New("empty path")
		}
		return nil, fmt.Errorf("place %s: %w", p, err)
	}
	pl, err := newPlacer(root, false)
	if err != nil {
		return nil, err
	}
	defer pl.root.Close()
	if err := pl.mkdirs(path.Dir(name), 0o755); err != nil {
		return nil, fmt.Errorf("place %s: %w", p, err)
	}
	if err := pl.writeFile(name, mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky), bytes.NewReader(content), nil); err != nil {
		return nil, fmt.Errorf("place %s: %w", p, err)
	}
	var out []Record
	for _, r := range pl.records {
		if r.Kind != KindDir || r.Created {
			out = append(out, r)
		}
	}
	return out, nil
}

// Remove undoes records placed under root: files, hardlinks and symlinks first (in
// reverse order), then the directories that were created by the placement, deepest
// first, if they are empty. A file whose content changed since it was placed (another
// layer or an operator wrote it) is kept and returned in kept; paths already gone are
// fine.
func Remove(root string, records []Record) (kept []string, err error) {
	r, err := os.OpenRoot(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open root %s: %w", root, err)
	}
	defer r.Close()
	var errs []error
	var dirs []string
	for i := len(records) - 1; i >= 0; i-- {
		rec := records[i]
		name, cerr := cleanEntry(rec.Path)
		if cerr != nil || name == "" {
			errs = append(errs, fmt.Errorf("remove %q: %v", rec.Path, cerr))
			continue
		}
		fi, lerr := r.Lstat(name)
		if errors.Is(lerr, fs.ErrNotExist) {
			continue
		}
		if lerr != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", name, lerr))
			continue
		}
		switch rec.Kind {
		case KindDir:
			if rec.Created && fi.IsDir() {
				dirs = append(dirs, name)
			}
			continue
		case KindSymlink:
			if target, _ := r.Readlink(name); fi.Mode()&fs.ModeSymlink == 0 || target != rec.Target {
				kept = append(kept, name)
				continue
			}
		case KindFile, KindHardlink:
			if !fi.Mode().IsRegular() || !sameDigest(r, name, rec.Digest) {
				kept = append(kept, name)
				continue
			}
		default:
			errs = append(errs, fmt.Errorf("remove %s: unknown record kind %q", name, rec.Kind))
			continue
		}
		if err := r.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", name, err))
		}
	}
	sort.SliceStable(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
	for _, d := range dirs {
		if err := r.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) && !isNotEmpty(err) {
			errs = append(errs, fmt.Errorf("remove directory %s: %w", d, err))
		}
	}
	return kept, errors.Join(errs...)
}

func sameDigest(r *os.Root, name, digest string) bool {
	f, err := r.Open(name)
	if err != nil {
		return false
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false
	}
	return "sha256:"+hex.EncodeToString(h.Sum(nil)) == digest
}

func isNotEmpty(err error) bool {
	return errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST)
}
