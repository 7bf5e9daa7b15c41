package main

import (
	"cmp"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/protocol"
)

// inspectOutput is `flotilla inspect -o json`.
type inspectOutput struct {
	Name      string         `json:"name,omitempty"`
	Digest    string         `json:"digest"`    // what the name points at
	Manifest  string         `json:"manifest"`  // the platform image shown
	Platform  string         `json:"platform"`  // of the image shown
	Platforms []string       `json:"platforms"` // all platforms of the image
	Created   string         `json:"created,omitempty"`
	Plan      *recipe.Recipe `json:"plan"`
	// Files are the files the image places with the mode a node gets them with: every
	// template, and with --files every layer entry.
	Files     []inspectFile   `json:"files"`
	Config    *v1.ConfigFile  `json:"config,omitempty"`
	Manifests []v1.Descriptor `json:"manifests,omitempty"`
}

// inspectFile is one file the image places on its role's nodes.
type inspectFile struct {
	Path string `json:"path"` // absolute on the node
	Role string `json:"role"`
	Kind string `json:"kind"` // template, file, dir, symlink, hardlink
	// Mode is the mode a node gets it with (octal): for a template the planner's
	// choice (controller/planner's mode.go), for a layer entry the tar's mode less
	// what the agent drops (setuid and setgid unless the image keeps them).
	Mode string `json:"mode"`
	Why  string `json:"why,omitempty"` // why it gets Mode, where that is not simply the image's
	// ImageMode is the mode the image records, when a node gets another one.
	ImageMode string `json:"imageMode,omitempty"`
	Layer     string `json:"layer,omitempty"` // a layer entry's layer digest
	Size      int64  `json:"size,omitempty"`
	Target    string `json:"target,omitempty"` // of a symlink or hardlink
}

