// Package busyboximage builds the small container image that examples/containers
// carries in its tests and demo: Debian's busybox-static as a one-layer OCI image, so
// nothing needs a registry on the internet. Build fetches the package with apt-get
// download and unpacks it with dpkg -x, as the examples' build scripts do.
package busyboximage

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Greeting is what the image's default command prints.
const Greeting = "hello from a container that flotilla carried"

// Build returns the image for the build machine's Debian architecture: /bin/busybox
// (static) with /bin/sh and /bin/echo linked to it, and the command
// `echo <Greeting>`. workDir holds the download.
func Build(ctx context.Context, workDir string) (v1.Image, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	arch, err := output(ctx, workDir, "dpkg", "--print-architecture")
	if err != nil {
		return nil, err
	}
	if _, err := output(ctx, workDir, "apt-get", "download", "busybox-static:"+arch); err != nil {
		return nil, fmt.Errorf("%w (run apt-get update first)", err)
	}
	debs, _ := filepath.Glob(filepath.Join(workDir, "busybox-static_*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download busybox-static: want one .deb in %s, found %d", workDir, len(debs))
	}
	x := filepath.Join(workDir, "x")
	if _, err := output(ctx, workDir, "dpkg", "-x", debs[0], x); err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(filepath.Join(x, "bin", "busybox"))
	if err != nil {
		return nil, fmt.Errorf("busybox-static has no /bin/busybox: %w", err)
	}
	layerTar, err := rootfs(bin)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerTar)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Cmd = []string{"/bin/echo", Greeting}
	cf.Config.Env = []string{"PATH=/bin"}
	return mutate.ConfigFile(img, cf)
}

// rootfs is the layer's tar: bin/busybox and links to it, fixed times and owners.
func rootfs(busybox []byte) ([]byte, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	mtime := time.Unix(0, 0)
	entries := []struct {
		hdr  tar.Header
		data []byte
	}{
		{tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime}, nil},
		{tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(busybox)), ModTime: mtime}, busybox},
		{tar.Header{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: mtime}, nil},
		{tar.Header{Name: "bin/echo", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: mtime}, nil},
		{tar.Header{Name: "bin/cat", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: mtime}, nil},
		{tar.Header{Name: "bin/hostname", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777, ModTime: mtime}, nil},
	}
	for _, e := range entries {
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, fmt.Errorf("busybox layer: %w", err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("busybox layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	return b.Bytes(), nil
}

// Push uploads img to ref (plain HTTP on loopback, as go-containerregistry does for
// 127.0.0.1 and localhost) and returns its manifest digest.
func Push(ctx context.Context, img v1.Image, ref string) (v1.Hash, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("reference %q: %w", ref, err)
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	return img.Digest()
}

func output(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}
