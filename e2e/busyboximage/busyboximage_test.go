package busyboximage_test

import (
	"archive/tar"
	"context"
	"io"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/flotilla-dev/flotilla/e2e/busyboximage"
	"github.com/flotilla-dev/flotilla/internal/registrytest"
)

// TestBuildAndPush builds the image from Debian's busybox-static, pushes it to a real
// registry and reads it back: same digest, a valid image, busybox in its one layer.
func TestBuildAndPush(t *testing.T) {
	ctx := context.Background()
	img, err := busyboximage.Build(ctx, t.TempDir())
	if err != nil {
		t.Skipf("cannot build (no apt-get or package lists here?): %v", err)
	}
	reg := registrytest.Start(t, registrytest.Options{})
	ref := reg.Host + "/flotilla-examples/hello:1"
	d, err := busyboximage.Push(ctx, img, ref)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := name.ParseReference(ref)
	got, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	if gd, _ := got.Digest(); gd != d {
		t.Errorf("registry serves %s, pushed %s", gd, d)
	}
	if err := validate.Image(got); err != nil {
		t.Errorf("pushed image: %v", err)
	}
	layers, _ := got.Layers()
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, _ := layers[0].Uncompressed()
	defer rc.Close()
	tr := tar.NewReader(rc)
	found := false
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "bin/busybox" && h.Size > 100<<10 && h.Mode&0o111 != 0 {
			found = true
		}
	}
	if !found {
		t.Error("no executable bin/busybox in the layer")
	}
	cf, _ := got.ConfigFile()
	if len(cf.Config.Cmd) != 2 || cf.Config.Cmd[1] != busyboximage.Greeting {
		t.Errorf("command %q", cf.Config.Cmd)
	}
}
