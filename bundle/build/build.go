// Package build turns a Kubefile and its context directory into a cluster image in the
// local store: reproducible OCI layers, a layer cache, and the plan in the config.
package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flotilla-dev/flotilla/bundle/carry"
	"github.com/flotilla-dev/flotilla/bundle/kubefile"
	"github.com/flotilla-dev/flotilla/bundle/progress"
	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

// Options configures one build.
type Options struct {
	ContextDir string            // build context; COPY reads only under it
	Kubefile   string            // path of the Kubefile; default <ContextDir>/Kubefile
	Tags       []string          // names to give the result (none: untagged)
	BuildArgs  map[string]string // --build-arg values for ARG
	Platforms  []v1.Platform     // empty: the host's; more than one gives an OCI index
	NoCache    bool              // run build-time RUN again even when cached
	// Epoch is the time written into layers and config (SOURCE_DATE_EPOCH); zero is 1970.
	Epoch time.Time
	// FetchBase pulls a FROM image missing from the store; nil makes that an error.
	FetchBase func(ctx context.Context, ref string) error
	// RunOutput receives the output of build-time RUN; nil discards it.
	RunOutput io.Writer
	// RunTimeout bounds each build-time RUN; zero means 30 minutes.
	RunTimeout time.Duration
	Progress   progress.Reporter
	// Carry configures how IMAGE pulls container images: registry credentials (Docker's
	// config by default), plain HTTP, and Platform to narrow multi-arch indexes.
	Carry carry.Options
	// AddDiscoveredImages carries the image references found in the context's YAML,
	// JSON and templates that no IMAGE lists (otherwise they are only warned about).
	AddDiscoveredImages bool
}

// Result describes the built image.
type Result struct {
	Descriptor v1.Descriptor             // manifest (one platform) or index (several)
	Plans      map[string]*recipe.Recipe // by platform string
	Images     map[string]v1.Hash        // manifest digest by platform string
	Layers     int                       // layers in the image(s)
	NewBlobs   int                       // blobs this build added to the store
	// Containers are the container images carried (union over platforms).
	Containers []recipe.ContainerImage
	// Undeclared are image references found in the context that no IMAGE lists (and
	// that AddDiscoveredImages did not add).
	Undeclared []carry.Found
}

