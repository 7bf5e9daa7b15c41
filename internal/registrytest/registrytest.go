// Package registrytest starts a real OCI registry (Debian's docker-registry) on a
// loopback port for tests, behind a reverse proxy that counts requests.
package registrytest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Binary is where Debian's docker-registry package installs the server.
const Binary = "/usr/bin/docker-registry"

// Registry is a running registry. Host is the proxy's host:port (use it in references);
// Storage is the registry's root directory.
type Registry struct {
	Host    string
	Addr    string // the registry's own host:port, without the counting proxy
	Storage string
	mu      sync.Mutex
	counts  map[string]int
	stop    func()
}

// Options tweaks the registry's configuration.
type Options struct {
	// HtpasswdFile enables basic auth with this bcrypt htpasswd file.
	HtpasswdFile string
	// Listen is the registry's own address (default 127.0.0.1:0, a free loopback
	// port); the counting proxy in Host always listens on loopback.
	Listen string
}

// Start runs the registry for the test and stops it (by PID) at cleanup. Without the
// binary it skips, or fails when CI=true.
func Start(t testing.TB, o Options) *Registry {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s missing: apt-get install -y docker-registry (.ci/run installs it)", Binary)
		}
		t.Skipf("%s missing: apt-get install -y docker-registry", Binary)
	}
	dir := t.TempDir()
	storage := filepath.Join(dir, "storage")
	listen := o.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	auth := ""
	if o.HtpasswdFile != "" {
		auth = fmt.Sprintf("auth:\n  htpasswd:\n    realm: flotilla-test\n    path: %s\n", o.HtpasswdFile)
	}
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
%s`, storage, addr, auth)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Binary, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", Binary, err)
	}
	var once sync.Once
	stopRegistry := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			logf.Close()
		})
	}
	t.Cleanup(stopRegistry)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case <-ctx.Done():
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("registry on %s not ready after 15s: %v\n%s", addr, err, b)
		case <-time.After(30 * time.Millisecond):
		}
	}
	r := &Registry{Addr: addr, Storage: storage, counts: map[string]int{}}
	target, _ := url.Parse("http://" + addr)
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.counts[classify(req)]++
		r.mu.Unlock()
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.stop = func() { stopRegistry(); srv.Close() }
	r.Host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

// Stop kills the registry and closes the proxy: from then on nothing answers at Host.
func (r *Registry) Stop() { r.stop() }

// classify names a registry request: "upload" (starting or sending a blob upload),
// "blob-head", "blob-get", "manifest-put", "manifest-get" or "other".
func classify(req *http.Request) string {
	p := req.URL.Path
	switch {
	case strings.Contains(p, "/blobs/uploads/"):
		return "upload"
	case strings.Contains(p, "/blobs/") && req.Method == http.MethodHead:
		return "blob-head"
	case strings.Contains(p, "/blobs/"):
		return "blob-get"
	case strings.Contains(p, "/manifests/") && req.Method == http.MethodPut:
		return "manifest-put"
	case strings.Contains(p, "/manifests/"):
		return "manifest-get"
	}
	return "other"
}

// Count returns how many requests of a kind the proxy saw.
func (r *Registry) Count(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.counts[kind]
}

// Reset zeroes the counters.
func (r *Registry) Reset() {
	r.mu.Lock()
	r.counts = map[string]int{}
	r.mu.Unlock()
}

// BlobData returns the file where the registry keeps a blob (digest "sha256:<hex>").
func (r *Registry) BlobData(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(r.Storage, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
}
