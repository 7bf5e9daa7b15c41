package build

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/carry"
	"github.com/flotilla-dev/flotilla/bundle/kubefile"
	"github.com/flotilla-dev/flotilla/bundle/recipe"
)

// maxImageList bounds an IMAGE -f file.
const maxImageList = 1 << 20

// images handles IMAGE and ON role IMAGE: every reference (also those listed in -f
// files) is pulled into the build's transaction and recorded in the plan; with
// --from PATH, the one reference is read from an OCI image layout in the context.
func (b *builder) images(ctx context.Context, in kubefile.Instruction) error {
	role := in.Role
	if role == "" {
		role = recipe.RoleAll
	} else {
		b.addRole(role)
	}
	if in.ImageFrom != "" {
		if err := b.imageFromLayout(ctx, in, role); err != nil {
			return err
		}
		b.record(in, "")
		return nil
	}
	var refs []string
	for i := 0; i < len(in.Args); i++ {
		a, err := b.expand(in, in.Args[i])
		if err != nil {
			return err
		}
		if a != "-f" {
			refs = append(refs, a)
			continue
		}
		i++
		file, err := b.expand(in, in.Args[i])
		if err != nil {
			return err
		}
		listed, err := b.imageList(in, file)
		if err != nil {
			return err
		}
		refs = append(refs, listed...)
	}
	for _, ref := range refs {
		if err := b.carryImage(ctx, in, ref, role); err != nil {
			return err
		}
	}
	b.record(in, "")
	return nil
}

// imageList reads an IMAGE -f file: references separated by blanks or lines, # comments.
func (b *builder) imageList(in kubefile.Instruction, file string) ([]string, error) {
	paths, err := b.resolveSource(in, file)
	if err != nil {
		return nil, err
	}
	var refs []string
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, b.errf(in, "-f %s: %v", file, err)
		}
		if len(data) > maxImageList {
			return nil, b.errf(in, "-f %s: %d bytes, more than the %d an image list may have", file, len(data), maxImageList)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for n := 1; sc.Scan(); n++ {
			line, _, _ := strings.Cut(sc.Text(), "#")
			for _, w := range strings.Fields(line) {
				ref, err := kubefile.Expand(w, b.vars)
				if err != nil {
					return nil, b.errf(in, "%s:%d: %v", file, n, err)
				}
				if _, err := carry.ParseRef(ref); err != nil {
					return nil, b.errf(in, "%s:%d: %v", file, n, err)
				}
				refs = append(refs, ref)
			}
		}
	}
	return refs, nil
}

// carryImage pulls ref (once per build, whatever the number of platforms) and adds it
// to the plan for role; an image listed again only gains the role.
func (b *builder) carryImage(ctx context.Context, in kubefile.Instruction, ref, role string) error {
	r, err := carry.ParseRef(ref)
	if err != nil {
		return b.errf(in, "%v", err)
	}
	for i := range b.plan.Images {
		if b.plan.Images[i].Name == r.Name() {
			b.plan.Images[i].Roles = addImageRole(b.plan.Images[i].Roles, role)
			return nil
		}
	}
	ci, ok := b.pulled[r.Name()]
	if !ok {
		o := b.opts.Carry
		o.Progress = b.opts.Progress
		if o.Platform != nil && r.Digest != "" {
			slog.Warn("a digest reference keeps its whole index: the digest names it", "image", ref, "platform", o.Platform.String())
		}
		desc, err := carry.Pull(ctx, b.tx, r, o)
		if err != nil {
			return b.errf(in, "container image %s: %v", ref, err)
		}
		ci = recipe.ContainerImage{Ref: ref, Name: r.Name(), Digest: desc.Digest.String(), MediaType: string(desc.MediaType), Size: desc.Size}
		b.pulled[r.Name()] = ci
	}
	b.addImage(ci, role)
	return nil
}

// addImage adds a pulled image to the plan for role.
func (b *builder) addImage(ci recipe.ContainerImage, role string) {
	ci.Roles = []string{role}
	b.plan.Images = append(b.plan.Images, ci)
}

