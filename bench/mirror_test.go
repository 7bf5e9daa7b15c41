package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/e2e/busyboximage"
	"github.com/flotilla-dev/flotilla/e2e/e2etest"
	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/internal/registrytest"
	"github.com/flotilla-dev/flotilla/sandbox"
)

// The mirror pull benchmark's fleet: 5 nspawn nodes with containerd (fleet fltbm,
// 10.77.14.0/28: host .1, node1..node5 = .2-.6).
const (
	mirrorFleet  = "fltbm"
	mirrorSubnet = "10.77.14.0/28"
	mirrorNodes  = 5
)

// TestMirrorPullBenchmark answers issue 14's question "ctr images pull from the
// node's mirror vs from a registry on the controller host": ten container images
// (random bytes, one layer each, FLOTILLA_BENCH_SIZE_MIB in all, default 200) are
// pushed to Debian's docker-registry listening on the fleet's bridge, carried by a
// cluster image (examples/containers plus IMAGE lines) and applied to 5 nspawn
// nodes with containerd. Then every node pulls the ten images at once with ctr,
// first by their original names through /etc/containerd/certs.d (the agent's
// mirror on the node's loopback), then, after removing them, straight from the
// registry on the controller host (--plain-http, the host's link shaped with
// tbf to FLOTILLA_BENCH_LINK_MBIT, default 100 Mbit/s as in the distribution
// benchmark). Wall time to the last node holding all ten, and the whole
// machine's CPU seconds in that window (nodes, agents, containerd, registry: one
// kernel). Runs under `make bench-mirror` (FLOTILLA_BENCH=1).
func TestMirrorPullBenchmark(t *testing.T) {
	if os.Getenv("FLOTILLA_BENCH") != "1" {
		t.Skip("set FLOTILLA_BENCH=1 (make bench-mirror) to run the mirror pull benchmark")
	}
	fleettest.Require(t)
	e2etest.UseStore(t)
	sizeMiB := envInt(t, "FLOTILLA_BENCH_SIZE_MIB", 200)
	// The controller host's link into the bridge (what the host sends to the
	// nodes) is shaped to this rate; node-to-node traffic is not.
	linkMbit := envInt(t, "FLOTILLA_BENCH_LINK_MBIT", 100)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	env := e2etest.Start(t, sandbox.Options{Name: mirrorFleet, Subnet: mirrorSubnet, N: mirrorNodes})
	f, c := env.Fleet, env.Controller
	var nodes []string
	for _, n := range f.Nodes() {
		nodes = append(nodes, n.Name)
	}
	reg := registrytest.Start(t, registrytest.Options{Listen: f.HostIP().String() + ":0"})

	// The images: the example's app (busybox, run by its last step) and ten of random bytes.
	img, err := busyboximage.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	app := reg.Host + "/flotilla-examples/hello:1"
	if _, err := busyboximage.Push(ctx, img, app); err != nil {
		t.Fatal(err)
	}
	paths := pushRandomImages(t, ctx, reg.Host, int64(sizeMiB)<<20) // repository:tag, the same under both registry addresses

	// The cluster image: examples/containers carrying the app and the ten.
	dir := filepath.Join(t.TempDir(), "containers")
	if out, err := exec.CommandContext(ctx, "cp", "-a", "../examples/containers", dir).CombinedOutput(); err != nil {
		t.Fatalf("copy examples/containers: %v\n%s", err, out)
	}
	kf, err := os.OpenFile(filepath.Join(dir, "Kubefile"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		fmt.Fprintf(kf, "IMAGE %s/%s\n", reg.Host, p)
	}
	if err := kf.Close(); err != nil {
		t.Fatal(err)
	}
	bin := c.Bin
	build := time.Now()
	if out, err := exec.CommandContext(ctx, bin, "build", "-q", "-t", "bench/mirror:1", "--build-arg", "APP_IMAGE="+app, dir).CombinedOutput(); err != nil {
		t.Fatalf("flotilla build: %v\n%s", err, out)
	}
	t.Logf("cluster image with %d container images (%d MiB) built in %s", benchImages, sizeMiB, time.Since(build).Round(time.Millisecond))

	// The host's link into the bridge: B for everything the controller host sends.
	run(t, "tc", "qdisc", "add", "dev", f.Bridge(), "root", "tbf", "rate", fmt.Sprintf("%dmbit", linkMbit), "burst", "1mb", "latency", "50ms")
	t.Cleanup(func() { _ = exec.Command("tc", "qdisc", "del", "dev", f.Bridge(), "root").Run() })

	cf := filepath.Join(t.TempDir(), "Clusterfile")
	doc := fmt.Sprintf("apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: bench-mirror}\nspec:\n  image: bench/mirror:1\n"+
		"  hosts:\n    - names: [%s]\n      roles: [node]\n  rollout: {parallelism: {node: %d}, stepTimeout: 10m}\n", strings.Join(nodes, ", "), len(nodes))
	if err := os.WriteFile(cf, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	cpu0 := machineCPU(t)
	apply := time.Now()
	if out, errOut, err := c.CLI(ctx, "apply", "-f", cf); err != nil {
		t.Fatalf("apply: %v\n%s\n%s", err, out, errOut)
	}
	applyT, applyCPU := time.Since(apply), machineCPU(t)-cpu0
	t.Logf("apply (containerd and the %d images into 5 nodes' mirrors, peer-to-peer): %s, %.1f CPU s", benchImages, applyT.Round(time.Millisecond), applyCPU)

	ctr := "/usr/local/bin/ctr --namespace k8s.io"
	pullAll := func(label, prefix, flags string) (time.Duration, float64) {
		script := "set -e\n"
		for _, p := range paths {
			script += fmt.Sprintf("%s images pull %s %s/%s >/dev/null\n", ctr, flags, prefix, p)
		}
		cpu0 := machineCPU(t)
		start := time.Now()
		took := make([]time.Duration, len(nodes))
		var wg sync.WaitGroup
		var mu sync.Mutex
		var failed []string
		for i, n := range nodes {
			wg.Go(func() {
				out, err := f.Exec(ctx, n, "/bin/sh", "-c", script)
				took[i] = time.Since(start)
				if err != nil {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("%s: %v\n%s", n, err, out))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		wall, cpu := time.Since(start), machineCPU(t)-cpu0
		if len(failed) > 0 {
			t.Fatalf("%s: %s", label, strings.Join(failed, "\n"))
		}
		sort.Slice(took, func(a, b int) bool { return took[a] < took[b] })
		t.Logf("%s: last node after %s (first %s), %.1f CPU s", label, wall.Round(time.Millisecond), took[0].Round(time.Millisecond), cpu)
		// Every node holds every image with the upstream digest.
		for _, n := range nodes {
			out, err := f.Exec(ctx, n, "/bin/sh", "-c", ctr+" images ls -q")
			for _, p := range paths {
				if err != nil || !strings.Contains(string(out), prefix+"/"+p) {
					t.Fatalf("%s: %s lacks %s/%s after the pull: %v\n%s", label, n, prefix, p, err, out)
				}
			}
		}
		return wall, cpu
	}
	// Each pull starts from an empty containerd (no content, no snapshots), so both
	// download and unpack every layer; checked, not assumed.
	fresh := func() {
		script := `set -e
systemctl stop flotilla-containerd.service
find /var/lib/containerd -mindepth 1 -maxdepth 1 -exec rm -rf {} +
systemctl start flotilla-containerd.service
i=0
until ` + ctr + ` version >/dev/null 2>&1; do i=$((i + 1)); [ "$i" -lt 100 ]; sleep 0.1; done
` + ctr + ` content ls -q | wc -l
`
		for _, n := range nodes {
			out, err := f.Exec(ctx, n, "/bin/sh", "-c", script)
			if err != nil || strings.TrimSpace(string(out)) != "0" {
				t.Fatalf("%s: empty containerd before a pull: %v\n%s", n, err, out)
			}
		}
	}
	fresh()
	mirrorT, mirrorCPU := pullAll("ctr images pull through the node's mirror", reg.Host, "--hosts-dir /etc/containerd/certs.d")
	fresh()
	regT, regCPU := pullAll("ctr images pull from the registry on the controller host", reg.Addr, "--plain-http")

	var b strings.Builder
	fmt.Fprintf(&b, "Measured %s on %s, %d CPUs (%s), command: `make bench-mirror`.\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), cpuModel(), runtime.NumCPU(), cpuProbe())
	fmt.Fprintf(&b, "%d nodes, %d container images of %d MiB in all, the controller host's link %d Mbit/s (tbf).\n\n", len(nodes), benchImages, sizeMiB, linkMbit)
	fmt.Fprintf(&b, "| every node gets the %d images | wall, last node | machine CPU s |\n|---|---:|---:|\n", benchImages)
	fmt.Fprintf(&b, "| `flotilla apply` (containerd + images into every mirror, peer-to-peer) | %.1f s | %.1f |\n", applyT.Seconds(), applyCPU)
	fmt.Fprintf(&b, "| `ctr images pull` through the node's mirror | %.1f s | %.1f |\n", mirrorT.Seconds(), mirrorCPU)
	fmt.Fprintf(&b, "| `ctr images pull` from docker-registry on the controller host | %.1f s | %.1f |\n", regT.Seconds(), regCPU)
	t.Logf("\n%s", b.String())
}

// machineCPU is the whole machine's busy CPU seconds so far (user, nice, system,
// irq, softirq, steal from /proc/stat's first line).
func machineCPU(t *testing.T) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		t.Fatalf("/proc/stat: unexpected first line %q", line)
	}
	var busy float64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
		var v float64
		if _, err := fmt.Sscan(fields[i], &v); err != nil {
			t.Fatalf("/proc/stat field %d: %v", i, err)
		}
		busy += v
	}
	return busy / 100 // USER_HZ
}
