package build

import (
	"archive/tar"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/flotilla-dev/flotilla/bundle/kubefile"
	"github.com/flotilla-dev/flotilla/bundle/recipe"
)

// maxTemplate bounds one template's size: templates travel inside the image config.
const maxTemplate = 256 << 10

// copyResult is what one COPY/ADD produces: layer entries and templates.
type copyResult struct {
	entries   []entry
	templates []recipe.Template
}

// collectCopy resolves the sources of a COPY/ADD inside the build context.
// Layers carry directory entries only for empty directories: the unpacker creates
// missing parents (0755), and directories that exist on the node keep their modes.
func (b *builder) collectCopy(in kubefile.Instruction, srcs []string, dest string) (*copyResult, error) {
	destDir := strings.HasSuffix(dest, "/") || len(srcs) > 1
	dest = path.Clean(dest)
	if !path.IsAbs(dest) {
		return nil, b.errf(in, "destination %q must be an absolute path on the node", dest)
	}
	byName := map[string]entry{}
	res := &copyResult{}
	add := func(e entry) {
		if in.HasChmod {
			e.mode = int64(in.Chmod)
		}
		byName[e.name] = e
	}
	addFile := func(src string, fi fs.FileInfo, target string, targetIsDir bool) error {
		name := fi.Name()
		if strings.HasSuffix(name, ".tmpl") {
			p := target
			if targetIsDir {
				p = path.Join(target, strings.TrimSuffix(name, ".tmpl"))
			}
			if fi.Size() > maxTemplate {
				return b.errf(in, "template %s is %d bytes; templates are limited to %d", src, fi.Size(), maxTemplate)
			}
			content, err := os.ReadFile(src)
			if err != nil {
				return b.errf(in, "read template: %v", err)
			}
			mode := uint32(fi.Mode().Perm())
			if in.HasChmod {
				mode = in.Chmod
			}
			role := in.Role
			if role == "" {
				role = recipe.RoleAll
			}
			res.templates = append(res.templates, recipe.Template{Role: role, Path: p, Mode: mode, ExplicitMode: in.HasChmod, Content: string(content), Seq: b.seq})
			return nil
		}
		p := target
		if targetIsDir {
			p = path.Join(target, name)
		}
		add(entry{name: strings.TrimPrefix(p, "/"), typ: tar.TypeReg, mode: fileMode(fi.Mode()), size: fi.Size(), src: src})
		return nil
	}
	for _, src := range srcs {
		matches, err := b.resolveSource(in, src)
		if err != nil {
			return nil, err
		}
		if len(matches) > 1 {
			destDir = true
		}
		for _, m := range matches {
			fi, err := os.Stat(m)
			if err != nil {
				return nil, b.errf(in, "%s: %v", src, err)
			}
			if !fi.IsDir() {
				if !fi.Mode().IsRegular() {
					return nil, b.errf(in, "%s is not a regular file, directory or symlink", src)
				}
				if err := addFile(m, fi, dest, destDir); err != nil {
					return nil, err
				}
				continue
			}
			err = walkEntries(m, func(p, rel string, fi fs.FileInfo, link string) error {
				target := path.Join(dest, rel)
				switch {
				case fi.Mode()&fs.ModeSymlink != 0:
					add(entry{name: strings.TrimPrefix(target, "/"), typ: tar.TypeSymlink, mode: 0o777, link: link})
				case fi.IsDir():
					add(entry{name: strings.TrimPrefix(target, "/"), typ: tar.TypeDir, mode: fileMode(fi.Mode())})
				default:
					return addFile(p, fi, path.Dir(target), true)
				}
				return nil
			})
			if err != nil {
				return nil, b.errf(in, "%s: %v", src, err)
			}
		}
	}
	for _, e := range byName {
		res.entries = append(res.entries, e)
	}
	return res, nil
}

// resolveSource returns the absolute paths a COPY source names (globs expanded),
// refusing anything outside the build context, through symlinks too.
func (b *builder) resolveSource(in kubefile.Instruction, src string) ([]string, error) {
	clean := filepath.Clean(strings.TrimPrefix(filepath.FromSlash(src), "/"))
	if clean == ".." || strings.HasPrefix(clean, ".."+string(filepath.Separator)) {
		return nil, b.errf(in, "%s is outside the build context %s: a Kubefile can only read files under it", src, b.opts.ContextDir)
	}
	abs := filepath.Join(b.ctxDir, clean)
	matches := []string{abs}
	if strings.ContainsAny(clean, "*?[") {
		var err error
		if matches, err = filepath.Glob(abs); err != nil {
			return nil, b.errf(in, "pattern %s: %v", src, err)
		}
		if len(matches) == 0 {
			return nil, b.errf(in, "%s matches no file in the build context %s", src, b.opts.ContextDir)
		}
	}
	out := make([]string, 0, len(matches))
	for _, m := range matches {
		real, err := filepath.EvalSymlinks(m)
		if err != nil {
			if os.IsNotExist(err) {
				return nil, b.errf(in, "%s: no such file in the build context %s", src, b.opts.ContextDir)
			}
			return nil, b.errf(in, "%s: %v", src, err)
		}
		rel, err := filepath.Rel(b.ctxDir, real)
		if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return nil, b.errf(in, "%s resolves to %s, outside the build context %s: a Kubefile can only read files under it", src, real, b.opts.ContextDir)
		}
		out = append(out, real)
	}
	return out, nil
}

// collectWorkspace lists what a build-time RUN wrote: files and symlinks, plus
// directories only when empty (a directory entry would reset an existing node
// directory's mode).
func collectWorkspace(dir string) ([]entry, error) {
	var out []entry
	err := walkEntries(dir, func(p, name string, fi fs.FileInfo, link string) error {
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			out = append(out, entry{name: name, typ: tar.TypeSymlink, mode: 0o777, link: link})
		case fi.IsDir():
			out = append(out, entry{name: name, typ: tar.TypeDir, mode: fileMode(fi.Mode())})
		default:
			out = append(out, entry{name: name, typ: tar.TypeReg, mode: fileMode(fi.Mode()), size: fi.Size(), src: p})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("workspace %s: %w", dir, err)
	}
	return out, nil
}

// walkEntries walks what is below dir in lexical order and calls visit with each
// path, its slash-separated name relative to dir, its info and, for a symlink, its
// target: for symlinks, regular files and empty directories only (a directory entry
// would reset an existing node directory's mode). Anything else is an error.
func walkEntries(dir string, visit func(p, rel string, fi fs.FileInfo, link string) error) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.IsDir():
			ents, err := os.ReadDir(p)
			if err != nil || len(ents) > 0 {
				return err
			}
		case !fi.Mode().IsRegular():
			return fmt.Errorf("%s: not a regular file, directory or symlink", p)
		}
		return visit(p, filepath.ToSlash(rel), fi, link)
	})
}
