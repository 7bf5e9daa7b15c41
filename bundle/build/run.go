package build

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/kubefile"
	"github.com/flotilla-dev/flotilla/bundle/recipe"
)

// runInfo is what the cache remembers of a build-time RUN.
type runInfo struct {
	Empty bool      `json:"empty"` // the command wrote nothing
	Layer layerInfo `json:"layer"`
}

// buildRun runs a build-time RUN with sh -c in the context directory and a fresh
// workspace ($FLOTILLA_WORKSPACE); what it writes there becomes a layer, with paths
// relative to / on the node. It is cached by instruction, platform and ARG/ENV values,
// since the command may fetch from the network (--no-cache runs it again).
func (b *builder) buildRun(ctx context.Context, in kubefile.Instruction) error {
	env := b.runEnv()
	key := b.runKey(in, env)
	var cached runInfo
	if !b.opts.NoCache && b.st.CacheGet(key, &cached) {
		if cached.Empty {
			b.record(in, "")
			return nil
		}
		if layer, info, ok := b.cachedLayer(cached.Layer); ok {
			b.layers = append(b.layers, layer)
			b.plan.Layers = append(b.plan.Layers, recipe.Layer{Digest: info.Digest, DiffID: info.DiffID, Size: info.Size, Role: recipe.RoleAll, Instruction: in.Original, Seq: b.seq, Contents: info.Contents})
			b.record(in, info.Digest)
			return nil
		}
	}
	ws, err := os.MkdirTemp("", "flotilla-workspace-")
	if err != nil {
		return b.errf(in, "workspace: %v", err)
	}
	defer os.RemoveAll(ws)
	timeout := b.opts.RunTimeout
	if timeout == 0 {
		timeout = 30 * time.Minute
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(rctx, "sh", "-c", in.Args[0])
	cmd.Dir = b.ctxDir
	cmd.Env = append(append(os.Environ(), env...), "FLOTILLA_WORKSPACE="+ws)
	out := b.opts.RunOutput
	if out == nil {
		out = io.Discard
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if rctx.Err() == context.DeadlineExceeded {
			return b.errf(in, "timed out after %s", timeout)
		}
		return b.errf(in, "%q failed: %v", in.Args[0], err)
	}
	entries, err := collectWorkspace(ws)
	if err != nil {
		return b.errf(in, "%v", err)
	}
	if len(entries) == 0 {
		b.record(in, "")
		b.pending[key] = runInfo{Empty: true}
		return nil
	}
	n := len(b.plan.Layers)
	if err := b.addLayer(in, recipe.RoleAll, entries); err != nil {
		return err
	}
	l := b.plan.Layers[n]
	b.pending[key] = runInfo{Layer: layerInfo{DiffID: l.DiffID, Digest: l.Digest, Size: l.Size, Contents: l.Contents}}
	return nil
}

// runEnv is the ARG and ENV values plus the target platform, sorted.
func (b *builder) runEnv() []string {
	env := []string{
		"TARGETPLATFORM=" + b.platform.String(),
		"TARGETOS=" + b.platform.OS,
		"TARGETARCH=" + b.platform.Architecture,
		"TARGETVARIANT=" + b.platform.Variant,
	}
	for k, v := range b.vars {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env
}

func (b *builder) runKey(in kubefile.Instruction, env []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "run\x00%s\x00", in.Args[0])
	for _, e := range env {
		fmt.Fprintf(h, "%s\x00", e)
	}
	return "run-" + hex.EncodeToString(h.Sum(nil))
}
