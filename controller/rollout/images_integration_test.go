package rollout_test

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/flotilla-dev/flotilla/agent/imagecache"
	"github.com/flotilla-dev/flotilla/agent/mirror"
	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/internal/registrytest"
	"github.com/flotilla-dev/flotilla/protocol"
)

// mirrorVia sends registry requests to an agent's mirror with containerd's ns
// parameter naming the registry they were meant for, over HTTPS trusting the
// agent's mirror CA alone (what hosts.toml makes containerd do).
type mirrorVia struct {
	mirror string
	tr     http.RoundTripper
}

func (m mirrorVia) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	q := r.URL.Query()
	q.Set("ns", r.URL.Host)
	r.URL.RawQuery = q.Encode()
	r.URL.Scheme, r.URL.Host, r.Host = "https", m.mirror, m.mirror
	return m.tr.RoundTrip(r)
}

// platformImage is an OCI image for one platform with the given layers.
func platformImage(t *testing.T, arch string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// appIndex pushes a two-platform index (this host's arch and one other), each
// platform with the shared layer and one of its own.
func appIndex(t *testing.T, ref string, shared v1.Layer) (index v1.Hash, mine v1.Image) {
	t.Helper()
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	own, _ := random.Layer(600<<10, types.OCILayer)
	foreign, _ := random.Layer(600<<10, types.OCILayer)
	mine = platformImage(t, runtime.GOARCH, shared, own)
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: mine, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
		mutate.IndexAddendum{Add: platformImage(t, other, shared, foreign), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: other}}},
	)
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	index, _ = idx.Digest()
	return index, mine
}

func buildKubefile(t *testing.T, st *store.Store, tag, kubefile string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Kubefile"), []byte(kubefile), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := build.Build(ctx, st, build.Options{ContextDir: dir, Tags: []string{tag}}); err != nil {
		t.Fatalf("build %s: %v", tag, err)
	}
}

// fetchedRE matches the images step's summary line in `flotilla apply -v`.
var fetchedRE = regexp.MustCompile(`^(\S+) \| (\d+) container images of \S+ in the node's cache for \S+: fetched (\d+) blobs .*, (\d+) were there already`)

// fetchedPerNode runs a verbose apply and returns, per node, the blobs its images
// step fetched and found in the cache.
func (f *fleetT) fetchedPerNode(args ...string) map[string][2]int {
	f.t.Helper()
	out, errOut, code := f.CLI(context.Background(), append([]string{"apply", "-v"}, args...)...)
	if code != 0 {
		f.t.Fatalf("apply -v %v: exit %d\n%s\n%s", args, code, out, errOut)
	}
	got := map[string][2]int{}
	for _, line := range strings.Split(out, "\n") {
		i := strings.Index(line, "] ") // after the time stamp, if any
		if m := fetchedRE.FindStringSubmatch(strings.TrimSpace(line[i+1:])); m != nil {
			a, _ := strconv.Atoi(m[3])
			b, _ := strconv.Atoi(m[4])
			got[m[1]] = [2]int{a, b}
		}
	}
	return got
}

