package packaging_test

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/packaging"
)

func get(t *testing.T, h http.Handler, host, path string, hdr ...string) *http.Response {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, path, nil)
	r.Host = host
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Result()
}

func body(t *testing.T, r *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestHandler(t *testing.T) {
	dir := t.TempDir()
	amd := []byte("amd64 agent binary")
	if err := os.WriteFile(filepath.Join(dir, "flotilla-linux-amd64"), amd, 0o755); err != nil {
		t.Fatal(err)
	}
	self := filepath.Join(t.TempDir(), "flotilla")
	selfBytes := []byte("the running executable")
	if err := os.WriteFile(self, selfBytes, 0o755); err != nil {
		t.Fatal(err)
	}
	h := packaging.Handler(packaging.Options{BinDir: dir, Executable: self})
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}

	for _, tc := range []struct {
		name, host, path string
		code             int
		want             string
	}{
		{"script names the controller", "10.77.0.1:9443", "/bootstrap.sh", 200, "CONTROLLER='https://10.77.0.1:9443'"},
		{"script for a DNS name", "ctrl.example:9443", "/bootstrap.sh", 200, "CONTROLLER='https://ctrl.example:9443'"},
		{"script for IPv6", "[fd00::1]:9443", "/bootstrap.sh", 200, "CONTROLLER='https://[fd00::1]:9443'"},
		{"hostile Host header", "x';rm -rf /;'", "/bootstrap.sh", 400, "bad Host header"},
		{"binary from BinDir", "c:9443", "/v1/agent/flotilla-linux-amd64", 200, string(amd)},
		{"sha256 in sha256sum format", "c:9443", "/v1/agent/flotilla-linux-amd64.sha256", 200, sum(amd) + "  flotilla-linux-amd64\n"},
		{"unknown arch", "c:9443", "/v1/agent/flotilla-linux-mips", 404, "want flotilla-linux-{amd64,arm64}"},
		{"not an agent", "c:9443", "/v1/agent/passwd", 404, "no agent binary"},
		{"path escape", "c:9443", "/v1/agent/..%2f..%2fetc%2fpasswd", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := get(t, h, tc.host, tc.path)
			b := body(t, r)
			if r.StatusCode != tc.code || (tc.want != "" && !strings.Contains(b, tc.want)) {
				t.Fatalf("GET %s: %d %q, want %d containing %q", tc.path, r.StatusCode, b, tc.code, tc.want)
			}
		})
	}

	t.Run("missing arch falls back to the running executable only for its own arch", func(t *testing.T) {
		os.Remove(filepath.Join(dir, "flotilla-linux-amd64"))
		r := get(t, h, "c", "/v1/agent/flotilla-linux-"+runtime.GOARCH)
		if b := body(t, r); r.StatusCode != 200 || b != string(selfBytes) {
			t.Errorf("own arch: %d %q", r.StatusCode, b)
		}
		r = get(t, h, "c", "/v1/agent/flotilla-linux-"+other)
		if b := body(t, r); r.StatusCode != 404 || !strings.Contains(b, "make build-all") {
			t.Errorf("other arch: %d %q, want 404 that says how to build it", r.StatusCode, b)
		}
	})

	t.Run("sha256 follows a rebuilt binary", func(t *testing.T) {
		p := filepath.Join(dir, "flotilla-linux-arm64")
		for _, content := range []string{"build one", "build two, longer"} {
			if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
				t.Fatal(err)
			}
			os.Chtimes(p, time.Now(), time.Now().Add(time.Duration(len(content))*time.Second))
			if b := body(t, get(t, h, "c", "/v1/agent/flotilla-linux-arm64.sha256")); !strings.HasPrefix(b, sum([]byte(content))) {
				t.Errorf("sha256 for %q = %q", content, b)
			}
		}
	})

	t.Run("range requests resume downloads", func(t *testing.T) {
		r := get(t, h, "c", "/v1/agent/flotilla-linux-arm64", "Range", "bytes=6-")
		if b := body(t, r); r.StatusCode != http.StatusPartialContent || b != "two, longer" {
			t.Errorf("range: %d %q", r.StatusCode, b)
		}
	})
}

func TestBootstrapScriptIsPOSIX(t *testing.T) {
	for _, sh := range []string{"/bin/sh", "/usr/bin/dash", "/bin/bash"} {
		if _, err := os.Stat(sh); err != nil {
			continue
		}
		f := filepath.Join(t.TempDir(), "bootstrap.sh")
		if err := os.WriteFile(f, packaging.BootstrapScript("https://10.0.0.1:9443"), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := execOut(sh, "-n", f); err != nil {
			t.Errorf("%s -n: %v\n%s", sh, err, out)
		}
	}
}
