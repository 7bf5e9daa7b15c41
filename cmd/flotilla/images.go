package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/bundle/carry"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

// imageRow is one line of `flotilla images`.
type imageRow struct {
	Name      string   `json:"name"`
	Digest    string   `json:"digest"`
	MediaType string   `json:"mediaType"`
	Platforms []string `json:"platforms"`
	Size      int64    `json:"size"`
	Roles     []string `json:"roles,omitempty"`
	// Containers are the container images the cluster image carries.
	Containers []carry.Carried `json:"containerImages,omitempty"`
}

func newImagesCmd() *cobra.Command {
	var storeDir, output string
	cmd := &cobra.Command{
		Use:     "images",
		Short:   "List the cluster images in the local store",
		Example: "  flotilla images\n  flotilla images -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := imgCheckOutput(output); err != nil {
				return err
			}
			st, err := openImageStore(storeDir)
			if err != nil {
				return err
			}
			entries, err := st.List()
			if err != nil {
				return err
			}
			rows := make([]imageRow, 0, len(entries))
			for _, e := range entries {
				rows = append(rows, describeImage(st, e))
			}
			if output == "json" {
				return imgWriteJSON(cmd.OutOrStdout(), rows)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDIGEST\tPLATFORMS\tSIZE\tROLES\tCONTAINER IMAGES")
			for _, r := range rows {
				var carried []string
				for _, c := range r.Containers {
					carried = append(carried, c.Name)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", imgOrNone(r.Name), r.Digest[:min(len(r.Digest), 19)], imgJoin(r.Platforms), imgSize(r.Size), imgJoin(r.Roles), imgJoin(carried))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	addImageStoreFlag(cmd, &storeDir)
	return cmd
}

func imgJoin(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	out := s[0]
	for _, x := range s[1:] {
		out += "," + x
	}
	return out
}

// describe sums the unique blobs of an entry and reads its platforms and roles.
func describeImage(st *store.Store, e store.Entry) imageRow {
	r := imageRow{Name: e.Name, Digest: e.Descriptor.Digest.String(), MediaType: string(e.Descriptor.MediaType)}
	seen := map[v1.Hash]bool{}
	add := func(d v1.Descriptor) {
		if !seen[d.Digest] {
			seen[d.Digest] = true
			r.Size += d.Size
		}
	}
	add(e.Descriptor)
	var manifests []v1.Descriptor
	if e.Descriptor.MediaType.IsIndex() {
		if idx, err := st.Index(e.Descriptor.Digest); err == nil {
			if im, err := idx.IndexManifest(); err == nil {
				for _, m := range im.Manifests {
					if !carry.IsCarried(m) {
						manifests = append(manifests, m)
					}
				}
			}
			if raw, err := idx.RawManifest(); err == nil {
				r.Containers, _ = carry.List(raw)
			}
			for _, c := range r.Containers {
				addCarried(st, c.Descriptor, add)
			}
		}
	} else {
		manifests = []v1.Descriptor{e.Descriptor}
	}
	for _, m := range manifests {
		add(m)
		img, err := st.Image(m.Digest)
		if err != nil {
			continue
		}
		mf, err := img.Manifest()
		if err != nil {
			continue
		}
		add(mf.Config)
		for _, l := range mf.Layers {
			add(l)
		}
		if cf, err := img.ConfigFile(); err == nil {
			r.Platforms = append(r.Platforms, cf.OS+"/"+cf.Architecture+imgVariant(cf.Variant))
		}
		if p, err := store.Plan(img); err == nil && len(r.Roles) == 0 {
			r.Roles = p.Roles
		}
	}
	return r
}

// addCarried adds the size of every blob of a carried container image (all platforms).
func addCarried(st *store.Store, d v1.Descriptor, add func(v1.Descriptor)) {
	read := func(h v1.Hash) ([]byte, error) {
		rc, _, err := st.OpenBlob(h)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return io.ReadAll(io.LimitReader(rc, carry.MaxManifestSize))
	}
	cl, err := carry.Walk(carry.ReadBlob(read), d, nil)
	if err != nil {
		return
	}
	for _, m := range cl.Manifests {
		add(m)
	}
	for _, b := range cl.Blobs {
		add(b)
	}
}

func imgVariant(v string) string {
	if v == "" {
		return ""
	}
	return "/" + v
}

func newTagCmd() *cobra.Command {
	var storeDir string
	cmd := &cobra.Command{
		Use:     "tag SOURCE TARGET",
		Short:   "Give an image in the local store another name",
		Example: "  flotilla tag hello:1 registry.local/hello:1",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openImageStore(storeDir)
			if err != nil {
				return err
			}
			d, err := lookupStoreImage(st, args[0])
			if err != nil {
				return err
			}
			return st.Tag(cmd.Context(), args[1], d)
		},
	}
	addImageStoreFlag(cmd, &storeDir)
	return cmd
}

func newRmiCmd() *cobra.Command {
	var storeDir string
	cmd := &cobra.Command{
		Use:   "rmi IMAGE...",
		Short: "Remove image names from the local store and delete blobs nothing references",
		Long: `rmi removes each name (or, for a digest, every name of that digest), then garbage-collects
the blobs no remaining image references. With no IMAGE and --prune it only collects.`,
		Example: "  flotilla rmi hello:1\n  flotilla rmi sha256:3f2a1b\n  flotilla rmi --prune",
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openImageStore(storeDir)
			if err != nil {
				return err
			}
			prune, _ := cmd.Flags().GetBool("prune")
			if len(args) == 0 && !prune {
				return fmt.Errorf("rmi needs at least one IMAGE (or --prune to only collect garbage)")
			}
			if len(args) > 0 {
				removed, err := st.Untag(cmd.Context(), args...)
				if err != nil {
					return err
				}
				for _, e := range removed {
					fmt.Fprintf(cmd.OutOrStdout(), "untagged %s %s\n", imgOrNone(e.Name), e.Descriptor.Digest)
				}
			}
			res, err := st.GC(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %d blobs, freed %s\n", res.Blobs, imgSize(res.Bytes))
			return nil
		},
	}
	cmd.Flags().Bool("prune", false, "only garbage-collect unreferenced blobs")
	addImageStoreFlag(cmd, &storeDir)
	return cmd
}
