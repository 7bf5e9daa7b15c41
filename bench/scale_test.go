package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/internal/promtest"
	"github.com/flotilla-dev/flotilla/protocol"
)

// TestScale is the scale bench: one real `flotilla controller` process and
// FLOTILLA_SCALE_AGENTS agents (default 200) in this test process, each real
// agent code (agent.New joins with a token over HTTPS, agent.Run keeps its own
// NATS connection over TLS, verifies every signed task) with a stub executor
// for every step kind, so that only the control plane is measured. It
// asserts that every agent answered an exec and two applies; with
// FLOTILLA_BENCH=1 (`make bench-scale`: 2,000 agents) it also prints the
// table and writes it to bench/README.md.
func TestScale(t *testing.T) {
	if testing.Short() {
		t.Skip("scale bench: starts a controller process and hundreds of agents")
	}
	n := envInt(t, "FLOTILLA_SCALE_AGENTS", 200)
	full := os.Getenv("FLOTILLA_BENCH") == "1"
	execRuns := envInt(t, "FLOTILLA_SCALE_EXEC_RUNS", map[bool]int{true: 20, false: 3}[full])
	idle := time.Duration(envInt(t, "FLOTILLA_SCALE_IDLE_SECONDS", map[bool]int{true: 60, false: 6}[full])) * time.Second
	work := t.TempDir()
	agentsDir := agentsDir(t) // before the agents' cleanup: removed after they stopped

	img := buildScaleImage(t, work)
	t.Setenv("FLOTILLA_STORE", img)
	metricsPort := freePort(t)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	f := controllertest.StartWith(t, "--log-level", "info",
		"--join-rate", "100000", "--join-burst", "100000", "--max-concurrent-joins", "64",
		"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", metricsPort), "--metrics-pprof",
		"--unreachable-timeout", "30s")
	ctl := procStat{pid: f.Controller.PID()}
	time.Sleep(2 * time.Second) // let the controller's start settle before the idle figure
	rep := &scaleReport{n: n, loadBefore: loadAvg()}
	rep.rssIdle = ctl.rss(t)
	tok, caHash := f.Token()

	// Join from cold: every agent at once, as after a power cut.
	ctx, cancel := context.WithCancel(context.Background())
	var runWG sync.WaitGroup
	t.Cleanup(func() { cancel(); runWG.Wait() })
	logf, err := os.Create(filepath.Join(work, "agents.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	log := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	stub := stubExecutors()
	cpu0, self0 := ctl.cpu(t), selfCPU()
	start := time.Now()
	var joined atomic.Int64
	errs := make(chan error, n)
	var joinWG sync.WaitGroup
	for i := range n {
		name := fmt.Sprintf("s%04d", i)
		joinWG.Add(1)
		go func() {
			defer joinWG.Done()
			dir := filepath.Join(agentsDir, name)
			a, err := agent.New(ctx, agent.Options{Controller: f.HTTPURL(), Token: tok, CAHash: caHash, Name: name,
				Labels: map[string]string{"bench": "scale"}, Root: filepath.Join(dir, "root"), DataDir: dir,
				Executors: stub, Logger: log, Version: "bench"})
			if err != nil {
				errs <- fmt.Errorf("agent %s: %w", name, err)
				return
			}
			joined.Add(1)
			runWG.Add(1)
			go func() {
				defer runWG.Done()
				if err := a.Run(ctx); err != nil {
					errs <- fmt.Errorf("agent %s: run: %w", name, err)
				}
			}()
		}()
	}
	joinWG.Wait()
	rep.joinAll = time.Since(start)
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	waitOnline(t, metricsURL, n, 10*time.Minute, errs)
	rep.online = time.Since(start)
	rep.onlineCPU = ctl.cpu(t) - cpu0
	rep.onlineSelf = selfCPU() - self0
	t.Logf("%d agents joined in %s, online in %s", n, rep.joinAll.Round(time.Millisecond), rep.online.Round(time.Millisecond))

	// Idle: heartbeats only. Three intervals first, so registration is over.
	time.Sleep(15 * time.Second) // three heartbeat intervals: what is measured next must be idle
	s0, c0, w0 := scrape(t, metricsURL), ctl.cpu(t), time.Now()
	time.Sleep(idle) // the idle window being measured
	s1, c1 := scrape(t, metricsURL), ctl.cpu(t)
	win := time.Since(w0).Seconds()
	rep.rssConnected = ctl.rss(t)
	rep.idleCPU = (c1 - c0) / win
	rep.kvWrites = (kvSeq(s1) - kvSeq(s0)) / win
	rep.idleWindow = win
	rep.heapInuse = s1.Sum("go_memstats_heap_inuse_bytes")
	rep.stackInuse = s1.Sum("go_memstats_stack_inuse_bytes")
	rep.goroutines = s1.Sum("go_goroutines")
	profileDir := os.Getenv("FLOTILLA_SCALE_PROFILE_DIR")
	if profileDir != "" {
		saveProfiles(t, metricsPort, profileDir, "connected")
	}

	// exec --all -- true.
	stopProfile := profileCPU(t, metricsPort, profileDir, "exec", 15)
	for range execRuns {
		c0, self0 := ctl.cpu(t), selfCPU()
		st := time.Now()
		out, errOut, code, cli := cliTimed(t, f, "exec", "--all", "--", "true")
		d := time.Since(st)
		if want := fmt.Sprintf("%d nodes: %d ok", n, n); code != 0 || !strings.Contains(out+errOut, want) {
			t.Fatalf("exec --all: exit %d, want %q\n%s\n%s", code, want, tail(out, 2000), tail(errOut, 2000))
		}
		rep.exec = append(rep.exec, timed{wall: d, ctl: ctl.cpu(t) - c0, agents: selfCPU() - self0, cli: cli})
	}
	stopProfile()
	sm := scrape(t, metricsURL)
	rep.execFanoutSum, rep.execFanoutCount = sm.HistogramSum("flotilla_exec_fanout_seconds"), sm.Sum("flotilla_exec_fanout_seconds")

	// apply: one step on every node, then the same again (nothing to do).
	cf := filepath.Join(work, "Clusterfile")
	os.WriteFile(cf, fmt.Appendf(nil, `apiVersion: flotilla.dev/v1
kind: Cluster
metadata: {name: scale}
spec:
  image: scale:1
  hosts:
    - selector: {bench: scale}
      roles: [node]
  rollout: {parallelism: {node: %d}, onFailure: continue}
`, n), 0o644)
	stopProfile = profileCPU(t, metricsPort, profileDir, "apply", 6)
	defer stopProfile()
	for i, name := range []string{"one-step", "no-op"} {
		c0, self0 := ctl.cpu(t), selfCPU()
		st := time.Now()
		out, errOut, code, cli := cliTimed(t, f, "apply", "-f", cf, "-o", "json")
		d := time.Since(st)
		if code != 0 {
			t.Fatalf("apply %s: exit %d\n%s\n%s", name, code, tail(out, 4000), tail(errOut, 4000))
		}
		var res protocol.ApplyResult
		if err := json.Unmarshal([]byte(lastJSON(out)), &res); err != nil {
			t.Fatalf("apply %s -o json: %v\n%s", name, err, tail(out, 2000))
		}
		want := protocol.NodeOK
		if i == 1 {
			want = protocol.NodeNoop
		}
		okN := 0
		for _, o := range res.Nodes {
			if o.Status == want {
				okN++
			}
		}
		if !res.OK || okN != n {
			t.Fatalf("apply %s: ok=%t, %d of %d nodes %s", name, res.OK, okN, n, want)
		}
		rep.apply = append(rep.apply, timed{wall: d, ctl: ctl.cpu(t) - c0, agents: selfCPU() - self0, cli: cli, engine: res.Duration})
	}
	rep.rssEnd = ctl.rss(t)
	if profileDir != "" {
		saveProfiles(t, metricsPort, profileDir, "end")
	}
	table := rep.table()
	t.Logf("\n%s", table)
	if full && os.Getenv("FLOTILLA_BENCH_README") != "0" {
		if err := updateReadmeSection("README.md", scaleBegin, scaleEnd, table); err != nil {
			t.Errorf("bench/README.md: %v", err)
		}
		if err := updateReadmeSection("../README.md", scaleBegin, scaleEnd, table); err != nil {
			t.Errorf("README.md: %v", err)
		}
	}
}

// agentsDir holds the agents' data dirs on a tmpfs when there is one: every
// agent fsyncs its task sequence and status file, and 2,000 real nodes have
// 2,000 disks, not this host's one.
func agentsDir(t *testing.T) string {
	t.Helper()
	base := envOr("FLOTILLA_SCALE_AGENT_DIR", "/dev/shm")
	if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp(base, "flotilla-scale-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// stubExecutors answers every step kind at once with success: the agent's
// own work (signature, sequence, clock, applied digests, events) stays real.
func stubExecutors() map[string]agent.Executor {
	ok := agent.ExecutorFunc(func(context.Context, *agent.StepContext) error { return nil })
	out := map[string]agent.Executor{}
	for _, k := range []string{"exec", protocol.KindLayer, protocol.KindFile, protocol.KindRun, protocol.KindService, protocol.KindUndo} {
		out[k] = ok
	}
	return out
}

// buildScaleImage builds the bench's image, one run step for role node, into
// a store and returns the store's directory.
func buildScaleImage(t *testing.T, work string) string {
	t.Helper()
	dir := filepath.Join(work, "store")
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctxDir := filepath.Join(work, "image")
	os.MkdirAll(ctxDir, 0o755)
	os.WriteFile(filepath.Join(ctxDir, "Kubefile"), []byte("FROM scratch\nON node RUN true\n"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := build.Build(ctx, st, build.Options{ContextDir: ctxDir, Tags: []string{"scale:1"}}); err != nil {
		t.Fatalf("build the scale image: %v", err)
	}
	return dir
}

func waitOnline(t *testing.T, url string, n int, timeout time.Duration, errs <-chan error) {
	t.Helper()
	var (
		s   promtest.Samples
		err error
	)
	online := func() bool {
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		s, err = promtest.Scrape(context.Background(), url)
		return err == nil && int(s.Sum("flotilla_nodes", "state=online")) == n
	}
	if perr := poll.Until(context.Background(), timeout, 250*time.Millisecond, online); perr != nil {
		t.Fatalf("%d agents not online after %s (last scrape: %v online, err %v)", n, timeout, s.Sum("flotilla_nodes", "state=online"), err)
	}
}

func scrape(t *testing.T, url string) promtest.Samples {
	t.Helper()
	s, err := promtest.Scrape(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// kvSeq adds the last sequence numbers of every KV bucket: messages ever written.
func kvSeq(s promtest.Samples) float64 {
	return s.Sum("flotilla_jetstream_stream_last_sequence", "stream=KV_*")
}

// cliTimed runs a CLI command and returns its CPU seconds too.
func cliTimed(t *testing.T, f *controllertest.Fleet, args ...string) (stdout, stderr string, code int, cpu float64) {
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &before)
	stdout, stderr, code = f.CLI(context.Background(), args...)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &after)
	return stdout, stderr, code, rusageSeconds(after) - rusageSeconds(before)
}

func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return rusageSeconds(ru)
}

func rusageSeconds(ru syscall.Rusage) float64 {
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// lastJSON is the last top-level JSON value of apply -o json's output (the result).
func lastJSON(out string) string {
	out = strings.TrimSpace(out)
	if i := strings.LastIndex(out, "\n{"); i >= 0 {
		return out[i+1:]
	}
	return out
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// procStat reads a process's RSS and CPU seconds from /proc.
type procStat struct{ pid int }

func (p procStat) rss(t *testing.T) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS for pid %d", p.pid)
	return 0
}

func (p procStat) cpu(t *testing.T) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	var ut, st float64
	fmt.Sscanf(fields[11], "%f", &ut)
	fmt.Sscanf(fields[12], "%f", &st)
	return (ut + st) / 100 // USER_HZ
}

// saveProfiles keeps the controller's heap and goroutine profiles and its
// metrics in dir (FLOTILLA_SCALE_PROFILE_DIR): go tool pprof reads them.
func saveProfiles(t *testing.T, port int, dir, stage string) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	for file, path := range map[string]string{
		"heap": "/debug/pprof/heap", "goroutine.txt": "/debug/pprof/goroutine?debug=1", "metrics.txt": "/metrics"} {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			t.Errorf("profile %s: %v", path, err)
			continue
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, stage+"-"+file), data, 0o644)
		}
		if err != nil {
			t.Errorf("profile %s: %v", path, err)
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// profileCPU records CPU profiles of this process (the agents), until the
// returned function is called, and of the controller for the first seconds
// of that, into dir ("": none).
func profileCPU(t *testing.T, port int, dir, stage string, seconds int) func() {
	if dir == "" {
		return func() {}
	}
	os.MkdirAll(dir, 0o755)
	self, err := os.Create(filepath.Join(dir, stage+"-agents.cpu"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(self); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", port, seconds))
		if err != nil {
			return
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		os.WriteFile(filepath.Join(dir, stage+"-controller.cpu"), data, 0o644)
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			pprof.StopCPUProfile()
			self.Close()
			<-done
		})
	}
}

// timed is one measured command: wall time and CPU seconds of the controller,
// the agents (this process) and the CLI.
type timed struct {
	wall             time.Duration
	ctl, agents, cli float64
	engine           time.Duration // apply: the controller's own figure
}

type scaleReport struct {
	n                              int
	loadBefore                     string
	rssIdle, rssConnected, rssEnd  int64
	joinAll, online                time.Duration
	onlineCPU, onlineSelf          float64
	idleCPU, kvWrites, idleWindow  float64
	heapInuse, stackInuse          float64
	goroutines                     float64
	exec, apply                    []timed
	execFanoutSum, execFanoutCount float64
}

func percentile(ts []timed, p float64) timed {
	s := append([]timed(nil), ts...)
	sort.Slice(s, func(i, j int) bool { return s[i].wall < s[j].wall })
	i := int(float64(len(s)-1)*p + 0.5)
	return s[i]
}

func (r *scaleReport) table() string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "Measured %s on %s: %s, %d CPUs (%s), %s.\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, cpuModel(), runtime.NumCPU(), cpuProbe(), runtime.Version())
	fmt.Fprintf(&b, "Command: `make bench-scale` (FLOTILLA_SCALE_AGENTS=%d): one `flotilla controller` process, %d agents (real agent code, own NATS connection and credentials, stub executors) in the test process, all on loopback, sharing the CPUs (load average before the run: %s, from other work on the machine). CPU seconds: controller / agents / CLI.\n\n", r.n, r.n, r.loadBefore)
	b.WriteString("| figure | goal | measured | CPU s (ctl / agents / CLI) |\n|---|---:|---:|---:|\n")
	cpu := func(x timed) string { return fmt.Sprintf("%.2f / %.2f / %.2f", x.ctl, x.agents, x.cli) }
	if len(r.exec) > 0 {
		p50, p99 := percentile(r.exec, .5), percentile(r.exec, .99)
		fmt.Fprintf(&b, "| `exec --all -- true`, p50 of %d (CLI start to summary) | ≤ 0.5 s | %.2f s | %s |\n", len(r.exec), p50.wall.Seconds(), cpu(p50))
		fmt.Fprintf(&b, "| `exec --all -- true`, p99 | ≤ 0.5 s | %.2f s | %s |\n", p99.wall.Seconds(), cpu(p99))
		if r.execFanoutCount > 0 {
			fmt.Fprintf(&b, "| exec fan-out in the controller, mean (flotilla_exec_fanout_seconds) | | %.2f s | |\n", r.execFanoutSum/r.execFanoutCount)
		}
	}
	for i, name := range []string{"one-step `apply` (run step on every node)", "no-op `apply` (same again)"} {
		if i < len(r.apply) {
			a := r.apply[i]
			goal := ""
			if i == 0 {
				goal = "≤ 5 s"
			}
			fmt.Fprintf(&b, "| %s: CLI wall (engine) | %s | %.2f s (%.2f s) | %s |\n", name, goal, a.wall.Seconds(), a.engine.Seconds(), cpu(a))
		}
	}
	fmt.Fprintf(&b, "| join from cold: all %d joined (HTTPS, token) | | %.1f s | |\n", r.n, r.joinAll.Seconds())
	fmt.Fprintf(&b, "| join from cold: all online (NATS, registered, heartbeating) | | %.1f s | %.1f / %.1f / – |\n", r.online.Seconds(), r.onlineCPU, r.onlineSelf)
	fmt.Fprintf(&b, "| heartbeats: KV writes per second at the default 5 s interval | | %.1f /s | |\n", r.kvWrites)
	fmt.Fprintf(&b, "| heartbeats: controller CPU, idle fleet (%.0f s window) | | %.1f%% of a core (%.1f µs per agent per s) | |\n", r.idleWindow, 100*r.idleCPU, 1e6*r.idleCPU/float64(r.n))
	fmt.Fprintf(&b, "| controller RSS idle → %d connected (→ after exec and apply) | | %s → %s (→ %s) | |\n", r.n, mib(r.rssIdle), mib(r.rssConnected), mib(r.rssEnd))
	fmt.Fprintf(&b, "| controller RSS per connected agent | ≤ 30 KiB | %.1f KiB | |\n", float64(r.rssConnected-r.rssIdle)/float64(r.n)/1024)
	fmt.Fprintf(&b, "| controller Go heap in use, stacks, goroutines (connected, idle) | | %s, %s, %.0f | |\n", mib(int64(r.heapInuse)), mib(int64(r.stackInuse)), r.goroutines)
	return b.String()
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

const (
	scaleBegin = "<!-- scale-results:begin (written by make bench-scale) -->"
	scaleEnd   = "<!-- scale-results:end -->"
)

// updateReadmeSection replaces the text between the markers in path.
func updateReadmeSection(path, begin, end, table string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		return fmt.Errorf("markers %q and %q not found", begin, end)
	}
	s = s[:i+len(begin)] + "\n" + table + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
