package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
)

// Files in the agent's data dir.
const (
	fileCredentials = "credentials.json"
	fileApplied     = "applied.json"
	fileStatus      = "status.json"
	fileSeq         = "seq"
)

// Status is what `flotilla agent status` reads from <data-dir>/status.json.
type Status struct {
	Name          string    `json:"name"`
	Registered    bool      `json:"registered"`
	Connected     bool      `json:"connected"`
	Controller    string    `json:"controller"`
	LastHeartbeat time.Time `json:"lastHeartbeat,omitempty"`
	Running       int       `json:"running"`
	// HeartbeatInterval tells readers how stale Updated may get while the agent lives.
	HeartbeatInterval time.Duration `json:"heartbeatInterval"`
	PID               int           `json:"pid"`
	Updated           time.Time     `json:"updated"`
	// LastError is why the last attempt to reach the controller's NATS failed
	// (empty once connected), and LastErrorAt when.
	LastError   string    `json:"lastError,omitempty"`
	LastErrorAt time.Time `json:"lastErrorAt,omitzero"`
	// RegistryListen is where the node-local registry mirror is to serve
	// (--registry-listen; "": the agent runs none). Registry is the address it
	// listens on, over HTTPS ("": not serving; RegistryError says why), and
	// RegistryCA the file of the CA its certificate chains to.
	RegistryListen string `json:"registryListen,omitempty"`
	Registry       string `json:"registry,omitempty"`
	RegistryError  string `json:"registryError,omitempty"`
	RegistryCA     string `json:"registryCA,omitempty"`
}

// Stale reports whether the status is older than a running agent lets it get
// (a killed agent leaves its last status behind).
func (st *Status) Stale(now time.Time) bool {
	return now.Sub(st.Updated) > max(3*st.HeartbeatInterval, 15*time.Second)
}

// MirrorProblem says why the registry mirror the agent is to run does not
// serve ("" when it serves or the agent runs none).
func (st *Status) MirrorProblem() string {
	switch {
	case st.RegistryListen == "" || st.Registry != "":
		return ""
	case st.RegistryError != "":
		return "the registry mirror does not serve on " + st.RegistryListen + ": " + st.RegistryError
	}
	return "the registry mirror has not started on " + st.RegistryListen + " yet"
}

// ReadStatus reads <dataDir>/status.json.
func ReadStatus(dataDir string) (*Status, error) {
	data, err := os.ReadFile(filepath.Join(dataDir, fileStatus))
	if err != nil {
		return nil, fmt.Errorf("agent status: %w (is an agent running with the data dir %s?)", err, dataDir)
	}
	var st Status
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dataDir, fileStatus), err)
	}
	return &st, nil
}

// AppliedStep records one step digest applied successfully.
type AppliedStep struct {
	Task    string    `json:"task"`
	Step    string    `json:"step,omitempty"`
	Applied time.Time `json:"applied"`
}

// appliedState is the set of digests this node applied, persisted atomically.
type appliedState struct {
	path string
	mu   sync.Mutex
	m    map[string]AppliedStep
}

func loadApplied(dataDir string) (*appliedState, error) {
	a := &appliedState{path: filepath.Join(dataDir, fileApplied), m: map[string]AppliedStep{}}
	data, err := os.ReadFile(a.path)
	if errors.Is(err, os.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read applied state: %w", err)
	}
	if err := json.Unmarshal(data, &a.m); err != nil {
		return nil, fmt.Errorf("%s: %w (move it away to start over)", a.path, err)
	}
	return a, nil
}

func (a *appliedState) has(digest string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.m[digest]
	return ok
}

func (a *appliedState) add(digest string, s AppliedStep) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.m[digest] = s
	data, err := json.MarshalIndent(a.m, "", " ")
	if err != nil {
		return err
	}
	return atomicfile.Write(a.path, data, 0o600)
}

// forget removes digests (undo steps) and persists the state if it changed.
func (a *appliedState) forget(digests ...string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(a.m)
	for _, d := range digests {
		delete(a.m, d)
	}
	if len(a.m) == n {
		return nil
	}
	data, err := json.MarshalIndent(a.m, "", " ")
	if err != nil {
		return err
	}
	return atomicfile.Write(a.path, data, 0o600)
}
