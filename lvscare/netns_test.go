package lvscare_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/vishvananda/netns"

	"github.com/flotilla-dev/flotilla/internal/testbin"
)

// requireNetns skips (or, in CI, fails) when the test cannot create network namespaces and read nftables.
func requireNetns(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("namespace test skipped in -short mode")
	}
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, b := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b+" (apt-get install -y iproute2 nftables)")
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("namespace test needs %v", missing)
	}
	t.Skipf("namespace test needs %v", missing)
}

// run runs a command with a timeout and returns its combined output; it fails the test on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := tryRun(name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}

func tryRun(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// inNetns runs fn on a thread switched into the named network namespace. Sockets
// created by fn stay in that namespace after the thread switches back.
func inNetns(name string, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return err
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic("cannot return to the test's network namespace: " + err.Error())
		}
	}()
	return fn()
}

// backend is an HTTP server in its own namespace that answers with its name.
type backend struct {
	name, ns, addr string
	hits           atomic.Int64
	mu             sync.Mutex
	srv            *http.Server
}

func (b *backend) start(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var ln net.Listener
	if err := inNetns(b.ns, func() (err error) {
		ln, err = net.Listen("tcp", b.addr)
		return err
	}); err != nil {
		t.Fatalf("start backend %s: %v", b.name, err)
	}
	b.srv = &http.Server{ReadHeaderTimeout: 2 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		io.WriteString(w, b.name)
	})}
	go b.srv.Serve(ln)
}

func (b *backend) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		b.srv.Close()
		b.srv = nil
	}
}

// lab is a client namespace running lvscare, three backend namespaces on a bridge,
// and a namespace whose traffic to the VIP is forwarded through the client.
type lab struct {
	t        *testing.T
	bin      string
	client   string // runs lvscare
	fwd      string // routes the VIP via client: tests the prerouting path
	backends []*backend
	clients  map[string]*http.Client
}

const (
	vip        = "10.77.70.250:80"
	interval   = time.Second
	fall, rise = 2, 2
)

func newLab(t *testing.T) *lab {
	requireNetns(t)
	bin, err := testbin.Path()
	if err != nil {
		t.Fatal(err)
	}
	rnd := make([]byte, 2)
	rand.Read(rnd)
	sfx := hex.EncodeToString(rnd)
	l := &lab{t: t, bin: bin, client: "lvs" + sfx + "c", fwd: "lvs" + sfx + "f", clients: map[string]*http.Client{}}
	sw := "lvs" + sfx + "sw"
	all := []string{sw, l.client, l.fwd}
	for i := 1; i <= 3; i++ {
		ns := fmt.Sprintf("lvs%sb%d", sfx, i)
		all = append(all, ns)
		l.backends = append(l.backends, &backend{name: fmt.Sprintf("b%d", i), ns: ns, addr: fmt.Sprintf("10.77.70.%d:8080", 10+i)})
	}
	t.Cleanup(func() {
		for _, b := range l.backends {
			b.stop()
		}
		for _, ns := range all {
			tryRun("ip", "netns", "del", ns)
		}
	})
	for _, ns := range all {
		run(t, "ip", "netns", "add", ns)
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", sw, "link", "add", "lvsbr", "type", "bridge")
	run(t, "ip", "-n", sw, "link", "set", "lvsbr", "up")
	attach := func(ns, peer, cidr string) {
		run(t, "ip", "-n", ns, "link", "add", "lvs0", "type", "veth", "peer", "name", peer, "netns", sw)
		run(t, "ip", "-n", sw, "link", "set", peer, "master", "lvsbr", "up")
		run(t, "ip", "-n", ns, "addr", "add", cidr, "dev", "lvs0")
		run(t, "ip", "-n", ns, "link", "set", "lvs0", "up")
	}
	attach(l.client, "lvsc", "10.77.70.1/24")
	for i, b := range l.backends {
		attach(b.ns, fmt.Sprintf("lvsb%d", i+1), fmt.Sprintf("10.77.70.%d/24", 11+i))
	}
	// fwd -- client point-to-point link; fwd reaches the VIP only through the client.
	run(t, "ip", "-n", l.fwd, "link", "add", "lvs0", "type", "veth", "peer", "name", "lvsf", "netns", l.client)
	run(t, "ip", "-n", l.client, "addr", "add", "10.77.70.129/30", "dev", "lvsf")
	run(t, "ip", "-n", l.client, "link", "set", "lvsf", "up")
	run(t, "ip", "-n", l.fwd, "addr", "add", "10.77.70.130/30", "dev", "lvs0")
	run(t, "ip", "-n", l.fwd, "link", "set", "lvs0", "up")
	run(t, "ip", "-n", l.fwd, "route", "add", "10.77.70.250/32", "via", "10.77.70.129")
	run(t, "ip", "netns", "exec", l.client, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for _, b := range l.backends {
		b.start(t)
	}
	return l
}

// get fetches url from namespace ns over a new connection and returns the body.
func (l *lab) get(ns, url string) (string, error) {
	c := l.clients[ns]
	if c == nil {
		c = &http.Client{Timeout: time.Second, Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
				err = inNetns(ns, func() error {
					var d net.Dialer
					conn, err = d.DialContext(ctx, network, addr)
					return err
				})
				return conn, err
			},
		}}
		l.clients[ns] = c
	}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

func (l *lab) getVIP() (string, error) { return l.get(l.client, "http://"+vip+"/") }

// spread sends n requests to the VIP from ns and counts answers per backend; it fails on any error.
func (l *lab) spread(t *testing.T, ns string, n int) map[string]int {
	t.Helper()
	got, err := l.trySpread(ns, n)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func (l *lab) trySpread(ns string, n int) (map[string]int, error) {
	got := map[string]int{}
	for range n {
		body, err := l.get(ns, "http://"+vip+"/")
		if err != nil {
			return got, fmt.Errorf("request to the VIP from %s: %w", ns, err)
		}
		got[body]++
	}
	return got, nil
}

func (l *lab) nft(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"netns", "exec", l.client, "nft"}, args...)...)
}

// lockedBuffer collects a process's output safely.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type proc struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

// lvscare starts `flotilla lvscare args...` inside the client namespace.
func (l *lab) lvscare(args ...string) *proc {
	l.t.Helper()
	p := &proc{out: &lockedBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", l.client, l.bin, "lvscare"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	l.t.Cleanup(func() {
		p.stop(l.t)
		if l.t.Failed() {
			l.t.Logf("lvscare %v output:\n%s", args, p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM and waits; a process that has already exited is fine.
func (p *proc) stop(t *testing.T) error {
	select {
	case err := <-p.done:
		p.done <- err
		return err
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		t.Errorf("lvscare did not stop within 5s of SIGTERM")
		return errors.New("killed")
	}
}

// waitFor polls cond every 20ms until it holds or timeout passes; it returns the time it took.
func waitFor(timeout time.Duration, cond func() bool) (time.Duration, bool) {
	start := time.Now()
	err := poll.Until(context.Background(), timeout, 20*time.Millisecond, cond)
	return time.Since(start), err == nil
}
