// Package bench holds flotilla's benchmarks that need a simulated fleet.
package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/internal/testbin"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
	"github.com/flotilla-dev/flotilla/p2p/pieces/piecestest"
)

// The distribution benchmark: one random layer of S bytes to N hosts, each
// a network namespace on one bridge whose link (the controller's included)
// is shaped with tbf to B = 100 Mbit/s both ways. For each N it measures T,
// from the start to the last host holding the verified layer, for flotilla
// peer-to-peer, flotilla with peer-to-peer off (everything from the
// controller) and parallel scp from the controller host to sshd on every host.
const (
	benchSubnet = "10.77.60"
	bridge      = "fltb0"
	seedNS      = "fltb-c"
	seedIP      = benchSubnet + ".2"
	linkMbit    = 100
	tbf         = "tbf rate 100mbit burst 256kb latency 50ms"
)

func nodeNS(i int) string { return fmt.Sprintf("fltb-%d", i) }
func nodeIP(i int) string { return fmt.Sprintf("%s.%d", benchSubnet, 10+i) }

type result struct {
	method string
	n      int
	t      time.Duration
	cpu    float64 // share of the machine's CPU busy during the run
	cpuSec float64 // CPU seconds (user + system) of every process of the method
	load   string  // 1-minute load average when the run started (other work on the machine)
}

func TestDistributionBenchmark(t *testing.T) {
	if os.Getenv("FLOTILLA_BENCH") != "1" {
		t.Skip("distribution benchmark: run with `make bench-distribution` (sets FLOTILLA_BENCH=1)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("distribution benchmark: needs root for network namespaces and tc")
	}
	ensureTools(t)
	cg := newCPUGroup(t)
	probe := cpuProbe()
	sizeMiB := envInt(t, "FLOTILLA_BENCH_SIZE_MIB", 128)
	ns := envInts(t, "FLOTILLA_BENCH_NODES", "5,10,20")
	methods := strings.Split(envOr("FLOTILLA_BENCH_METHODS", "p2p,rollout,images,seed-only,scp"), ",")
	maxN := 0
	for _, n := range ns {
		maxN = max(maxN, n)
	}
	bin, err := testbin.Path()
	if err != nil {
		t.Fatal(err)
	}

	work := t.TempDir()
	// Stores on tmpfs: on a real fleet every host has its own disk; here 20
	// hosts would share one and measure its write-back, not the network.
	stores := filepath.Join(work, "stores")
	os.MkdirAll(stores, 0o755)
	run(t, "mount", "-t", "tmpfs", "-o", "size=8g", "fltb-stores", stores)
	t.Cleanup(func() { exec.Command("umount", "-l", stores).Run() })

	size := int64(sizeMiB) << 20
	blob := filepath.Join(work, "layer")
	writeRandom(t, blob, size)
	listFile := filepath.Join(work, "pieces.json")
	pieceSize := envOr("FLOTILLA_BENCH_PIECE_SIZE", "") // default: flotilla's choice
	out, err := exec.Command(bin, "blob", "pieces", "--piece-size="+pieceSize, blob).Output()
	if err != nil {
		t.Fatalf("flotilla blob pieces: %v", err)
	}
	os.WriteFile(listFile, out, 0o644)
	var list pieces.PieceList
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatal(err)
	}
	certs := writeCerts(t, work, maxN)
	setupNetwork(t, maxN)

	ideal := time.Duration(float64(size*8) / (linkMbit * 1e6) * float64(time.Second))
	t.Logf("S = %d MiB, B = %d Mbit/s, S/B = %.2fs, %d pieces of %d KiB", sizeMiB, linkMbit, ideal.Seconds(), list.Count(), list.PieceSize>>10)

	var results []result
	var sshKey string
	var img, imgs rolloutImage
	for _, m := range methods {
		switch m {
		case "scp":
			sshKey = startSSHDs(t, cg, work, maxN)
		case "rollout":
			img = buildRolloutImage(t, work, stores, blob)
		case "images":
			imgs = buildImagesImage(t, work, stores, size)
		}
	}
	for _, n := range ns {
		for _, m := range methods {
			var r result
			load := loadAvg()
			cpu := cpuSampler()
			cpuStart := cg.seconds()
			switch m {
			case "p2p", "seed-only":
				r = runFlotilla(t, cg, bin, work, stores, blob, listFile, pieceSize, list, certs, n, m)
			case "rollout":
				var f result
				r, f = runRollout(t, cg, bin, work, stores, img, size, n)
				f.cpu, f.load = math.NaN(), load
				t.Logf("N=%2d %-9s T=%6.2fs  T/(S/B)=%.2f", n, "(fetched)", f.t.Seconds(), f.t.Seconds()/ideal.Seconds())
				results = append(results, f)
			case "scp":
				r = runSCP(t, cg, work, stores, blob, sshKey, n)
			case "images":
				r = runImages(t, cg, bin, work, stores, imgs, n)
			default:
				t.Fatalf("FLOTILLA_BENCH_METHODS: unknown method %q (want p2p, rollout, images, seed-only, scp)", m)
			}
			r.cpu, r.load = cpu(), load
			r.cpuSec = cg.seconds() - cpuStart
			t.Logf("N=%2d %-9s T=%6.2fs  T/(S/B)=%.2f  CPU busy %.0f%%  %.1f CPU s per delivered GiB", n, m, r.t.Seconds(), r.t.Seconds()/ideal.Seconds(), r.cpu*100,
				r.cpuSec/(float64(n)*float64(size)/(1<<30)))
			results = append(results, r)
			if dir := os.Getenv("FLOTILLA_BENCH_PROFILE"); dir != "" && m != "scp" {
				sum, err := summarizeProfiles(filepath.Join(dir, fmt.Sprintf("%s-%d", m, n)))
				if err != nil {
					t.Errorf("CPU profiles of %s N=%d: %v", m, n, err)
				}
				t.Logf("N=%2d %s: where the CPU went (Go CPU profiles, flat):\n%s", n, m, sum)
			}
		}
	}
	var shown []string
	for _, m := range methods {
		shown = append(shown, m)
		if m == "rollout" {
			shown = append(shown, "rollout-fetch")
		}
	}
	table := renderTable(results, ns, shown, ideal, sizeMiB, list, probe)
	t.Log("\n" + table)
	if os.Getenv("FLOTILLA_BENCH_README") != "0" {
		if err := updateReadme(table); err != nil {
			t.Errorf("update bench/README.md: %v", err)
		}
	}
}

func ensureTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"ip", "tc", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("distribution benchmark: %s not found: apt-get install -y iproute2", tool)
		}
	}
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		t.Log("installing openssh-server for the scp baseline")
		cmd := exec.Command("apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("apt-get install openssh-server: %v\n%s", err, out)
		}
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envInt(t *testing.T, k string, def int) int {
	v, err := strconv.Atoi(envOr(k, strconv.Itoa(def)))
	if err != nil || v <= 0 {
		t.Fatalf("%s: want a positive integer", k)
	}
	return v
}

func envInts(t *testing.T, k, def string) []int {
	var out []int
	for _, s := range strings.Split(envOr(k, def), ",") {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || v <= 0 || v > 100 {
			t.Fatalf("%s: want a comma-separated list of 1..100", k)
		}
		out = append(out, v)
	}
	return out
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func writeRandom(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
}

type certFiles struct{ ca, cert, key string }

// writeCerts makes a throwaway cluster CA and one certificate per host.
func writeCerts(t *testing.T, work string, n int) map[string]certFiles {
	t.Helper()
	ca, err := piecestest.NewCA("bench-ca")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(work, "tls")
	os.MkdirAll(dir, 0o700)
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, ca.CertPEM, 0o644)
	out := map[string]certFiles{}
	hosts := map[string]string{"seed": seedIP}
	for i := 1; i <= n; i++ {
		hosts[fmt.Sprintf("n%d", i)] = nodeIP(i)
	}
	for name, ip := range hosts {
		cert, key, err := ca.Issue(name, ip)
		if err != nil {
			t.Fatal(err)
		}
		cf := certFiles{ca: caFile, cert: filepath.Join(dir, name+".pem"), key: filepath.Join(dir, name+"-key.pem")}
		os.WriteFile(cf.cert, cert, 0o644)
		os.WriteFile(cf.key, key, 0o600)
		out[name] = cf
	}
	return out
}