// imageFromLayout handles IMAGE --from PATH REF: the image is read from the OCI image
// layout (directory or tar) at PATH in the build context, verified blob by blob, and
// carried under REF with its digests unchanged. The layout is read at every build
// (what it holds is the cache key, as a COPY's file contents are); blobs the store
// already has are not read again. The same name carried twice must be the same image.
func (b *builder) imageFromLayout(ctx context.Context, in kubefile.Instruction, role string) error {
	from, err := b.expand(in, in.ImageFrom)
	if err != nil {
		return err
	}
	ref, err := b.expand(in, in.Args[0])
	if err != nil {
		return err
	}
	r, err := carry.ParseRef(ref)
	if err != nil {
		return b.errf(in, "%v", err)
	}
	paths, err := b.resolveSource(in, from)
	if err != nil {
		return err
	}
	if len(paths) != 1 {
		return b.errf(in, "--from %s matches %d files: name one OCI image layout", from, len(paths))
	}
	key := "layout\x00" + paths[0] + "\x00" + r.Name()
	ci, ok := b.pulled[key]
	if !ok {
		o := b.opts.Carry
		o.Progress = b.opts.Progress
		desc, err := carry.PullLayout(ctx, b.tx, paths[0], r, o)
		if err != nil {
			return b.errf(in, "container image %s --from %s: %v", ref, from, err)
		}
		ci = recipe.ContainerImage{Ref: ref, Name: r.Name(), Digest: desc.Digest.String(), MediaType: string(desc.MediaType), Size: desc.Size}
		b.pulled[key] = ci
	}
	for i := range b.plan.Images {
		if have := b.plan.Images[i]; have.Name == r.Name() {
			if have.Digest != ci.Digest {
				return b.errf(in, "container image %s --from %s is %s, but the image already carries %s as %s", ref, from, ci.Digest, have.Name, have.Digest)
			}
			b.plan.Images[i].Roles = addImageRole(have.Roles, role)
			return nil
		}
	}
	b.addImage(ci, role)
	return nil
}

func addImageRole(roles []string, role string) []string {
	if role == recipe.RoleAll {
		return []string{recipe.RoleAll}
	}
	for _, r := range roles {
		if r == role || r == recipe.RoleAll {
			return roles
		}
	}
	return append(roles, role)
}

// checkInherited makes sure every container image a base image carries is complete
// in the store (a cluster image pulled or loaded with it always is).
func (b *builder) checkInherited(in kubefile.Instruction, base string, images []recipe.ContainerImage) error {
	for _, c := range images {
		h, err := v1.NewHash(c.Digest)
		if err != nil {
			return b.errf(in, "base image %s carries %s with a bad digest: %v", base, c.Name, err)
		}
		cl, err := carry.Walk(carry.ReadBlob(b.tx.ReadBlob), v1.Descriptor{MediaType: types.MediaType(c.MediaType), Size: c.Size, Digest: h}, nil)
		if err != nil {
			return b.errf(in, "base image %s carries %s, but the store lacks part of it: %v (pull the base image again)", base, c.Name, err)
		}
		for _, bl := range cl.Blobs {
			if !b.tx.Has(bl.Digest) {
				return b.errf(in, "base image %s carries %s, but the store lacks its blob %s (pull the base image again)", base, c.Name, bl.Digest)
			}
		}
	}
	return nil
}

// discovered adds (with --add-discovered-images) the references found in the context
// that the Kubefile does not list, as images for every role.
func (b *builder) addDiscovered(ctx context.Context) error {
	for _, f := range b.found {
		if b.hasImage(f.Name) {
			continue
		}
		in := kubefile.Instruction{Line: 0, Command: kubefile.Image, Original: fmt.Sprintf("IMAGE %s # found in %s:%d", f.Ref, f.File, f.Line)}
		if err := b.carryImage(ctx, in, f.Ref, recipe.RoleAll); err != nil {
			return err
		}
		b.record(in, "")
	}
	return nil
}

func (b *builder) hasImage(name string) bool {
	for _, c := range b.plan.Images {
		if c.Name == name {
			return true
		}
	}
	return false
}
