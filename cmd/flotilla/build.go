package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/carry"
	"github.com/flotilla-dev/flotilla/bundle/registry"
)

func newBuildCmd() *cobra.Command {
	var (
		storeDir, file, platforms, output, imagePlatform string
		tags, buildArgs                                  []string
		noCache, quiet, insecure, addDiscovered          bool
	)
	cmd := &cobra.Command{
		Use:   "build [flags] DIR",
		Short: "Build a cluster image from a Kubefile and its context directory",
		Long: `build reads DIR/Kubefile (or -f FILE), builds reproducible OCI layers from the files it
copies and the build-time RUN commands, and stores the cluster image in the local store.
An unchanged rebuild reuses every layer and writes nothing.

IMAGE pulls container images (credentials from Docker's config, as for push and pull)
and stores them inside the cluster image byte for byte: multi-arch indexes stay whole
unless --image-platform narrows them. A build whose image cannot be pulled fails.
Image references found in the context's YAML, JSON and templates that no IMAGE lists
are warned about, or carried with --add-discovered-images.`,
		Example: `  flotilla build -t registry.local/etcd-cluster:3.4 examples/etcd
  flotilla build -t hello:1 --build-arg VERSION=2 examples/hello
  flotilla build -t app:1 --platform linux/amd64,linux/arm64 .`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := imgCheckOutput(output); err != nil {
				return err
			}
			st, err := openImageStore(storeDir)
			if err != nil {
				return err
			}
			ba := map[string]string{}
			for _, a := range buildArgs {
				k, v, ok := strings.Cut(a, "=")
				if !ok {
					v, ok = os.LookupEnv(k)
				}
				if !ok {
					return fmt.Errorf("--build-arg %q: want KEY=VALUE (or KEY set in the environment)", a)
				}
				ba[k] = v
			}
			plats, err := build.ParsePlatforms(platforms)
			if err != nil {
				return err
			}
			opts := build.Options{
				ContextDir: args[0], Kubefile: file, Tags: tags, BuildArgs: ba, Platforms: plats,
				NoCache: noCache, RunOutput: os.Stderr, Progress: imgProgress(quiet),
				Carry: carry.Options{Insecure: insecure}, AddDiscoveredImages: addDiscovered,
				FetchBase: func(ctx context.Context, ref string) error {
					_, err := registry.Pull(ctx, st, ref, registry.Options{Insecure: insecure, Progress: imgProgress(quiet)})
					return err
				},
			}
			if quiet {
				opts.RunOutput = nil
			}
			if imagePlatform != "" {
				p, err := build.ParsePlatforms(imagePlatform)
				if err != nil || len(p) != 1 {
					return fmt.Errorf("--image-platform %q: want one os/arch[/variant], e.g. linux/amd64", imagePlatform)
				}
				opts.Carry.Platform = &p[0]
			}
			if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
				sec, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					return fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
				}
				opts.Epoch = time.Unix(sec, 0).UTC()
			}
			start := time.Now()
			res, err := build.Build(cmd.Context(), st, opts)
			if err != nil {
				return err
			}
			if output == "json" {
				return imgWriteJSON(cmd.OutOrStdout(), map[string]any{
					"digest": res.Descriptor.Digest.String(), "mediaType": res.Descriptor.MediaType,
					"tags": tags, "images": res.Images, "newBlobs": res.NewBlobs, "seconds": time.Since(start).Seconds(),
					"containerImages": res.Containers, "undeclaredImages": res.Undeclared,
				})
			}
			name := strings.Join(tags, ", ")
			if name == "" {
				name = "(untagged)"
			}
			carried := ""
			if len(res.Containers) > 0 {
				carried = fmt.Sprintf(", %d container images", len(res.Containers))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "built %s %s: %d layers%s, %d new blobs, %s\n", name, res.Descriptor.Digest, res.Layers, carried, res.NewBlobs, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&tags, "tag", "t", nil, "name[:tag] of the image (repeatable)")
	f.StringVarP(&file, "file", "f", "", "Kubefile path (default DIR/Kubefile)")
	f.StringArrayVar(&buildArgs, "build-arg", nil, "KEY=VALUE for an ARG (repeatable)")
	f.StringVar(&platforms, "platform", "", "comma-separated os/arch list, e.g. linux/amd64,linux/arm64 (default: this machine's)")
	f.BoolVar(&noCache, "no-cache", false, "run build-time RUN again even when cached")
	f.BoolVarP(&quiet, "quiet", "q", false, "no progress and no RUN output")
	f.BoolVar(&insecure, "insecure", false, "pull a missing base image and container images over plain HTTP")
	f.StringVar(&imagePlatform, "image-platform", "", "carry only this platform's manifest of each multi-arch container image named by a tag, e.g. linux/amd64 (default: whole indexes)")
	f.BoolVar(&addDiscovered, "add-discovered-images", false, "also carry the image references found in the context's YAML/JSON/templates that no IMAGE lists")
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	addImageStoreFlag(cmd, &storeDir)
	return cmd
}