// Build parses the Kubefile, builds the image for every platform, and commits it to st
// under opts.Tags. A build that fails leaves the store unchanged.
func Build(ctx context.Context, st *store.Store, opts Options) (*Result, error) {
	if opts.ContextDir == "" {
		return nil, errors.New("build: no context directory given")
	}
	ctxDir, err := filepath.Abs(opts.ContextDir)
	if err == nil {
		ctxDir, err = filepath.EvalSymlinks(ctxDir)
	}
	if err != nil {
		return nil, fmt.Errorf("build context %s: %w", opts.ContextDir, err)
	}
	kfPath := opts.Kubefile
	if kfPath == "" {
		kfPath = filepath.Join(opts.ContextDir, "Kubefile")
	}
	f, err := os.Open(kfPath)
	if err != nil {
		return nil, fmt.Errorf("open Kubefile: %w (pass -f FILE, or put a Kubefile in %s)", err, opts.ContextDir)
	}
	kf, err := kubefile.Parse(kfPath, f)
	f.Close()
	if err != nil {
		return nil, err
	}
	for _, t := range opts.Tags {
		if _, err := store.NormalizeName(t); err != nil {
			return nil, fmt.Errorf("-t %s: %w", t, err)
		}
	}
	platforms := opts.Platforms
	if len(platforms) == 0 {
		platforms = []v1.Platform{store.HostPlatform()}
	}
	if opts.Epoch.IsZero() {
		opts.Epoch = time.Unix(0, 0).UTC()
	}
	tx, err := st.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Abort()
	defer progress.OrNop(opts.Progress).Wait()

	found, err := carry.Discover(ctxDir)
	if err != nil {
		slog.Warn("could not scan the build context for image references", "err", err)
	}
	res := &Result{Plans: map[string]*recipe.Recipe{}, Images: map[string]v1.Hash{}}
	var adds []mutate.IndexAddendum
	var imgs []v1.Image
	var last v1.Image
	pending := map[string]any{}
	pulled := map[string]recipe.ContainerImage{}
	for _, p := range platforms {
		b := &builder{opts: opts, st: st, tx: tx, kf: kf, ctxDir: ctxDir, platform: p, mtime: opts.Epoch, pending: pending, pulled: pulled, found: found}
		img, pl, err := b.run(ctx)
		if err != nil {
			return nil, err
		}
		digest, err := img.Digest()
		if err != nil {
			return nil, err
		}
		res.Plans[p.String()] = pl
		res.Images[p.String()] = digest
		res.Layers += len(pl.Layers)
		pp := p
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &pp}})
		imgs = append(imgs, img)
		last = img
		res.Containers = unionImages(res.Containers, pl.Images)
	}
	for _, f := range found {
		if !containsImage(res.Containers, f.Name) {
			res.Undeclared = append(res.Undeclared, f)
			slog.Warn("the build context names a container image that no IMAGE carries (add it, or build with --add-discovered-images)", "image", f.Ref, "file", f.File, "line", f.Line)
		}
	}
	var desc v1.Descriptor
	if len(res.Containers) > 0 {
		desc, err = putCarrying(ctx, tx, imgs, platforms, res.Containers)
	} else if len(platforms) == 1 {
		desc, err = tx.PutImage(ctx, last, nil)
		if err == nil {
			desc.Platform = &platforms[0]
		}
	} else {
		idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
		desc, err = tx.PutIndex(ctx, idx, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("write image: %w", err)
	}
	res.NewBlobs = tx.Staged()
	tags := map[string]v1.Descriptor{}
	for _, t := range opts.Tags {
		tags[t] = desc
	}
	if len(tags) == 0 {
		tags[""] = desc
	}
	if err := tx.Commit(ctx, tags); err != nil {
		return nil, err
	}
	for k, v := range pending {
		if err := st.CachePut(k, v); err != nil {
			slog.Warn("could not write the layer cache", "err", err)
		}
	}
	if err := st.RecordBuild(ctx, opts.ContextDir, desc); err != nil {
		slog.Warn("could not record the build context", "dir", opts.ContextDir, "err", err)
	}
	res.Descriptor = desc
	return res, nil
}

// builder builds one platform.
type builder struct {
	opts     Options
	st       *store.Store
	tx       *store.Txn
	kf       *kubefile.Kubefile
	ctxDir   string
	platform v1.Platform
	mtime    time.Time
	// pending cache entries, written only once the build is committed so a failed
	// build leaves the store unchanged.
	pending map[string]any
	// pulled holds the container images pulled so far, by name (shared by platforms).
	pulled map[string]recipe.ContainerImage
	found  []carry.Found // image references in the context (carry.Discover)

	seq        int
	vars       map[string]string // ARG and ENV values for expansion
	argSet     map[string]bool
	envKeys    []string // ENV names in order
	plan       *recipe.Recipe
	base       v1.Image
	layers     []v1.Layer
	cfgHistory []v1.History
	labels     map[string]string
}

func (b *builder) errf(in kubefile.Instruction, format string, a ...any) error {
	return fmt.Errorf("%s:%d: %s: %s", b.kf.File, in.Line, in.Command, fmt.Sprintf(format, a...))
}

func (b *builder) run(ctx context.Context) (v1.Image, *recipe.Recipe, error) {
	b.vars = map[string]string{}
	b.argSet = map[string]bool{}
	b.labels = map[string]string{}
	b.plan = &recipe.Recipe{SchemaVersion: recipe.SchemaVersion, Env: map[string]string{}, Labels: map[string]string{}}
	b.seq = 1
	for _, in := range b.kf.Instructions {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		if err := b.step(ctx, in); err != nil {
			return nil, nil, err
		}
		b.seq++
	}
	if b.opts.AddDiscoveredImages {
		if err := b.addDiscovered(ctx); err != nil {
			return nil, nil, err
		}
	}
	for k := range b.opts.BuildArgs {
		if !b.argSet[k] {
			slog.Warn("build argument not declared by any ARG", "arg", k, "kubefile", b.kf.File)
		}
	}
	img, err := b.image()
	return img, b.plan, err
}