// setupNetwork creates the bridge and one shaped namespace per host; every
// piece is removed again when the test ends, failed or not.
func setupNetwork(t *testing.T, n int) {
	t.Helper()
	if out, _ := exec.Command("ip", "route").Output(); strings.Contains(string(out), benchSubnet+".") {
		t.Fatalf("subnet %s.0/24 is already routed on this machine; the benchmark will not touch it", benchSubnet)
	}
	t.Cleanup(func() { teardownNetwork(n) })
	teardownNetwork(n) // leftovers of an interrupted run
	run(t, "ip", "link", "add", bridge, "type", "bridge")
	run(t, "ip", "link", "set", bridge, "up")
	add := func(ns, veth, ip string) {
		run(t, "ip", "netns", "add", ns)
		run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		run(t, "ip", "link", "set", veth, "master", bridge, "up")
		run(t, "ip", "-n", ns, "addr", "add", ip+"/24", "dev", "eth0")
		run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
		run(t, "tc", append([]string{"qdisc", "add", "dev", veth, "root"}, strings.Fields(tbf)...)...)
		run(t, "ip", append([]string{"netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root"}, strings.Fields(tbf)...)...)
	}
	add(seedNS, "fltbv-c", seedIP)
	for i := 1; i <= n; i++ {
		add(nodeNS(i), fmt.Sprintf("fltbv-%d", i), nodeIP(i))
	}
}

func teardownNetwork(n int) {
	exec.Command("ip", "netns", "del", seedNS).Run()
	for i := 1; i <= max(n, 100); i++ {
		if _, err := os.Stat("/run/netns/" + nodeNS(i)); err == nil {
			exec.Command("ip", "netns", "del", nodeNS(i)).Run()
		}
	}
	exec.Command("ip", "link", "del", bridge).Run()
}