// TestContainerImagesThreeAgents delivers two container images inside a cluster image
// to three agent processes with the upstream registry stopped: each node's mirror
// serves its roles' images by tag and by digest with the upstream digests (and only
// its platform), a re-apply does nothing, an upgrade fetches only the new blobs and
// drops the old ones, delete empties the caches.
func TestContainerImagesThreeAgents(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	shared, _ := random.Layer(512<<10, types.OCILayer) // more than a piece: goes peer to peer
	appRef, toolRepo := reg.Host+"/library/app", reg.Host+"/tools/tool"
	app1, app1Mine := appIndex(t, appRef+":1", shared)
	app2, _ := appIndex(t, appRef+":2", shared)
	toolOwn, _ := random.Layer(300<<10, types.OCILayer)
	tool := platformImage(t, runtime.GOARCH, shared, toolOwn)
	toolRef, _ := name.ParseReference(toolRepo + ":7")
	if err := remote.Write(toolRef, tool); err != nil {
		t.Fatal(err)
	}
	toolDigest, _ := tool.Digest()
	toolByDigest := toolRepo + "@" + toolDigest.String()

	names := []string{"a1", "a2", "a3"}
	dir := t.TempDir()
	t.Setenv(store.EnvStore, filepath.Join(dir, "store"))
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	kubefile := "FROM scratch\nIMAGE %s\nON node IMAGE %s\nON all RUN echo containers ready\n"
	buildKubefile(t, st, "imgs:1", fmt.Sprintf(kubefile, appRef+":1", toolByDigest))
	buildKubefile(t, st, "imgs:2", fmt.Sprintf(kubefile, appRef+":2", toolByDigest))
	reg.Stop() // from here on, only the cluster image has the container images

	f := &fleetT{Fleet: controllertest.Start(t), t: t, dir: dir}
	for _, n := range names {
		// Port 0: the agent picks a free port and says which in its status
		// (a port picked here could be taken by another process before it binds).
		f.StartAgent(n, "--registry-listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0")
	}
	f.WaitOnline(60*time.Second, true, names...)
	ports := map[string]int{}
	transports := map[string]http.RoundTripper{}
	for _, n := range names {
		var addr, caFile string
		serving := func() bool {
			st, err := agent.ReadStatus(f.AgentDataDir(n))
			if err == nil {
				addr, caFile = st.Registry, st.RegistryCA
			}
			return addr != ""
		}
		if err := poll.Until(context.Background(), 30*time.Second, 50*time.Millisecond, serving); err != nil {
			t.Fatalf("%s: registry mirror not serving: %v", n, err)
		}
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		ports[n] = int(ap.Port())
		caPEM, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatalf("%s: registry mirror CA: %v", n, err)
		}
		conf, err := mirror.ClientTLS(caPEM)
		if err != nil {
			t.Fatal(err)
		}
		transports[n] = &http.Transport{TLSClientConfig: conf}
	}
	via := func(node string) remote.Option {
		return remote.WithTransport(mirrorVia{mirror: fmt.Sprintf("127.0.0.1:%d", ports[node]), tr: transports[node]})
	}
	ref := func(s string) name.Reference {
		r, err := name.ParseReference(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	cfPath := f.clusterfile("imgs", "imgs:1", names[:1], names[1:], "")

	// Plan: the master gets app, the nodes app and tool.
	out, errOut, code := f.CLI(context.Background(), "plan", "-f", cfPath)
	if code != 0 {
		t.Fatalf("plan: exit %d\n%s", code, errOut)
	}
	for _, want := range []string{"+ image " + appRef + ":1", "+ image " + toolByDigest + " (roles node)", "images for linux/" + runtime.GOARCH} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "+ image "+toolByDigest) != 2 || strings.Count(out, "+ image "+appRef+":1") != 3 {
		t.Errorf("plan: want tool on the 2 nodes and app on all 3:\n%s", out)
	}

	start := time.Now()
	got := f.fetchedPerNode("-f", cfPath)
	t.Logf("fresh apply of 2 container images to 3 agents: %s", time.Since(start).Round(time.Millisecond))
	// master: app index, its platform manifest, config, shared and own layer; nodes
	// also tool's manifest, config and own layer (shared once).
	want := map[string][2]int{"a1": {5, 0}, "a2": {8, 0}, "a3": {8, 0}}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("fresh apply: %s fetched/had %v, want %v (all: %v)", n, got[n], w, got)
		}
	}
	check := func(node, s string, wantDigest v1.Hash) {
		t.Helper()
		d, err := remote.Get(ref(s), via(node))
		if err != nil || d.Digest != wantDigest {
			t.Errorf("%s mirror: GET %s: %v %v, want %s", node, s, d, err, wantDigest)
		}
	}
	for _, n := range names {
		check(n, appRef+":1", app1)
		check(n, appRef+"@"+app1.String(), app1)
		img, err := remote.Image(ref(appRef+":1"), via(n), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}))
		if err != nil {
			t.Fatalf("%s mirror: image %s: %v", n, appRef, err)
		}
		if d, _ := img.Digest(); d != mustDigest(t, app1Mine) {
			t.Errorf("%s: platform manifest %s", n, d)
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("%s mirror: %s does not validate: %v", n, appRef, err)
		}
		_, err = remote.Get(ref(toolByDigest), via(n))
		if n == "a1" && err == nil {
			t.Errorf("a1 (master) serves %s, an image for nodes only", toolByDigest)
		}
		if n != "a1" {
			check(n, toolByDigest, toolDigest)
			// The Kubefile named tool by digest: its upstream tag is not carried.
			if _, err := remote.Get(ref(toolRepo+":7"), via(n)); err == nil || !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") {
				t.Errorf("%s mirror: GET %s:7: %v, want MANIFEST_UNKNOWN", n, toolRepo, err)
			}
		}
	}

	// Re-apply: nothing to do.
	res, _ := f.mustApply("-f", cfPath)
	for _, o := range res.Nodes {
		if o.Status != protocol.NodeNoop || o.Ran != 0 {
			t.Errorf("re-apply: %s %s ran %d, want noop", o.Node, o.Status, o.Ran)
		}
	}

	// Upgrade to app:2: only its index, platform manifest, config and own layer.
	cache, err := imagecache.Open(filepath.Join(f.AgentDataDir("a2"), imagecache.DirName))
	if err != nil {
		t.Fatal(err)
	}
	app1Layers, _ := app1Mine.Layers()
	app1Own, _ := app1Layers[1].Digest()
	if !cache.Has(app1Own) {
		t.Fatalf("a2's cache lacks app:1's layer %s", app1Own)
	}
	got = f.fetchedPerNode("-f", f.clusterfile("imgs", "imgs:2", names[:1], names[1:], ""))
	want = map[string][2]int{"a1": {4, 1}, "a2": {4, 4}, "a3": {4, 4}}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("upgrade: %s fetched/had %v, want %v (all: %v)", n, got[n], w, got)
		}
	}
	for _, n := range names {
		check(n, appRef+":2", app2)
		if _, err := remote.Get(ref(appRef+":1"), via(n)); err == nil {
			t.Errorf("%s still serves app:1 after the upgrade dropped it", n)
		}
	}
	if cache.Has(app1Own) {
		t.Errorf("a2 kept app:1's layer %s after the upgrade", app1Own)
	}
	if sharedDigest, _ := shared.Digest(); !cache.Has(sharedDigest) {
		t.Errorf("a2 lost the shared layer")
	}

	// Delete: the caches are empty and the mirrors answer 404.
	out, errOut, code = f.CLI(context.Background(), "delete", "-f", cfPath, "--yes")
	if code != 0 {
		t.Fatalf("delete: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, n := range names {
		_, err := remote.Get(ref(appRef+":2"), via(n))
		if err == nil || !strings.Contains(err.Error(), "MANIFEST_UNKNOWN") {
			t.Errorf("%s after delete: GET app:2: %v, want MANIFEST_UNKNOWN", n, err)
		}
		blobs, _ := os.ReadDir(filepath.Join(f.AgentDataDir(n), imagecache.DirName, "blobs", "sha256"))
		if len(blobs) != 0 {
			t.Errorf("%s after delete: %d blobs left in the image cache", n, len(blobs))
		}
	}
}

func mustDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