func (b *builder) expand(in kubefile.Instruction, s string) (string, error) {
	out, err := kubefile.Expand(s, b.vars)
	if err != nil {
		return "", b.errf(in, "%v", err)
	}
	return out, nil
}

func (b *builder) addRole(r string) {
	for _, have := range b.plan.Roles {
		if have == r {
			return
		}
	}
	b.plan.Roles = append(b.plan.Roles, r)
}

func (b *builder) record(in kubefile.Instruction, layer string) {
	b.plan.History = append(b.plan.History, recipe.HistoryEntry{Instruction: in.Original, Layer: layer})
	b.cfgHistory = append(b.cfgHistory, v1.History{Created: v1.Time{Time: b.mtime}, CreatedBy: in.Original, Comment: "flotilla", EmptyLayer: layer == ""})
}

func (b *builder) step(ctx context.Context, in kubefile.Instruction) error {
	switch in.Command {
	case kubefile.From:
		ref, err := b.expand(in, in.Args[0])
		if err != nil {
			return err
		}
		if ref != "scratch" {
			if err := b.from(ctx, in, ref); err != nil {
				return err
			}
		}
		b.record(in, "")
	case kubefile.Arg:
		kv := in.Pairs[0]
		b.argSet[kv.Key] = true
		if v, ok := b.opts.BuildArgs[kv.Key]; ok {
			b.vars[kv.Key] = v
		} else if kv.Set {
			v, err := b.expand(in, kv.Value)
			if err != nil {
				return err
			}
			b.vars[kv.Key] = v
		}
	case kubefile.Env:
		for _, kv := range in.Pairs {
			v, err := b.expand(in, kv.Value)
			if err != nil {
				return err
			}
			if _, seen := b.plan.Env[kv.Key]; !seen {
				b.envKeys = append(b.envKeys, kv.Key)
			}
			b.plan.Env[kv.Key], b.vars[kv.Key] = v, v
		}
		b.record(in, "")
	case kubefile.Label:
		for _, kv := range in.Pairs {
			v, err := b.expand(in, kv.Value)
			if err != nil {
				return err
			}
			b.plan.Labels[kv.Key], b.labels[kv.Key] = v, v
		}
		b.record(in, "")
	case kubefile.Copy, kubefile.Add:
		return b.copy(in)
	case kubefile.Run:
		if in.Role != "" {
			b.addRole(in.Role)
			b.plan.Steps = append(b.plan.Steps, recipe.Step{Role: in.Role, Kind: recipe.KindRun, Command: in.Args[0], Line: in.Line, Seq: b.seq})
			b.record(in, "")
			return nil
		}
		return b.buildRun(ctx, in)
	case kubefile.Service:
		b.addRole(in.Role)
		b.plan.Steps = append(b.plan.Steps, recipe.Step{Role: in.Role, Kind: recipe.KindService, Command: in.Args[0], Line: in.Line, Seq: b.seq})
		b.record(in, "")
	case kubefile.Cmd:
		b.plan.Cmd = &recipe.Step{Role: recipe.RoleMaster0, Kind: recipe.KindRun, Command: in.Args[0], Line: in.Line, Seq: b.seq}
		b.record(in, "")
	case kubefile.Cleanup:
		role := in.Role
		if role == "" {
			role = recipe.RoleAll
		} else {
			b.addRole(role)
		}
		b.plan.Cleanup = append(b.plan.Cleanup, recipe.Step{Role: role, Kind: recipe.KindRun, Command: in.Args[0], Line: in.Line, Seq: b.seq})
		b.record(in, "")
	case kubefile.Quorum:
		b.addRole(in.Args[0])
		if !contains(b.plan.Quorum, in.Args[0]) {
			b.plan.Quorum = append(b.plan.Quorum, in.Args[0])
		}
		b.record(in, "")
	case kubefile.Join, kubefile.Leave, kubefile.Backup, kubefile.Restore:
		b.addRole(in.Role)
		st := recipe.Step{Role: in.Role, Kind: recipe.KindRun, Command: in.Args[0], Line: in.Line, Seq: b.seq}
		switch in.Command {
		case kubefile.Join:
			b.plan.Join = append(b.plan.Join, st)
		case kubefile.Leave:
			b.plan.Leave = append(b.plan.Leave, st)
		case kubefile.Backup:
			b.plan.Backup = &st
		case kubefile.Restore:
			b.plan.Restore = append(b.plan.Restore, st)
		}
		b.record(in, "")
	case kubefile.Image:
		return b.images(ctx, in)
	default:
		return b.errf(in, "not supported by this builder")
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (b *builder) copy(in kubefile.Instruction) error {
	args := make([]string, len(in.Args))
	for i, a := range in.Args {
		v, err := b.expand(in, a)
		if err != nil {
			return err
		}
		args[i] = v
	}
	role := in.Role
	if role == "" {
		role = recipe.RoleAll
	} else {
		b.addRole(role)
	}
	res, err := b.collectCopy(in, args[:len(args)-1], args[len(args)-1])
	if err != nil {
		return err
	}
	b.plan.Templates = append(b.plan.Templates, res.templates...)
	if len(res.entries) == 0 {
		b.record(in, "")
		return nil
	}
	return b.addLayer(in, role, res.entries)
}

func (b *builder) addLayer(in kubefile.Instruction, role string, entries []entry) error {
	label := in.Original
	if len(label) > 40 {
		label = label[:37] + "..."
	}
	layer, info, err := b.makeLayer(label, entries)
	if err != nil {
		return b.errf(in, "%v", err)
	}
	b.layers = append(b.layers, layer)
	b.plan.Layers = append(b.plan.Layers, recipe.Layer{Digest: info.Digest, DiffID: info.DiffID, Size: info.Size, Role: role, Instruction: in.Original, Seq: b.seq, Contents: info.Contents})
	b.record(in, info.Digest)
	return nil
}

// image assembles the OCI image: base layers, new layers, config with the plan label.
func (b *builder) image() (v1.Image, error) {
	img := b.base
	if img == nil {
		img = mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	}
	adds := make([]mutate.Addendum, len(b.layers))
	for i, l := range b.layers {
		adds[i] = mutate.Addendum{Layer: l, MediaType: types.OCILayer}
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		return nil, fmt.Errorf("assemble image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("assemble image: %w", err)
	}
	cfg := cf.DeepCopy()
	cfg.Architecture, cfg.OS, cfg.Variant = b.platform.Architecture, b.platform.OS, b.platform.Variant
	cfg.Created = v1.Time{Time: b.mtime}
	// mutate.Append added one history entry per layer; ours describe every instruction.
	cfg.History = append(cfg.History[:len(cfg.History)-len(adds)], b.cfgHistory...)
	// Inherited ENV first (sorted), then this Kubefile's in declaration order.
	var keys []string
	for k := range b.plan.Env {
		if !contains(b.envKeys, k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	env := make([]string, 0, len(b.plan.Env))
	for _, k := range append(keys, b.envKeys...) {
		env = append(env, k+"="+b.plan.Env[k])
	}
	cfg.Config.Env = env
	labels := map[string]string{}
	for k, v := range cfg.Config.Labels {
		labels[k] = v
	}
	for k, v := range b.labels {
		labels[k] = v
	}
	enc, err := b.plan.Encode()
	if err != nil {
		return nil, err
	}
	labels[recipe.LabelKey] = enc
	cfg.Config.Labels = labels
	return mutate.ConfigFile(img, cfg)
}

// from makes the base image's layers, history and plan this image's start.
func (b *builder) from(ctx context.Context, in kubefile.Instruction, ref string) error {
	p := b.platform
	img, _, err := b.st.ResolvePlatform(ref, &p)
	if errors.Is(err, store.ErrNotFound) && b.opts.FetchBase != nil {
		if ferr := b.opts.FetchBase(ctx, ref); ferr != nil {
			return b.errf(in, "base image %s: %v", ref, ferr)
		}
		img, _, err = b.st.ResolvePlatform(ref, &p)
	}
	if err != nil {
		return b.errf(in, "base image %s: %v (pull or build it first)", ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return b.errf(in, "base image %s: %v", ref, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return b.errf(in, "base image %s: %v", ref, err)
	}
	base, err := store.Plan(img)
	if err != nil {
		// A plain OCI image: its layers go to every role.
		base = &recipe.Recipe{SchemaVersion: recipe.SchemaVersion}
		for i, l := range layers {
			d, _ := l.Digest()
			id, _ := l.DiffID()
			sz, _ := l.Size()
			base.Layers = append(base.Layers, recipe.Layer{Digest: d.String(), DiffID: id.String(), Size: sz, Role: recipe.RoleAll, Instruction: fmt.Sprintf("FROM %s (layer %d)", ref, i+1)})
		}
	}
	if len(base.Layers) != len(layers) {
		return b.errf(in, "base image %s: its plan names %d layers but the image has %d", ref, len(base.Layers), len(layers))
	}
	b.base = img
	b.plan.Env, b.plan.Labels = orEmpty(base.Env), orEmpty(base.Labels)
	for k, v := range base.Env {
		b.vars[k] = v
	}
	for k, v := range cf.Config.Labels {
		if k != recipe.LabelKey {
			b.labels[k] = v
		}
	}
	b.plan.Roles = append(b.plan.Roles, base.Roles...)
	b.plan.Layers = append(b.plan.Layers, base.Layers...)
	b.plan.Templates = append(b.plan.Templates, base.Templates...)
	b.plan.Steps = append(b.plan.Steps, base.Steps...)
	b.plan.Cmd = base.Cmd
	b.plan.Cleanup = append(b.plan.Cleanup, base.Cleanup...)
	b.plan.Quorum = append(b.plan.Quorum, base.Quorum...)
	b.plan.Join = append(b.plan.Join, base.Join...)
	b.plan.Leave = append(b.plan.Leave, base.Leave...)
	b.plan.Backup = base.Backup
	b.plan.Restore = append(b.plan.Restore, base.Restore...)
	if err := b.checkInherited(in, ref, base.Images); err != nil {
		return err
	}
	b.plan.Images = append(b.plan.Images, base.Images...)
	b.plan.History = append(b.plan.History, base.History...)
	maxSeq := 0
	for _, l := range base.Layers {
		maxSeq = max(maxSeq, l.Seq)
	}
	for _, t := range base.Templates {
		maxSeq = max(maxSeq, t.Seq)
	}
	for _, s := range base.Steps {
		maxSeq = max(maxSeq, s.Seq)
	}
	b.seq = max(b.seq, maxSeq+1)
	return nil
}

func orEmpty(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// ParsePlatforms parses "linux/amd64,linux/arm64/v8".
func ParsePlatforms(s string) ([]v1.Platform, error) {
	var out []v1.Platform
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := v1.ParsePlatform(f)
		if err != nil || p.OS == "" || p.Architecture == "" {
			return nil, fmt.Errorf("platform %q: want os/arch[/variant], e.g. linux/amd64", f)
		}
		out = append(out, *p)
	}
	return out, nil
}

// putCarrying stages the platform images and the cluster image's index that lists
// them and the carried container images (see carry.Index).
func putCarrying(ctx context.Context, tx *store.Txn, imgs []v1.Image, platforms []v1.Platform, images []recipe.ContainerImage) (v1.Descriptor, error) {
	var descs []v1.Descriptor
	for i, img := range imgs {
		d, err := tx.PutImage(ctx, img, nil)
		if err != nil {
			return v1.Descriptor{}, err
		}
		p := platforms[i]
		d.Platform = &p
		descs = append(descs, d)
	}
	raw, desc, err := carry.Index(descs, images)
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := tx.PutBlob(desc.Digest, desc.Size, bytes.NewReader(raw)); err != nil {
		return v1.Descriptor{}, err
	}
	return desc, nil
}

// unionImages adds the images of b missing from a (by name) and merges roles.
func unionImages(a, b []recipe.ContainerImage) []recipe.ContainerImage {
	for _, c := range b {
		found := false
		for i := range a {
			if a[i].Name == c.Name {
				found = true
				for _, r := range c.Roles {
					a[i].Roles = addImageRole(a[i].Roles, r)
				}
			}
		}
		if !found {
			c.Roles = append([]string(nil), c.Roles...)
			a = append(a, c)
		}
	}
	return a
}

func containsImage(list []recipe.ContainerImage, name string) bool {
	for _, c := range list {
		if c.Name == name {
			return true
		}
	}
	return false
}
