// Package natstest runs real nats-server processes for process-level tests: a
// cluster with JetStream on loopback (random ports, temporary dirs) and leaf
// nodes, built from the nats-server module flotilla already depends on (the
// binary is cached in the user's cache dir by module version).
package natstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const module = "github.com/nats-io/nats-server/v2"

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary returns the path of a nats-server built from the module version in
// flotilla's go.mod, building it once into the user's cache dir.
func Binary() (string, error) {
	buildOnce.Do(func() { binPath, buildErr = build() })
	return binPath, buildErr
}

func build() (string, error) {
	version := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == module {
				version = d.Version
			}
		}
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "flotilla-test")
	path := filepath.Join(dir, "nats-server-"+version)
	if _, err := os.Stat(path); err == nil && version != "unknown" {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp, module)
	cmd.Dir = moduleRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build nats-server: %w\n%s", err, out)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", err
	}
	return path, nil
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Server is one nats-server process.
type Server struct {
	Name     string
	Port     int // client port
	URL      string
	Conf     string
	Log      string
	bin      string
	cmd      *exec.Cmd
	done     chan struct{}
	killOnce sync.Once
}

// Cluster is the servers of one NATS cluster.
type Cluster struct {
	Servers []*Server
}

// URLs are the client URLs of all servers.
func (c *Cluster) URLs() []string {
	var u []string
	for _, s := range c.Servers {
		u = append(u, s.URL)
	}
	return u
}

// FreePort returns a loopback port nothing listens on now.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// StartCluster starts n servers in one cluster with JetStream; authConf is
// added to every server's config (e.g. natsauth's auth.conf). extra, if set,
// returns more config for server i (e.g. a leafnodes block).
func StartCluster(t testing.TB, n int, authConf string, extra func(i int) string) *Cluster {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	dir := t.TempDir()
	clusterPorts := make([]int, n)
	for i := range clusterPorts {
		clusterPorts[i] = FreePort(t)
	}
	var routes []string
	for _, p := range clusterPorts {
		routes = append(routes, strconv.Quote(fmt.Sprintf("nats-route://127.0.0.1:%d", p)))
	}
	c := &Cluster{}
	t.Cleanup(func() {
		for _, s := range c.Servers {
			s.Kill()
		}
		if t.Failed() {
			for _, s := range c.Servers {
				data, _ := os.ReadFile(s.Log)
				if len(data) > 3000 {
					data = data[len(data)-3000:]
				}
				t.Logf("--- log of nats-server %s:\n%s", s.Name, data)
			}
		}
	})
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		port := FreePort(t)
		var conf strings.Builder
		fmt.Fprintf(&conf, "server_name: %s\nlisten: %s\njetstream { store_dir: %s }\n", name,
			strconv.Quote(fmt.Sprintf("127.0.0.1:%d", port)), strconv.Quote(filepath.Join(dir, name, "js")))
		if n > 1 {
			fmt.Fprintf(&conf, "cluster { name: flotilla, listen: %s, routes: [%s] }\n",
				strconv.Quote(fmt.Sprintf("127.0.0.1:%d", clusterPorts[i])), strings.Join(routes, ", "))
		}
		if extra != nil {
			conf.WriteString(extra(i))
		}
		conf.WriteString(authConf)
		s := startServer(t, bin, filepath.Join(dir, name), name, port, conf.String())
		c.Servers = append(c.Servers, s)
	}
	return c
}

// StartServer starts one server with the given config (plus listen and
// server_name, which it sets).
func StartServer(t testing.TB, name, conf string) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	port := FreePort(t)
	dir := filepath.Join(t.TempDir(), name)
	conf = fmt.Sprintf("server_name: %s\nlisten: %s\n", name, strconv.Quote(fmt.Sprintf("127.0.0.1:%d", port))) + conf
	s := startServer(t, bin, dir, name, port, conf)
	t.Cleanup(s.Kill)
	return s
}

func startServer(t testing.TB, bin, dir, name string, port int, conf string) *Server {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	s := &Server{Name: name, Port: port, URL: fmt.Sprintf("nats://127.0.0.1:%d", port),
		Conf: filepath.Join(dir, "server.conf"), Log: filepath.Join(dir, "server.log"), bin: bin}
	if err := os.WriteFile(s.Conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.run(t)
	return s
}

// run starts the process of s, appending to its log.
func (s *Server) run(t testing.TB) {
	t.Helper()
	lf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	s.done = make(chan struct{})
	s.killOnce = sync.Once{}
	s.cmd = exec.Command(s.bin, "-c", s.Conf)
	s.cmd.Stdout, s.cmd.Stderr = lf, lf
	if err := s.cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("start nats-server %s: %v", s.Name, err)
	}
	done := s.done
	go func() {
		_ = s.cmd.Wait()
		lf.Close()
		close(done)
	}()
}

// Restart kills the server (SIGKILL) and starts it again with the same
// config, port and store, as after a crash; it returns once the new process
// accepts TCP connections on its client port (or fails the test after 30s).
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Kill()
	s.run(t)
	exited := false
	err := poll.Until(context.Background(), 30*time.Second, 50*time.Millisecond, func() bool {
		select {
		case <-s.done:
			exited = true
			return true
		default:
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port), time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if exited {
		t.Fatalf("nats-server %s exited after its restart; see %s", s.Name, s.Log)
	}
	if err != nil {
		t.Fatalf("nats-server %s does not listen on %d after its restart: %v", s.Name, s.Port, err)
	}
}

// Kill sends SIGKILL to the server (the process this package started) and
// waits for it to exit.
func (s *Server) Kill() {
	s.killOnce.Do(func() {
		if s.cmd.Process != nil {
			_ = s.cmd.Process.Signal(syscall.SIGKILL)
		}
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
		}
	})
}

// WaitJetStream waits until JetStream answers for the user of credsFile
// through urls (a cluster has elected its meta leader).
func WaitJetStream(ctx context.Context, urls []string, credsFile string) error {
	var last error
	for {
		nc, err := nats.Connect(strings.Join(urls, ","), nats.UserCredentials(credsFile), nats.Timeout(2*time.Second))
		if err == nil {
			js, jerr := jetstream.New(nc)
			if jerr == nil {
				actx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, jerr = js.AccountInfo(actx)
				cancel()
			}
			nc.Close()
			if jerr == nil {
				return nil
			}
			err = jerr
		}
		last = err
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("JetStream not ready: %w", ctx.Err()), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
