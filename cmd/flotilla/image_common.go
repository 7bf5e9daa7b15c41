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
)

// addStoreFlag adds --store to an image command.
func addStoreFlag(cmd *cobra.Command, dir *string) {
	cmd.Flags().StringVar(dir, "store", "", "image store directory (default $"+store.EnvStore+", /var/lib/flotilla/images as root, else $XDG_DATA_HOME/flotilla/images)")
}

func openStore(dir string) (*store.Store, error) {
	return store.Open(dir)
}

// progressFor draws bars on a terminal stderr and logs lines otherwise; --quiet hides both.
func progressFor(quiet bool) progress.Reporter {
	if quiet {
		return progress.Nop()
	}
	return progress.New(os.Stderr)
}

func checkOutput(o string) error {
	if o != "" && o != "json" && o != "text" {
		return fmt.Errorf("-o %q: want text or json", o)
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// lookupImage finds what an argument names: an image name or digest, or a build
// context directory (the image last built from it).
func lookupImage(st *store.Store, arg string) (v1.Descriptor, error) {
	d, err := st.Get(arg)
	if err == nil {
		return d, nil
	}
	if fi, serr := os.Stat(arg); serr == nil && fi.IsDir() {
		return st.BuildOf(arg)
	}
	return d, err
}

func shortDigest(h v1.Hash) string {
	if len(h.Hex) < 12 {
		return h.String()
	}
	return h.Algorithm + ":" + h.Hex[:12]
}

func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func orNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "<none>"
	}
	return s
}
