package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/protocol"
)

// The "rollout" method is the product path rather than the library's: a
// `flotilla controller` on the controller host with the layer in an image in
// its store, a `flotilla agent` on every host (its own piece server,
// certificates from the join), and `flotilla apply` of a Clusterfile with
// every host in one phase. T runs from the apply's start to its end, so it
// includes planning, dispatch, the seed's piece list (computed at the first
// rollout), the peer-to-peer fetch, the executor's digest check and the
// unpack of the layer under each agent's root.

// rolloutImage is the benchmark's image, built once into a store on tmpfs.
type rolloutImage struct {
	storeDir string
	ref      string
}

func buildRolloutImage(t *testing.T, work, stores, blob string) rolloutImage {
	t.Helper()
	img := rolloutImage{storeDir: filepath.Join(stores, "image-store"), ref: "bench-layer:1"}
	st, err := store.Open(img.storeDir)
	if err != nil {
		t.Fatal(err)
	}
	ctxDir := filepath.Join(work, "image")
	os.MkdirAll(ctxDir, 0o755)
	if err := os.Link(blob, filepath.Join(ctxDir, "layer")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(ctxDir, "Kubefile"), []byte("FROM scratch\nCOPY layer /opt/bench/layer\n"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := build.Build(ctx, st, build.Options{ContextDir: ctxDir, Tags: []string{img.ref}}); err != nil {
		t.Fatalf("build the benchmark image: %v", err)
	}
	return img
}

// inSeedNS runs a flotilla CLI command on the controller host.
func inSeedNS(ctx context.Context, cg *cpuGroup, bin string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", seedNS, bin}, args...)...)
	cg.adopt(cmd)
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		err = fmt.Errorf("%w: %s", err, ee.Stderr)
	}
	return out, err
}

// runRollout returns two results: the whole apply ("rollout"), and the time
// to the last host holding the verified layer ("rollout-fetch", from the
// agents' "layer fetched peer-to-peer" log lines), before the unpack.
func runRollout(t *testing.T, cg *cpuGroup, bin, work, stores string, img rolloutImage, size int64, n int) (apply, fetch result) {
	t.Helper()
	apply, fetch = applyToAll(t, cg, bin, work, stores, img, "rollout", n, func(agentDir string) error {
		st, err := os.Stat(filepath.Join(agentDir, "root", "opt", "bench", "layer"))
		if err != nil || st.Size() != size {
			return fmt.Errorf("the layer's file is missing or has the wrong size after the apply: %v", err)
		}
		return nil
	})
	return apply, fetch
}

// runImages is the "images" method: the apply of a cluster image carrying
// container images; a host is done when its image cache holds all of them.
func runImages(t *testing.T, cg *cpuGroup, bin, work, stores string, img rolloutImage, n int) result {
	t.Helper()
	apply, _ := applyToAll(t, cg, bin, work, stores, img, "images", n, imagesCached)
	return apply
}

// applyToAll starts a controller on the controller host and an agent on n hosts,
// applies img to all of them in one phase and checks each agent's data dir with
// check. For the "rollout" method it also returns the time to the last host
// holding the verified layer.
func applyToAll(t *testing.T, cg *cpuGroup, bin, work, stores string, img rolloutImage, method string, n int, check func(agentDir string) error) (apply, fetch result) {
	t.Helper()
	logs := filepath.Join(envOr("FLOTILLA_BENCH_LOGS", filepath.Join(work, "logs")), fmt.Sprintf("%s-%d", method, n))
	os.MkdirAll(logs, 0o755)
	dir := filepath.Join(stores, fmt.Sprintf("%s-%d", method, n))
	defer os.RemoveAll(dir)
	logLevel := envOr("FLOTILLA_BENCH_LOG_LEVEL", "info")
	ctlDir := filepath.Join(dir, "controller")
	t.Setenv("FLOTILLA_STORE", img.storeDir) // the controller resolves the image there
	ctl := startIn(t, cg, seedNS, filepath.Join(logs, "controller.log"), nil, bin, "--log-level", logLevel, "controller",
		"--data-dir", ctlDir, "--listen", seedIP+":4222", "--http-listen", seedIP+":9443", "--advertise", seedIP)
	defer ctl.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var tok protocol.TokenInfo
	var terr error
	tokenMade := func() bool {
		var out []byte
		out, terr = inSeedNS(ctx, cg, bin, "token", "create", "--data-dir", ctlDir, "--ttl", "1h", "-o", "json")
		return terr == nil && json.Unmarshal(out, &tok) == nil
	}
	if err := poll.Until(ctx, 30*time.Second, 100*time.Millisecond, tokenMade); err != nil {
		t.Fatalf("controller not ready: %v (%v); see %s", terr, err, logs)
	}
	var agents []*proc
	for i := 1; i <= n; i++ {
		ad := filepath.Join(dir, fmt.Sprintf("n%d", i))
		agents = append(agents, startIn(t, cg, nodeNS(i), filepath.Join(logs, fmt.Sprintf("n%d.log", i)), nil, bin, "--log-level", logLevel, "agent",
			"--controller", "https://"+seedIP+":9443", "--token", tok.Token, "--ca-hash", tok.CAHash, "--name", fmt.Sprintf("n%d", i),
			"--data-dir", ad, "--root", filepath.Join(ad, "root"), "--peer-listen", nodeIP(i)+":9444"))
	}
	defer func() {
		for _, a := range agents {
			a.stop()
		}
	}()
	ready := 0
	allReady := func() bool {
		out, _ := inSeedNS(ctx, cg, bin, "nodes", "--data-dir", ctlDir, "-o", "json")
		var nodes []protocol.NodeInfo
		ready = 0
		if json.Unmarshal(out, &nodes) == nil {
			for _, nd := range nodes {
				if nd.Online && strings.HasSuffix(nd.PeerURL, ":9444") {
					ready++
				}
			}
		}
		return ready == n
	}
	if err := poll.Until(ctx, 60*time.Second, 200*time.Millisecond, allReady); err != nil {
		t.Fatalf("%s N=%d: %d of %d agents registered with a peer URL: %v; see %s", method, n, ready, n, err, logs)
	}

	var names []string
	for i := 1; i <= n; i++ {
		names = append(names, fmt.Sprintf("n%d", i))
	}
	cf := filepath.Join(dir, "Clusterfile")
	os.WriteFile(cf, []byte(fmt.Sprintf("apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: bench}\nspec:\n  image: %s\n"+
		"  hosts:\n    - names: [%s]\n      roles: [node]\n  rollout:\n    parallelism: {node: %d}\n", img.ref, strings.Join(names, ", "), n)), 0o644)
	start := time.Now()
	out, err := inSeedNS(ctx, cg, bin, "apply", "--data-dir", ctlDir, "-f", cf, "-o", "json")
	T := time.Since(start)
	var res protocol.ApplyResult
	if err != nil || json.Unmarshal(out, &res) != nil || !res.OK {
		t.Fatalf("rollout N=%d: apply: %v\n%s\nsee %s", n, err, out, logs)
	}
	var rates []string
	for _, o := range res.Nodes {
		rates = append(rates, fmt.Sprintf("%s %.1fMB/s", o.Node, o.Rate/1e6))
	}
	t.Logf("%s N=%d: node rates (layer steps) %s", method, n, strings.Join(rates, ", "))
	for i := 1; i <= n; i++ {
		if err := check(filepath.Join(dir, fmt.Sprintf("n%d", i))); err != nil {
			t.Fatalf("%s N=%d: n%d: %v", method, n, i, err)
		}
	}
	if method != "rollout" {
		return result{method: method, n: n, t: T}, result{}
	}
	var lastFetch time.Duration
	for i := 1; i <= n; i++ {
		at, err := fetchedAt(filepath.Join(logs, fmt.Sprintf("n%d.log", i)))
		if err != nil {
			t.Fatalf("n%d: %v", i, err)
		}
		lastFetch = max(lastFetch, at.Sub(start))
	}
	return result{method: "rollout", n: n, t: T}, result{method: "rollout-fetch", n: n, t: lastFetch}
}

// fetchedAt is when an agent logged that it holds the verified layer.
func fetchedAt(logFile string) (time.Time, error) {
	b, err := os.ReadFile(logFile)
	if err != nil {
		return time.Time{}, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, `msg="layer fetched peer-to-peer"`) {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		return time.Parse(time.RFC3339Nano, ts)
	}
	return time.Time{}, fmt.Errorf("%s: no \"layer fetched peer-to-peer\" line (did the layer come from the blob URL?)", logFile)
}
