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
	"github.com/flotilla-dev/flotilla/bundle/registry"
)

func init() { addCommand(newBuildCmd) }

func newBuildCmd() *cobra.Command {
	var (
		storeDir, file, platforms, output string
		tags, buildArgs                   []string
		noCache, quiet, insecure          bool
	)
	cmd := &cobra.Command{
		Use:   "build [flags] DIR",
		Short: "Build a cluster image from a Kubefile and its context directory",
		Long: `build reads DIR/Kubefile (or -f FILE), builds reproducible OCI layers from the files it
copies and the build-time RUN commands, and stores the cluster image in the local store.
An unchanged rebuild reuses every layer and writes nothing.`,
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
				FetchBase: func(ctx context.Context, ref string) error {
					_, err := registry.Pull(ctx, st, ref, registry.Options{Insecure: insecure, Progress: imgProgress(quiet)})
					return err
				},
			}
			if quiet {
				opts.RunOutput = nil
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
				})
			}
			name := strings.Join(tags, ", ")
			if name == "" {
				name = "(untagged)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "built %s %s: %d layers, %d new blobs, %s\n", name, res.Descriptor.Digest, res.Layers, res.NewBlobs, time.Since(start).Round(time.Millisecond))
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
	f.BoolVar(&insecure, "insecure", false, "pull a missing base image over plain HTTP")
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	addImageStoreFlag(cmd, &storeDir)
	return cmd
}