// proc is a process started in a namespace, stopped by its PID.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func startIn(t *testing.T, cg *cpuGroup, ns string, logFile string, stdout io.Writer, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cg.adopt(cmd)
	if dir := os.Getenv("FLOTILLA_BENCH_PROFILE"); dir != "" {
		// <dir>/<method>-<N>/<process>.pprof, named like the process's log.
		prof := filepath.Join(dir, filepath.Base(filepath.Dir(logFile)), strings.TrimSuffix(filepath.Base(logFile), ".log")+".pprof")
		if err := os.MkdirAll(filepath.Dir(prof), 0o755); err != nil {
			t.Fatal(err)
		}
		cmd.Env = append(os.Environ(), "FLOTILLA_CPU_PROFILE="+prof)
	}
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = lf
	cmd.Stdout = lf
	if stdout != nil {
		cmd.Stdout = stdout
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s in %s: %v", name, ns, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); lf.Close(); close(p.done) }()
	t.Cleanup(p.stop)
	return p
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// runFlotilla times flotilla blob fetch on n hosts, the seed (and tracker)
// on the controller host. method is p2p or seed-only.
func runFlotilla(t *testing.T, cg *cpuGroup, bin, work, stores, blob, listFile, pieceSize string, list pieces.PieceList, certs map[string]certFiles, n int, method string) result {
	t.Helper()
	logs := filepath.Join(envOr("FLOTILLA_BENCH_LOGS", filepath.Join(work, "logs")), fmt.Sprintf("%s-%d", method, n))
	os.MkdirAll(logs, 0o755)
	defer func() {
		for i := 0; i <= n; i++ {
			os.RemoveAll(filepath.Join(stores, fmt.Sprintf("n%d", i)))
		}
		os.RemoveAll(filepath.Join(stores, "seed"))
	}()
	c := certs["seed"]
	seedLog := filepath.Join(logs, "seed.log")
	logLevel := envOr("FLOTILLA_BENCH_LOG_LEVEL", "info")
	seed := startIn(t, cg, seedNS, seedLog, nil, bin, "--log-level", logLevel, "blob", "serve",
		"--dir", filepath.Join(stores, "seed"), "--listen", seedIP+":7443", "--tracker-listen", seedIP+":7444",
		"--seed", blob, "--piece-size="+pieceSize, "--ca", c.ca, "--cert", c.cert, "--key", c.key)
	defer seed.stop()
	// Ready once it logs that it seeds (the layer is in its store and announced).
	exited := false
	seeding := func() bool {
		select {
		case <-seed.done:
			exited = true
			return true
		default:
		}
		b, _ := os.ReadFile(seedLog)
		return strings.Contains(string(b), "msg=seeding")
	}
	if err := poll.Until(context.Background(), 30*time.Second, 50*time.Millisecond, seeding); err != nil || exited {
		t.Fatalf("seed not seeding (exited %v, %v); see %s", exited, err, seedLog)
	}

	type done struct {
		i   int
		at  time.Time
		err error
	}
	doneC := make(chan done, n)
	var procs []*proc
	start := time.Now()
	for i := 1; i <= n; i++ {
		c := certs[fmt.Sprintf("n%d", i)]
		outR, outW := io.Pipe()
		args := []string{"--log-level", logLevel, "blob", "fetch", "--list", listFile, "--tracker", "https://" + seedIP + ":7444",
			"--dir", filepath.Join(stores, fmt.Sprintf("n%d", i)), "--listen", nodeIP(i) + ":7443", "--id", fmt.Sprintf("n%d", i),
			"--ca", c.ca, "--cert", c.cert, "--key", c.key, "--peers", map[string]string{"p2p": "swarm", "seed-only": "seed-only"}[method]}
		args = append(args, strings.Fields(os.Getenv("FLOTILLA_BENCH_FETCH_ARGS"))...)
		p := startIn(t, cg, nodeNS(i), filepath.Join(logs, fmt.Sprintf("n%d.log", i)), outW, bin, args...)
		procs = append(procs, p)
		go func() {
			sc := bufio.NewScanner(outR)
			if sc.Scan() && strings.Contains(sc.Text(), `"event":"done"`) {
				doneC <- done{i: i, at: time.Now()}
			} else {
				doneC <- done{i: i, err: fmt.Errorf("n%d exited without finishing; see %s", i, filepath.Join(logs, fmt.Sprintf("n%d.log", i)))}
			}
			io.Copy(io.Discard, outR)
		}()
		go func() { <-p.done; outW.Close() }()
	}
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	var last time.Time
	var order []string
	timeout := time.After(15 * time.Minute)
	for range n {
		select {
		case d := <-doneC:
			if d.err != nil {
				t.Fatal(d.err)
			}
			order = append(order, fmt.Sprintf("n%d@%.1f", d.i, d.at.Sub(start).Seconds()))
			if d.at.After(last) {
				last = d.at
			}
		case <-timeout:
			t.Fatalf("%s N=%d: not all hosts done after 15 minutes; logs in %s", method, n, logs)
		}
	}
	T := last.Sub(start)
	t.Logf("%s N=%d: done in order %s", method, n, strings.Join(order, " "))
	// The fetchers verified the digest; check they left the bytes in place.
	for i := 1; i <= n; i++ {
		st, err := os.Stat(filepath.Join(stores, fmt.Sprintf("n%d", i), list.Digest.String()))
		if err != nil || st.Size() != list.Size {
			t.Fatalf("n%d: blob missing or wrong size after done: %v", i, err)
		}
	}
	return result{method: method, n: n, t: T}
}

// startSSHDs runs one sshd per host namespace (own config, host key, port 22,
// key auth with a throwaway key) and returns the client key path.
func startSSHDs(t *testing.T, cg *cpuGroup, work string, n int) string {
	t.Helper()
	dir := filepath.Join(work, "ssh")
	os.MkdirAll(dir, 0o700)
	os.MkdirAll("/run/sshd", 0o755) // sshd's privilege separation directory
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "host_key"))
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "id"))
	pub, err := os.ReadFile(filepath.Join(dir, "id.pub"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600)
	for i := 1; i <= n; i++ {
		cfg := filepath.Join(dir, fmt.Sprintf("sshd_config.%d", i))
		os.WriteFile(cfg, []byte(fmt.Sprintf(`ListenAddress %s
Port 22
HostKey %s
PidFile none
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
`, nodeIP(i), filepath.Join(dir, "host_key"), filepath.Join(dir, "authorized_keys"))), 0o600)
		startIn(t, cg, nodeNS(i), filepath.Join(dir, fmt.Sprintf("sshd.%d.log", i)), nil, "/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	}
	// Wait until every sshd accepts a session.
	deadline := time.Now().Add(20 * time.Second)
	for i := 1; i <= n; i++ {
		for {
			err := exec.Command("ip", "netns", "exec", seedNS, "ssh", "-i", filepath.Join(dir, "id"), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@"+nodeIP(i), "true").Run()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("sshd in %s not answering: %v; see %s", nodeNS(i), err, filepath.Join(dir, fmt.Sprintf("sshd.%d.log", i)))
			}
			time.Sleep(100 * time.Millisecond) // each try is a real ssh session; pace them
		}
	}
	return filepath.Join(dir, "id")
}

// runSCP times parallel scp from the controller host to every host, each
// host done when its copy hashes to the layer's digest.
func runSCP(t *testing.T, cg *cpuGroup, work, stores, blob, key string, n int) result {
	t.Helper()
	want := fileSHA256(t, blob)
	defer os.RemoveAll(filepath.Join(stores, "scp"))
	var wg sync.WaitGroup
	ends := make([]time.Time, n+1)
	errs := make([]error, n+1)
	start := time.Now()
	for i := 1; i <= n; i++ {
		dst := filepath.Join(stores, "scp", fmt.Sprintf("n%d", i))
		os.MkdirAll(dst, 0o755)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "ip", "netns", "exec", seedNS, "scp", "-q", "-i", key,
				"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
				blob, "root@"+nodeIP(i)+":"+filepath.Join(dst, "layer"))
			cg.adopt(cmd)
			out, err := cmd.CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("scp to %s: %v: %s", nodeIP(i), err, out)
				return
			}
			if got := fileSHA256(t, filepath.Join(dst, "layer")); got != want {
				errs[i] = fmt.Errorf("scp to %s: copy hashes to %s, want %s", nodeIP(i), got, want)
				return
			}
			ends[i] = time.Now()
		}()
	}
	wg.Wait()
	var last time.Time
	for i := 1; i <= n; i++ {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if ends[i].After(last) {
			last = ends[i]
		}
	}
	return result{method: "scp", n: n, t: last.Sub(start)}
}

