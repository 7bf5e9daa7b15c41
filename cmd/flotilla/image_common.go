package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/bundle/progress"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/internal/human"
)

// addImageStoreFlag adds --store to an image command.
func addImageStoreFlag(cmd *cobra.Command, dir *string) {
	cmd.Flags().StringVar(dir, "store", "", "image store directory (default $"+store.EnvStore+", /var/lib/flotilla/images as root, else $XDG_DATA_HOME/flotilla/images)")
}

func openImageStore(dir string) (*store.Store, error) {
	st, err := store.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("%w; or pass --store DIR", err)
	}
	return st, nil
}

// imgProgress draws bars on a terminal stderr and logs lines otherwise; --quiet hides both.
func imgProgress(quiet bool) progress.Reporter {
	if quiet {
		return progress.Nop()
	}
	return progress.New(os.Stderr)
}

func imgCheckOutput(o string) error {
	if o != "" && o != "json" && o != "text" {
		return fmt.Errorf("-o %q: want text or json", o)
	}
	return nil
}

func imgWriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// lookupStoreImage finds what an argument names: an image name or digest, or a build
// context directory (the image last built from it).
func lookupStoreImage(st *store.Store, arg string) (v1.Descriptor, error) {
	d, err := st.Get(arg)
	if err == nil {
		return d, nil
	}
	if fi, serr := os.Stat(arg); serr == nil && fi.IsDir() {
		return st.BuildOf(arg)
	}
	return d, err
}

func imgSize(n int64) string { return human.Bytes(n) }

func imgOrNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "<none>"
	}
	return s
}
