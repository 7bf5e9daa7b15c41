// Package packaging installs flotilla itself on nodes: the bootstrap script and
// agent binaries the controller serves, the agent's systemd unit, its removal,
// and the .deb for sites that install from their own package mirror.
package packaging

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Where the bootstrap script and the .deb put things on a node.
const (
	UnitName       = "flotilla-agent.service"
	UnitPath       = "/etc/systemd/system/" + UnitName
	BinPath        = "/usr/local/bin/flotilla"
	ConfigDir      = "/etc/flotilla"
	DefaultDataDir = "/var/lib/flotilla-agent"
)

// Arches are the platforms the controller serves agent binaries for.
var Arches = []string{"amd64", "arm64"}

// Paths are the URL paths Handler serves, for mounting it on a mux
// ("/v1/agent/" is a prefix).
var Paths = []string{"/bootstrap.sh", "/v1/agent/"}

//go:embed bootstrap.sh
var bootstrapScript []byte

// BootstrapScript returns the script with its default controller URL set.
func BootstrapScript(controllerURL string) []byte {
	return bytes.Replace(bootstrapScript, []byte("@@CONTROLLER@@"), []byte(controllerURL), 1)
}

// Options configure Handler.
type Options struct {
	// BinDir holds flotilla-linux-amd64 and flotilla-linux-arm64 (make build-all).
	// When empty, or when an arch is missing there, the running executable is
	// served for its own arch.
	BinDir string
	// Executable overrides the running executable (tests).
	Executable string
	Logger     *slog.Logger
}

// Handler serves /bootstrap.sh, /v1/agent/flotilla-linux-ARCH and
// /v1/agent/flotilla-linux-ARCH.sha256 (sha256sum format).
func Handler(o Options) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Executable == "" {
		o.Executable, _ = os.Executable()
	}
	h := &handler{opts: o, sums: map[string]cachedSum{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bootstrap.sh", h.script)
	mux.HandleFunc("GET /v1/agent/{file}", h.agent)
	return mux
}

type handler struct {
	opts Options
	mu   sync.Mutex
	sums map[string]cachedSum
}

type cachedSum struct {
	size int64
	mod  time.Time
	sum  string
}

// hostRE keeps the Host header, which ends up inside a shell script, harmless.
var hostRE = regexp.MustCompile(`^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$`)

func (h *handler) script(w http.ResponseWriter, r *http.Request) {
	if !hostRE.MatchString(r.Host) {
		http.Error(w, "bad Host header: fetch the script by the controller's address", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/x-shellscript; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(BootstrapScript("https://" + r.Host))
}

func (h *handler) agent(w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")
	name, wantSum := strings.CutSuffix(file, ".sha256")
	arch, ok := strings.CutPrefix(name, "flotilla-linux-")
	if !ok || !knownArch(arch) {
		http.Error(w, fmt.Sprintf("no agent binary %q: want flotilla-linux-{%s}[.sha256]", file, strings.Join(Arches, ",")), http.StatusNotFound)
		return
	}
	path, err := h.binary(arch)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		h.opts.Logger.Error("serve agent binary", "path", path, "err", err)
		http.Error(w, "cannot read the agent binary on the controller", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		http.Error(w, "cannot read the agent binary on the controller", http.StatusInternalServerError)
		return
	}
	if wantSum {
		sum, err := h.sum(path, st, f)
		if err != nil {
			h.opts.Logger.Error("hash agent binary", "path", path, "err", err)
			http.Error(w, "cannot hash the agent binary on the controller", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "%s  %s\n", sum, name)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, name, st.ModTime(), f)
}

func knownArch(a string) bool {
	for _, k := range Arches {
		if a == k {
			return true
		}
	}
	return false
}

// binary finds the agent binary for arch: BinDir first, then the running executable.
func (h *handler) binary(arch string) (string, error) {
	if h.opts.BinDir != "" {
		p := filepath.Join(h.opts.BinDir, "flotilla-linux-"+arch)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if arch == runtime.GOARCH && runtime.GOOS == "linux" && h.opts.Executable != "" {
		return h.opts.Executable, nil
	}
	where := "no --agent-dir was given"
	if h.opts.BinDir != "" {
		where = "not found in " + h.opts.BinDir
	}
	return "", fmt.Errorf("no linux/%s agent binary on this controller (%s): build it with 'make build-all' and start the controller with the directory of bin/flotilla-linux-*", arch, where)
}

func (h *handler) sum(path string, st os.FileInfo, r io.ReadSeeker) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.sums[path]; ok && c.size == st.Size() && c.mod.Equal(st.ModTime()) {
		return c.sum, nil
	}
	d := sha256.New()
	if _, err := io.Copy(d, r); err != nil {
		return "", err
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	s := hex.EncodeToString(d.Sum(nil))
	h.sums[path] = cachedSum{size: st.Size(), mod: st.ModTime(), sum: s}
	return s, nil
}
