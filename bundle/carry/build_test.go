package carry_test

import (
	"context"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/store"
)

func TestBuildRefusesImagesItCannotCarry(t *testing.T) {
	u := newUpstream(t)
	cases := []struct{ name, kubefile, want string }{
		{"missing tag", "FROM scratch\nIMAGE " + u.app + "\nON node IMAGE " + u.reg.Host + "/library/app:9\n",
			"Kubefile:3: IMAGE: container image " + u.reg.Host + "/library/app:9: pull " + u.reg.Host + "/library/app:9: "},
		{"registry down", "FROM scratch\nIMAGE 127.0.0.1:1/a/b:1\n", "Kubefile:2: IMAGE: container image 127.0.0.1:1/a/b:1: pull 127.0.0.1:1/a/b:1: "},
		{"bad reference in a list", "FROM scratch\nIMAGE -f list.txt\n", "Kubefile:2: IMAGE: list.txt:2: invalid container image reference"},
		{"list outside the context", "FROM scratch\nIMAGE -f ../../../../etc/hostname\n", "outside the build context"},
		{"list missing", "FROM scratch\nIMAGE -f nope.txt\n", "nope.txt: no such file in the build context"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{"Kubefile": c.kubefile, "list.txt": u.tool + "\nBAD::REF\n"})
			st := openStore(t)
			_, err := build.Build(context.Background(), st, build.Options{ContextDir: dir, Tags: []string{"x:1"}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			if n := len(blobNames(t, st)); n != 0 {
				t.Errorf("a failed build stored %d blobs", n)
			}
			if _, err := st.Get("x:1"); err == nil {
				t.Error("a failed build was tagged")
			}
		})
	}
}

func TestBuildAddsDiscoveredAndInheritsCarriedImages(t *testing.T) {
	ctx := context.Background()
	u := newUpstream(t)
	st := openStore(t)
	base := t.TempDir()
	writeFiles(t, base, map[string]string{
		"Kubefile":      "FROM scratch\nON master IMAGE " + u.tool + "\n",
		"app/pod.yaml":  "spec:\n  containers:\n    - image: " + u.app + "\n",
		"app/skip.yaml": "image: {{ .Values.image }}\n",
	})
	res, err := build.Build(ctx, st, build.Options{ContextDir: base, Tags: []string{"base:1"}, AddDiscoveredImages: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Containers) != 2 || len(res.Undeclared) != 0 || res.Containers[1].Roles[0] != "all" || res.Containers[1].Digest != u.appDigest.String() {
		t.Fatalf("discovered image not carried: %+v undeclared %+v", res.Containers, res.Undeclared)
	}
	// A derived image inherits the carried images and can widen a role.
	derived := t.TempDir()
	writeFiles(t, derived, map[string]string{"Kubefile": "FROM base:1\nIMAGE " + u.tool + "\n"})
	u.reg.Stop() // nothing is pulled again: the base's images are in the store
	res2, err := build.Build(ctx, st, build.Options{ContextDir: derived, Tags: []string{"derived:1"}})
	if err != nil {
		t.Fatal(err)
	}
	img, _, _ := st.Resolve("derived:1")
	p, _ := store.Plan(img)
	if len(p.Images) != 2 || p.Images[0].Name != res.Containers[0].Name || p.Images[0].Roles[0] != "all" || len(res2.Containers) != 2 {
		t.Errorf("derived images = %+v", p.Images)
	}
}
