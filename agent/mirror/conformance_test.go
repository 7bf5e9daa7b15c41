package mirror_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/agent/imagecache"
	"github.com/flotilla-dev/flotilla/agent/imagecache/imagecachetest"
	"github.com/flotilla-dev/flotilla/agent/mirror"
	"github.com/flotilla-dev/flotilla/bundle/recipe"
)

// conformanceTool is the OCI distribution-spec conformance suite, a `tool` of this
// module (go.mod), so its version is pinned and the module proxy serves it.
const conformanceTool = "github.com/opencontainers/distribution-spec/conformance"

// TestDistributionSpecConformance runs the OCI distribution-spec conformance suite's
// pull tests against the mirror (read-only mode: content preloaded, push, delete and
// referrers disabled).
func TestDistributionSpecConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the conformance suite (about 10 s)")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the conformance suite")
	}
	bin := filepath.Join(t.TempDir(), "conformance")
	build := exec.Command(gobin, "build", "-o", bin, conformanceTool)
	build.Dir = "../.." // the module root, whose go.mod names the tool
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the conformance suite: %v\n%s", err, out)
	}

	src := imagecachetest.Source{}
	img := imagecachetest.Image(t, nil, imagecachetest.Layer(t, 2000), imagecachetest.Layer(t, 1000))
	tagged := src.AddImage(t, "docker.io/conformance/repo1:v1", img)
	idx, _ := src.AddIndex(t, "docker.io/conformance/repo1:multi", map[string]v1.Image{
		"linux/amd64": imagecachetest.Image(t, nil, imagecachetest.Layer(t, 500)),
		"linux/arm64": imagecachetest.Image(t, &v1.Platform{OS: "linux", Architecture: "arm64"}, imagecachetest.Layer(t, 500)),
	})
	cache, err := imagecache.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cache.Import(context.Background(), "conformance", []recipe.ContainerImage{tagged, idx}, nil, src.Open); err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigName()
	layers, _ := img.Layers()
	blobs := []string{cfg.String()}
	for _, l := range layers {
		d, _ := l.Digest()
		blobs = append(blobs, d.String())
	}
	addr := serve(t, mirror.New(mirror.Options{Content: cache}), mirror.ServeOptions{})

	results := t.TempDir()
	run := exec.Command(bin)
	run.Dir = results
	run.Env = append(os.Environ(),
		"OCI_REGISTRY="+addr,
		"OCI_TLS=disabled",
		"OCI_REPO1=conformance/repo1",
		"OCI_REPO2=conformance/repo2",
		"OCI_RESULTS_DIR="+results,
		"OCI_VERSION=1.1",
		"OCI_LOG=warn",
		"OCI_API_PULL=true",
		"OCI_API_PUSH=false",
		"OCI_API_BLOBS_DELETE=false",
		"OCI_API_MANIFESTS_DELETE=false",
		"OCI_API_TAGS_DELETE=false",
		"OCI_API_REFERRER=false",
		"OCI_API_BLOBS_DIGEST_HEADER=true",
		"OCI_API_MANIFESTS_DIGEST_HEADER=false", // the suite reads no headers of a read-only manifest; TestPullAPI checks them
		"OCI_RO_DATA_TAGS=v1 multi",
		"OCI_RO_DATA_MANIFESTS="+tagged.Digest+" "+idx.Digest,
		"OCI_RO_DATA_BLOBS="+strings.Join(blobs, " "),
	)
	out, err := run.CombinedOutput()
	// The suite prints its verdict, then writes results.yaml, which panics in read-only
	// mode (it indexes its generated data, of which there is none): judge the verdict.
	report := string(out)
	if i := strings.Index(report, "\npanic:"); i >= 0 {
		report = report[:i]
	}
	t.Logf("conformance suite (exit: %v):\n%s", err, report)
	passed := regexp.MustCompile(`(?m)^\s*Pass\.+:\s+(\d+)$`).FindStringSubmatch(report)
	if !strings.Contains(report, "OCI Conformance Result: Pass") || strings.Contains(report, ": FAIL") || passed == nil {
		t.Fatalf("the mirror fails the OCI distribution-spec conformance pull tests (results in %s)", results)
	}
	if n, _ := strconv.Atoi(passed[1]); n < 20 {
		t.Errorf("only %d conformance tests passed, want the 20 pull tests of read-only mode", n)
	}
}
