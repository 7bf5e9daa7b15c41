// Package rollout is the agent side of a rollout: the executors of the layer,
// file, images, run, service and undo step kinds (protocol/rollout.go), and the records
// under the agent's data dir that let undo steps take back what they did.
//
// Layout under the agent's DataDir:
//
//	blobs/sha256/<hex>                  verified layer blobs (only renamed in after the digest matched)
//	blobs/sha256/<hex>.part             a download in progress (resumed by the next attempt)
//	clusters/<cluster>/layers/<hex>.json  what layer sha256:<hex> placed under the root (LayerRecord)
//	clusters/<cluster>/files.json       rendered files placed, by path (map[path]FileRecord)
//	clusters/<cluster>/services.json    units started, in first-start order, with their unit file digest
//	containers/                         the container image cache (agent/imagecache), owner = cluster
//
// Blobs stay cached while any cluster's layers/<hex>.json names them; the undo
// of the last layer using a blob deletes it.
package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/internal/atomicfile"
	"github.com/flotilla-dev/flotilla/protocol"
)

func init() {
	agent.RegisterExecutor(protocol.KindLayer, agent.ExecutorFunc(executeLayer))
	agent.RegisterExecutor(protocol.KindFile, agent.ExecutorFunc(executeFile))
	agent.RegisterExecutor(protocol.KindRun, agent.ExecutorFunc(executeRun))
	agent.RegisterExecutor(protocol.KindService, agent.ExecutorFunc(executeService))
	agent.RegisterExecutor(protocol.KindUndo, agent.ExecutorFunc(executeUndo))
	agent.RegisterExecutor(protocol.KindImages, agent.ExecutorFunc(executeImages))
}

// decodePayload reads a step's JSON payload into v, naming the step in errors.
func decodePayload(sc *agent.StepContext, v any) error {
	if len(sc.Step.Payload) == 0 {
		return fmt.Errorf("%s step %q: no payload", sc.Step.Kind, sc.Step.Name)
	}
	if err := json.Unmarshal(sc.Step.Payload, v); err != nil {
		return fmt.Errorf("%s step %q: payload: %w", sc.Step.Kind, sc.Step.Name, err)
	}
	return nil
}

// validCluster refuses cluster names that would escape clusters/ or be unreadable.
func validCluster(name string) error {
	if name == "" || len(name) > 128 {
		return fmt.Errorf("cluster name %q: want 1 to 128 characters", name)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' ||
			(i > 0 && (r == '.' || r == '-'))
		if !ok {
			return fmt.Errorf("cluster name %q: character %q at %d not allowed (letters, digits, '.', '-', '_')", name, r, i)
		}
	}
	return nil
}

// clusterDir is <dataDir>/clusters/<cluster>, checked.
func clusterDir(dataDir, cluster string) (string, error) {
	if err := validCluster(cluster); err != nil {
		return "", err
	}
	return filepath.Join(dataDir, "clusters", cluster), nil
}

// readJSON reads path into v; a missing file leaves v alone and reports false.
func readJSON(path string, v any) (bool, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("%s: %w (the agent's record is damaged: move it away to start over)", path, err)
	}
	return true, nil
}

// writeJSON writes v to path atomically (mode 0600), creating its directory.
func writeJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return atomicfile.WriteJSON(path, v, 0o600)
}
