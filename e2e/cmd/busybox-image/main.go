// Command busybox-image builds the container image examples/containers carries (Debian's
// busybox-static as a one-layer OCI image, e2e/busyboximage) and pushes it to a
// registry, printing its digest: make demo-containers uses it with a throwaway
// local registry.
//
//	go run ./e2e/cmd/busybox-image 127.0.0.1:5000/flotilla-examples/hello:1
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/flotilla-dev/flotilla/e2e/busyboximage"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: busybox-image REF   (e.g. 127.0.0.1:5000/flotilla-examples/hello:1)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "busybox-image:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, ref string) error {
	dir, err := os.MkdirTemp("", "busybox-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	img, err := busyboximage.Build(ctx, dir)
	if err != nil {
		return err
	}
	d, err := busyboximage.Push(ctx, img, ref)
	if err != nil {
		return err
	}
	fmt.Println(d)
	return nil
}