func newInspectCmd() *cobra.Command {
	var storeDir, output, platform string
	var files bool
	cmd := &cobra.Command{
		Use:   "inspect IMAGE|DIR",
		Short: "Show a cluster image's plan: roles, steps, layers per role, templates, carried images",
		Long: `inspect shows what a cluster image does at rollout: its roles, the steps of each role,
the layers each role fetches (with sizes), the templates rendered per node and the
container images it carries. IMAGE is a name or digest; DIR is a build context, meaning
the image last built from it.

Each template shows the mode nodes get its file with and why: a template that reads
env (which may hold secrets) is readable by its owner only unless the Kubefile chose
a mode (COPY --chmod). --files also lists every file of every layer with its mode.`,
		Example: "  flotilla inspect examples/hello\n  flotilla inspect registry.local/etcd-cluster:3.4 -o json\n  flotilla inspect app:1 --platform linux/arm64\n  flotilla inspect app:1 --files",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := imgCheckOutput(output); err != nil {
				return err
			}
			st, err := openImageStore(storeDir)
			if err != nil {
				return err
			}
			d, err := lookupStoreImage(st, args[0])
			if err != nil {
				return err
			}
			var plat *v1.Platform
			if platform != "" {
				if plat, err = v1.ParsePlatform(platform); err != nil {
					return fmt.Errorf("--platform %q: %w", platform, err)
				}
			}
			img, mdigest, err := st.ResolvePlatform(d.Digest.String(), plat)
			if err != nil {
				return err
			}
			cf, err := img.ConfigFile()
			if err != nil {
				return err
			}
			p, err := store.Plan(img)
			if err != nil {
				return err
			}
			out := inspectOutput{Name: imgNamesOf(st, args[0], d), Digest: d.Digest.String(), Manifest: mdigest.String(), Platform: cf.OS + "/" + cf.Architecture + imgVariant(cf.Variant), Plan: p, Created: cf.Created.UTC().Format("2006-01-02T15:04:05Z")}
			out.Platforms = describeImage(st, store.Entry{Descriptor: d}).Platforms
			if out.Files, err = templateFiles(p); err != nil {
				return err
			}
			if files {
				lf, err := layerFiles(img, p)
				if err != nil {
					return err
				}
				out.Files = append(out.Files, lf...)
			}
			if output == "json" {
				out.Config = cf
				return imgWriteJSON(cmd.OutOrStdout(), out)
			}
			return printImageInspect(cmd.OutOrStdout(), out)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	cmd.Flags().StringVar(&platform, "platform", "", "platform of a multi-arch image to show (default: this machine's)")
	cmd.Flags().BoolVar(&files, "files", false, "also list every file of every layer with the mode nodes get it with")
	addImageStoreFlag(cmd, &storeDir)
	return cmd
}

func imgNamesOf(st *store.Store, arg string, d v1.Descriptor) string {
	entries, _ := st.List()
	var names []string
	for _, e := range entries {
		if e.Descriptor.Digest == d.Digest && e.Name != "" {
			names = append(names, e.Name)
		}
	}
	return strings.Join(names, ", ")
}

func printImageInspect(w io.Writer, o inspectOutput) error {
	p := o.Plan
	fmt.Fprintf(w, "Name:      %s\nDigest:    %s\nPlatform:  %s (image has %s)\nManifest:  %s\n", imgOrNone(o.Name), o.Digest, o.Platform, imgJoin(o.Platforms), o.Manifest)
	if len(p.Labels) > 0 {
		fmt.Fprintln(w, "Labels:")
		for _, k := range imgSortedKeys(p.Labels) {
			fmt.Fprintf(w, "  %s=%s\n", k, p.Labels[k])
		}
	}
	if len(p.Env) > 0 {
		fmt.Fprintln(w, "Env defaults:")
		for _, k := range imgSortedKeys(p.Env) {
			fmt.Fprintf(w, "  %s=%s\n", k, p.Env[k])
		}
	}
	roles := append([]string{recipe.RoleAll}, p.Roles...)
	fmt.Fprintf(w, "Roles:     %s\n", imgJoin(p.Roles))
	for i, r := range roles {
		if i > 0 && r == recipe.RoleAll {
			continue
		}
		var layers []recipe.Layer
		var steps []recipe.Step
		var tmpls []recipe.Template
		for _, l := range p.Layers {
			if l.Role == r {
				layers = append(layers, l)
			}
		}
		for _, s := range p.Steps {
			if s.Role == r {
				steps = append(steps, s)
			}
		}
		for _, t := range p.Templates {
			if t.Role == r {
				tmpls = append(tmpls, t)
			}
		}
		if len(layers)+len(steps)+len(tmpls) == 0 {
			continue
		}
		var total int64
		for _, l := range layers {
			total += l.Size
		}
		fmt.Fprintf(w, "\nRole %s: %d layers (%s), %d templates, %d steps\n", r, len(layers), imgSize(total), len(tmpls), len(steps))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, l := range layers {
			fmt.Fprintf(tw, "  layer\t%s\t%s\t%s\n", protocol.ShortDigest(l.Digest), imgSize(l.Size), l.Instruction)
			for _, f := range o.Files {
				if f.Layer == l.Digest && f.Role == r {
					fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\t%s\n", f.Kind, fileName(f), f.Mode, fileSize(f), f.Why)
				}
			}
		}
		for _, t := range tmpls {
			f := findTemplateFile(o.Files, t)
			fmt.Fprintf(tw, "  template\t%s\t%s\t%d bytes\t%s\n", t.Path, f.Mode, len(t.Content), f.Why)
		}
		for _, s := range steps {
			fmt.Fprintf(tw, "  %s\t%s\t(line %d)\t\n", s.Kind, s.Command, s.Line)
		}
		tw.Flush()
		writeLifecycle(w, p, r)
	}
	if p.Cmd != nil {
		fmt.Fprintf(w, "\nCmd (on %s after every phase): %s\n", p.Cmd.Role, p.Cmd.Command)
	}
	if p.Backup != nil {
		fmt.Fprintf(w, "Backup (on one member of %s, writes $FLOTILLA_BACKUP): %s\n", p.Backup.Role, p.Backup.Command)
	}
	for i, s := range p.Restore {
		fmt.Fprintf(w, "Restore stage %d (on every member of %s): %s\n", i+1, s.Role, s.Command)
	}
	if len(p.Images) > 0 {
		fmt.Fprintln(w, "\nCarried container images (served by every node's registry mirror):")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, i := range p.Images {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", i.Name, protocol.ShortDigest(i.Digest), imgJoin(i.Roles), i.MediaType)
		}
		tw.Flush()
	}
	if len(p.History) > 0 {
		fmt.Fprintln(w, "\nHistory:")
		for _, h := range p.History {
			fmt.Fprintf(w, "  %-19s %s\n", cmp.Or(protocol.ShortDigest(h.Layer), "-"), h.Instruction)
		}
	}
	return nil
}

func imgSortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// writeLifecycle prints what a role's hosts do when they join, leave or are a
// quorum (QUORUM, JOIN, LEAVE, CLEANUP).
func writeLifecycle(w io.Writer, p *recipe.Recipe, role string) {
	if p.IsQuorum(role) {
		fmt.Fprintf(w, "  quorum: members join and leave one at a time, the health check after each; removing a majority at once is refused\n")
	}
	for _, s := range recipe.StepsOfRole(p.Join, role) {
		fmt.Fprintf(w, "  join    %s  (line %d; on a member, before a new one starts)\n", s.Command, s.Line)
	}
	for _, s := range recipe.StepsOfRole(p.Leave, role) {
		fmt.Fprintf(w, "  leave   %s  (line %d; on a member, after one left)\n", s.Command, s.Line)
	}
	for _, s := range recipe.StepsOfRole(p.Cleanup, role) {
		fmt.Fprintf(w, "  cleanup %s  (line %d; on a host that leaves)\n", s.Command, s.Line)
	}
}
