package rollout_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/rollout"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/protocol"
)

func sha(b []byte) string { s := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(s[:]) }

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRolloutStepsThroughAgent runs layer, file and run steps, then their undo,
// on a real agent joined to a real controller that serves the blob over its
// HTTPS (so the agent's own CA is what trusts it), then applies again.
func TestRolloutStepsThroughAgent(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct{ name, body string }{{"opt/app/bin", "#!/bin/sh\n"}, {"opt/app/VERSION", "1\n"}} {
		_ = tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o755, Size: int64(len(f.body)), Typeflag: tar.TypeReg})
		_, _ = tw.Write([]byte(f.body))
	}
	_ = tw.Close()
	blob, digest := buf.Bytes(), sha(buf.Bytes())

	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := plane.New(plane.Options{DataDir: filepath.Join(dir, "controller"), Listen: "127.0.0.1:0",
		HTTPListen: "127.0.0.1:0", Advertise: "127.0.0.1", Logger: log,
		Handlers: map[string]http.Handler{"/test/blob": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer tok" {
				http.Error(w, "no", http.StatusUnauthorized)
				return
			}
			http.ServeContent(w, r, "blob", time.Unix(1, 0), bytes.NewReader(blob))
		})}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cr, err := c.LocalAgentCredentials(ctx, "n1", protocol.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	root, dataDir := filepath.Join(dir, "root"), filepath.Join(dir, "n1")
	a, err := agent.New(ctx, agent.Options{Credentials: cr, Name: "n1", DataDir: dataDir, Root: root,
		HeartbeatInterval: 200 * time.Millisecond, Logger: log, Executors: rollout.Executors(rollout.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = a.Run(actx); close(done) }()
	defer func() { acancel(); <-done }()
	if err := poll.Until(t.Context(), 10*time.Second, 20*time.Millisecond, func() bool {
		n, ok := c.Node("n1")
		return ok && n.Online
	}); err != nil {
		t.Fatalf("agent n1 online: %v", err)
	}

	conf := []byte("listen: 0.0.0.0\n")
	apply := []protocol.Step{
		{Name: "layer", Kind: protocol.KindLayer, Digest: "sha256:step1", Payload: mustJSON(t, protocol.LayerPayload{
			Cluster: "demo", Digest: digest, Size: int64(len(blob)), URL: c.HTTPURL() + "/test/blob", Token: "tok"})},
		{Name: "file", Kind: protocol.KindFile, Digest: "sha256:step2", Payload: mustJSON(t, protocol.FilePayload{
			Cluster: "demo", Path: "/etc/app/app.conf", Mode: 0o640, Content: conf, Digest: sha(conf)})},
		{Name: "run", Kind: protocol.KindRun, Digest: "sha256:step3", Shell: `cat "$FLOTILLA_ROOT/opt/app/VERSION" etc/app/app.conf >> ran`},
	}
	run := func(steps []protocol.Step) (*protocol.TaskResult, []protocol.Event) {
		t.Helper()
		var evs []protocol.Event
		r, err := c.Dispatch(ctx, &protocol.Task{Node: "n1", Cluster: "demo", Steps: steps}, func(ev protocol.Event) { evs = append(evs, ev) })
		if err != nil {
			t.Fatal(err)
		}
		res, err := r.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return res, evs
	}
	skipped := func(evs []protocol.Event) (n int) {
		for _, ev := range evs {
			if ev.Type == protocol.EventStepResult && ev.Result.Skipped {
				n++
			}
		}
		return n
	}

	res, evs := run(apply)
	if !res.OK {
		t.Fatalf("apply: %+v", res)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "ran")); string(got) != "1\nlisten: 0.0.0.0\n" {
		t.Errorf("the run step saw %q", got)
	}
	fetched := false
	for _, ev := range evs {
		fetched = fetched || ev.Type == protocol.EventProgress && ev.Progress.Message == "fetch" && ev.Progress.Done == int64(len(blob))
	}
	if !fetched {
		t.Error("no fetch progress event for the whole blob")
	}

	res, evs = run(apply)
	if !res.OK || skipped(evs) != 3 {
		t.Fatalf("second apply: %+v, %d skipped, want all 3", res, skipped(evs))
	}

	res, _ = run([]protocol.Step{
		{Name: "rm-file", Kind: protocol.KindUndo, Payload: mustJSON(t, protocol.UndoPayload{Cluster: "demo", Kind: protocol.UndoRemoveFile, Target: "/etc/app/app.conf"})},
		{Name: "rm-layer", Kind: protocol.KindUndo, Payload: mustJSON(t, protocol.UndoPayload{Cluster: "demo", Kind: protocol.UndoRemoveLayer, Target: digest})},
		{Name: "forget", Kind: protocol.KindUndo, Payload: mustJSON(t, protocol.UndoPayload{Cluster: "demo", Kind: protocol.UndoForget, Digests: []string{"sha256:step1", "sha256:step2", "sha256:step3"}})},
	})
	if !res.OK {
		t.Fatalf("undo: %+v", res)
	}
	for _, p := range []string{"opt", "etc", "opt/app/bin"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s still under the root after the undo", p)
		}
	}

	// The node applies again from scratch: the forgotten steps run.
	res, evs = run(apply)
	if !res.OK || skipped(evs) != 0 {
		t.Fatalf("apply after undo: %+v, %d skipped, want none", res, skipped(evs))
	}
	if got, _ := os.ReadFile(filepath.Join(root, "ran")); strings.Count(string(got), "listen") != 2 {
		t.Errorf("the run step ran %d times, want 2", strings.Count(string(got), "listen"))
	}
}