func fileSHA256(t *testing.T, path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "open: " + err.Error()
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil))
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// cpuSampler returns a func that reports the share of all CPUs busy since
// cpuSampler was called (from /proc/stat).
func cpuSampler() func() float64 {
	read := func() (busy, total float64) {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0
		}
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:]
		for i, s := range f {
			v, _ := strconv.ParseFloat(s, 64)
			total += v
			if i != 3 && i != 4 { // idle, iowait
				busy += v
			}
		}
		return busy, total
	}
	b0, t0 := read()
	return func() float64 {
		b1, t1 := read()
		if t1 == t0 {
			return 0
		}
		return (b1 - b0) / (t1 - t0)
	}
}

var methodTitle = map[string]string{
	"p2p":           "flotilla, peer-to-peer",
	"rollout":       "flotilla apply, peer-to-peer: the whole rollout (agents, controller; fetch, verify, unpack)",
	"rollout-fetch": "flotilla apply, peer-to-peer: to the last agent holding the verified layer",
	"seed-only":     "flotilla, peer-to-peer off (all from the controller)",
	"scp":           "parallel scp from the controller (OpenSSH 9.2)",
	"images":        "flotilla apply of 10 container images (S in all) into every node's registry mirror cache",
}

func renderTable(rs []result, ns []int, methods []string, ideal time.Duration, sizeMiB int, list pieces.PieceList, probe string) string {
	var b strings.Builder
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	mem := "?"
	if m, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(string(m))
		if len(f) > 1 {
			kb, _ := strconv.ParseFloat(f[1], 64)
			mem = fmt.Sprintf("%.0f GiB", kb/(1<<20))
		}
	}
	fmt.Fprintf(&b, "Measured %s on %s: %d CPUs (%s; %s), %s memory, Linux %s, %s.\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), host, runtime.NumCPU(), cpuModel(), probe, mem, strings.TrimSpace(string(kernel)), runtime.Version())
	fmt.Fprintf(&b, "Command: `make bench-distribution`. S = %d MiB (%d pieces of %d KiB), B = %d Mbit/s (tbf on every veth end), S/B = %.2f s.\n", sizeMiB, list.Count(), list.PieceSize>>10, linkMbit, ideal.Seconds())
	b.WriteString("CPU s/GiB: CPU seconds (user + system) of every process of the method (seed, tracker, fetchers, controller, agents, CLI; scp, ssh and sshd), per GiB delivered to a host (N × S).\n\n")
	b.WriteString("| method | N | T (s) | T / (S/B) | CPU s/GiB | CPU busy | load before |\n|---|---:|---:|---:|---:|---:|---:|\n")
	gib := float64(sizeMiB) / 1024
	for _, m := range methods {
		for _, n := range ns {
			for _, r := range rs {
				if r.method == m && r.n == n {
					cpu := fmt.Sprintf("%.0f%%", r.cpu*100)
					perGiB := fmt.Sprintf("%.2f", r.cpuSec/(float64(n)*gib))
					if math.IsNaN(r.cpu) {
						cpu, perGiB = "(same run)", "(same run)"
					}
					fmt.Fprintf(&b, "| %s | %d | %.1f | %.2f | %s | %s | %s |\n", methodTitle[m], n, r.t.Seconds(), r.t.Seconds()/ideal.Seconds(), perGiB, cpu, r.load)
				}
			}
		}
	}
	if len(ns) > 1 {
		lo, hi := slices.Min(ns), slices.Max(ns)
		var ratios []string
		for _, m := range methods {
			var tlo, thi time.Duration
			for _, r := range rs {
				if r.method == m && r.n == lo {
					tlo = r.t
				}
				if r.method == m && r.n == hi {
					thi = r.t
				}
			}
			if tlo > 0 && thi > 0 {
				ratios = append(ratios, fmt.Sprintf("%s %.2f", methodTitle[m], thi.Seconds()/tlo.Seconds()))
			}
		}
		fmt.Fprintf(&b, "\nT(%d) / T(%d): %s.\n", hi, lo, strings.Join(ratios, "; "))
	}
	return b.String()
}

const (
	readmeBegin = "<!-- distribution-results:begin (written by make bench-distribution) -->"
	readmeEnd   = "<!-- distribution-results:end -->"
)

// updateReadme replaces the results between the markers in bench/README.md.
func updateReadme(table string) error {
	b, err := os.ReadFile("README.md")
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, readmeBegin), strings.Index(s, readmeEnd)
	if i < 0 || j < i {
		return fmt.Errorf("markers %q and %q not found", readmeBegin, readmeEnd)
	}
	s = s[:i+len(readmeBegin)] + "\n" + table + s[j:]
	return os.WriteFile("README.md", []byte(s), 0o644)
}
