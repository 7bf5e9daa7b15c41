package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/agent/unpack"
	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/controller/planner"
)

// templateFiles lists the image's templates with the mode the planner gives their
// files (when no Config of a Clusterfile replaces them) and why.
func templateFiles(p *recipe.Recipe) ([]inspectFile, error) {
	var out []inspectFile
	for _, t := range p.Templates {
		choice, err := planner.TemplateMode(t)
		if err != nil {
			return nil, fmt.Errorf("template %s of the image: %w (rebuild the image with the template fixed)", t.Path, err)
		}
		f := inspectFile{Path: t.Path, Role: t.Role, Kind: "template", Mode: octal(choice.Mode), Why: choice.Why, Size: int64(len(t.Content))}
		if choice.Mode != t.Mode {
			f.ImageMode = octal(t.Mode)
		}
		out = append(out, f)
	}
	return out, nil
}

// findTemplateFile returns the entry templateFiles made for t.
func findTemplateFile(files []inspectFile, t recipe.Template) inspectFile {
	for _, f := range files {
		if f.Kind == "template" && f.Path == t.Path && f.Role == t.Role {
			return f
		}
	}
	return inspectFile{Mode: octal(t.Mode)}
}

// layerFiles lists every entry of every layer of img as a node places it. A layer with
// more entries than nodes accept (the image's dev.flotilla.unpack.max-entries, else
// the agent's default) is an error: nodes would refuse it, and the listing stays bounded.
func layerFiles(img v1.Image, p *recipe.Recipe) ([]inspectFile, error) {
	policy, err := p.Unpack()
	if err != nil {
		return nil, err
	}
	maxEntries := unpack.DefaultMaxEntries
	if policy.MaxEntries > 0 {
		maxEntries = policy.MaxEntries
	}
	read := map[string][]inspectFile{}
	var out []inspectFile
	for _, l := range p.Layers {
		entries, ok := read[l.Digest]
		if !ok {
			if entries, err = readLayerFiles(img, l.Digest, maxEntries, policy.KeepSetuid); err != nil {
				return nil, err
			}
			read[l.Digest] = entries
		}
		for _, e := range entries {
			e.Role = l.Role
			out = append(out, e)
		}
	}
	return out, nil
}

func readLayerFiles(img v1.Image, digest string, maxEntries int, keepSetuid bool) ([]inspectFile, error) {
	h, err := v1.NewHash(digest)
	if err != nil {
		return nil, fmt.Errorf("layer %s in the image's plan: %w", digest, err)
	}
	layer, err := img.LayerByDigest(h)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w (is the image complete in the store? pull or load it again)", digest, err)
	}
	rc, err := layer.Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("read layer %s: %w", digest, err)
	}
	defer rc.Close()
	var out []inspectFile
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read layer %s: %w", digest, err)
		}
		if len(out) == maxEntries {
			return nil, fmt.Errorf("layer %s has more than %d entries: nodes refuse it (the image label %s raises the bound)", digest, maxEntries, recipe.LabelUnpackMaxEntries)
		}
		out = append(out, layerEntry(hdr, digest, keepSetuid))
	}
}

// layerEntry describes one tar entry as the agent places it (agent/unpack).
func layerEntry(hdr *tar.Header, digest string, keepSetuid bool) inspectFile {
	f := inspectFile{Path: "/" + path.Clean(hdr.Name), Layer: digest}
	switch hdr.Typeflag {
	case tar.TypeReg:
		f.Kind, f.Size = "file", hdr.Size
	case tar.TypeDir:
		f.Kind = "dir"
	case tar.TypeSymlink:
		f.Kind, f.Target = "symlink", hdr.Linkname
	case tar.TypeLink:
		f.Kind, f.Target = "hardlink", "/"+path.Clean(hdr.Linkname)
	default:
		f.Kind = fmt.Sprintf("type %q (refused by nodes)", hdr.Typeflag)
	}
	mode := hdr.FileInfo().Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	placed := mode
	if !keepSetuid {
		placed &^= fs.ModeSetuid | fs.ModeSetgid
	}
	f.Mode = octal(unixMode(placed))
	if placed != mode {
		f.ImageMode = octal(unixMode(mode))
		f.Why = "setuid/setgid dropped (the image label " + recipe.LabelUnpackSetuid + "=keep keeps them)"
	}
	return f
}

// unixMode turns Go's mode bits into the octal ones chmod takes.
func unixMode(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

func octal(m uint32) string { return fmt.Sprintf("%04o", m) }

func fileSize(f inspectFile) string {
	if f.Kind != "file" {
		return ""
	}
	return imgSize(f.Size)
}

func fileName(f inspectFile) string {
	name := f.Path
	if f.Target != "" {
		name += " -> " + f.Target
	}
	return name
}
