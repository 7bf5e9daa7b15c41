package e2etest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/testbin"
	"github.com/flotilla-dev/flotilla/protocol"
)

// UseStore points FLOTILLA_STORE at a fresh image store for this test, so images it
// builds are what a controller started afterwards (which inherits the environment)
// rolls out. It returns the store's directory.
func UseStore(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "images")
	t.Setenv("FLOTILLA_STORE", dir)
	return dir
}

// BuildImage runs `flotilla build -t tag dir` into $FLOTILLA_STORE.
func BuildImage(t testing.TB, dir, tag string) {
	t.Helper()
	bin, err := testbin.Path()
	if err != nil {
		t.Fatalf("flotilla binary: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "build", "-q", "-t", tag, dir).CombinedOutput()
	if err != nil {
		t.Fatalf("flotilla build -t %s %s: %v\n%s", tag, dir, err, out)
	}
}

// WriteContext writes files (name -> content) into a fresh directory, for small test
// images; names ending in .sh get mode 0755.
func WriteContext(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Apply runs `flotilla apply -f clusterfile -o json` and returns the parsed result and
// the progress the CLI printed (stderr). err is the CLI's error (exit 1 when a node did
// not end ok); the result is parsed whenever the CLI printed one.
func (c *Controller) Apply(ctx context.Context, clusterfile string) (*protocol.ApplyResult, string, error) {
	out, progress, err := c.CLI(ctx, "apply", "-f", clusterfile, "-o", "json")
	var res protocol.ApplyResult
	if jerr := json.Unmarshal(bytes.TrimSpace([]byte(out)), &res); jerr != nil {
		if err != nil {
			return nil, progress, err
		}
		return nil, progress, fmt.Errorf("apply -o json: %w: %q", jerr, out)
	}
	return &res, progress, err
}

// Outcome returns the node's outcome in res, or a zero outcome with Status "".
func Outcome(res *protocol.ApplyResult, node string) protocol.NodeOutcome {
	if res != nil {
		for _, o := range res.Nodes {
			if o.Node == node {
				return o
			}
		}
	}
	return protocol.NodeOutcome{}
}
