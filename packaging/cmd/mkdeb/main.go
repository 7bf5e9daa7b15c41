// Command mkdeb builds the agent's .deb packages from bin/flotilla-linux-* (make package).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/flotilla-dev/flotilla/packaging"
)

func main() {
	version := flag.String("version", "dev", "flotilla version (git describe)")
	out := flag.String("out", "bin/", "directory with flotilla-linux-ARCH binaries; the .debs go there too")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: go run ./packaging/cmd/mkdeb -version V -out bin/\n\nBuilds flotilla-agent_V_ARCH.deb for %v from OUT/flotilla-linux-ARCH (make build-all).\n\n", packaging.Arches)
		flag.PrintDefaults()
	}
	flag.Parse()
	for _, arch := range packaging.Arches {
		p, err := packaging.BuildDeb(packaging.DebOptions{
			Version: *version, Arch: arch, Binary: filepath.Join(*out, "flotilla-linux-"+arch), OutDir: *out,
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, "error:", err)
			os.Exit(1)
		}
		fmt.Println(p)
	}
}
