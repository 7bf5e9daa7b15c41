package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/bundle/archive"
)

func newSaveCmd() *cobra.Command {
	var storeDir, out, compress string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "save -o FILE IMAGE...",
		Short: "Write cluster images to one archive for an air-gapped site",
		Long: `save writes the images (every platform, every layer) as one tar holding an OCI image
layout, zstd-compressed when FILE ends in .zst or .zstd (or --compress zstd). Carry it
across the air gap and run flotilla load -i FILE there.`,
		Example: "  flotilla save -o etcd.tar registry.local/etcd-cluster:3.4\n  flotilla save -o images.tar.zst hello:1 app:2",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return fmt.Errorf("save needs -o FILE")
			}
			zstd := strings.HasSuffix(out, ".zst") || strings.HasSuffix(out, ".zstd")
			switch compress {
			case "auto":
			case "zstd":
				zstd = true
			case "none":
				zstd = false
			default:
				return fmt.Errorf("--compress %q: want auto, zstd or none", compress)
			}
			st, err := openImageStore(storeDir)
			if err != nil {
				return err
			}
			abs, err := filepath.Abs(out)
			if err != nil {
				return err
			}
			f, err := os.CreateTemp(filepath.Dir(abs), "."+filepath.Base(abs)+".partial-*")
			if err != nil {
				return fmt.Errorf("save: %w", err)
			}
			defer os.Remove(f.Name())
			start := time.Now()
			err = archive.Save(cmd.Context(), st, f, args, archive.SaveOptions{Zstd: zstd, Progress: imgProgress(quiet)})
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := os.Chmod(f.Name(), 0o644); err != nil {
				return err
			}
			if err := os.Rename(f.Name(), abs); err != nil {
				return fmt.Errorf("save: %w", err)
			}
			fi, _ := os.Stat(abs)
			fmt.Fprintf(cmd.OutOrStdout(), "saved %d images to %s (%s) in %s\n", len(args), out, imgSize(fi.Size()), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "archive file to write")
	cmd.Flags().StringVar(&compress, "compress", "auto", "auto (zstd for .zst/.zstd), zstd or none")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress")
	addImageStoreFlag(cmd, &storeDir)
	return cmd
}

func newLoadCmd() *cobra.Command {
	var storeDir, in string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "load -i FILE",
		Short: "Read cluster images from an archive made by flotilla save",
		Long: `load verifies every blob of the archive against its digest, and that every image in it
is complete, before anything enters the local store; a damaged or tampered archive is
refused and the store is left unchanged.`,
		Example: "  flotilla load -i etcd.tar\n  flotilla load -i images.tar.zst --store /srv/images",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if in == "" {
				return fmt.Errorf("load needs -i FILE")
			}
			st, err := openImageStore(storeDir)
			if err != nil {
				return err
			}
			f, err := os.Open(in)
			if err != nil {
				return fmt.Errorf("load: %w", err)
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			start := time.Now()
			entries, err := archive.Load(cmd.Context(), st, f, archive.LoadOptions{Progress: imgProgress(quiet), Size: fi.Size()})
			if err != nil {
				return err
			}
			for _, e := range entries {
				fmt.Fprintf(cmd.OutOrStdout(), "loaded %s %s\n", imgOrNone(e.Name), e.Descriptor.Digest)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "loaded %d images in %s\n", len(entries), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringVarP(&in, "input", "i", "", "archive file to read")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress")
	addImageStoreFlag(cmd, &storeDir)
	return cmd
}
