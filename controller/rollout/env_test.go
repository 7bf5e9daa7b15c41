package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/protocol"
)

// testKubefile is a small two-role image: a layer for all, one for masters, a
// per-node template and a run step per role.
const testKubefile = `FROM scratch
COPY all.txt /opt/t/all.txt
ON master COPY master.txt /opt/t/master.txt
COPY app.conf.tmpl /etc/t/
ON all RUN echo all
ON master RUN echo master
ON node RUN echo node
`

var testFiles = map[string]string{
	"all.txt":       "all v1\n",
	"master.txt":    "master v1\n",
	"app.conf.tmpl": "node={{ .Node.Name }} masters={{ range .Cluster.Masters }}{{ . }} {{ end }}\n",
}

// buildImage builds a Kubefile and files into st under tag.
func buildImage(t testing.TB, st *store.Store, tag, kubefile string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "Kubefile"), []byte(kubefile), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := build.Build(ctx, st, build.Options{ContextDir: dir, Tags: []string{tag}})
	if err != nil {
		t.Fatalf("build %s: %v", tag, err)
	}
	return res.Descriptor.Digest.String()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// env is an in-process controller (for JetStream and admin handlers), an image
// store with test:1 built, and a fake fleet behind the engine.
type env struct {
	t     testing.TB
	ctrl  *plane.Controller
	store *store.Store
	fleet *fakeFleet
	eng   *Engine
	opts  Options
}

func newEnv(t testing.TB, fleet *fakeFleet) *env {
	t.Helper()
	dir := t.TempDir()
	c, err := plane.New(plane.Options{DataDir: filepath.Join(dir, "ctrl"), Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Advertise: "127.0.0.1", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	buildImage(t, st, "test:1", testKubefile, testFiles)
	e := &env{t: t, ctrl: c, store: st, fleet: fleet, opts: Options{Fleet: fleet, UnreachableTimeout: 600 * time.Millisecond,
		RetryBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, TaskSlack: 10 * time.Second, Logger: quietLogger()}}
	e.eng = e.newEngine()
	return e
}

func (e *env) newEngine() *Engine {
	e.t.Helper()
	eng, err := New(e.ctrl, e.store, e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(eng.Close)
	return eng
}

// clusterfile writes a Clusterfile text for masters and nodes of image test:1.
func clusterfileFor(name, image string, masters, nodes []string, rollout string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: %s}\nspec:\n  image: %s\n  hosts:\n", name, image)
	if len(masters) > 0 {
		fmt.Fprintf(&b, "    - names: [%s]\n      roles: [master]\n", strings.Join(masters, ", "))
	}
	if len(nodes) > 0 {
		fmt.Fprintf(&b, "    - names: [%s]\n      roles: [node]\n", strings.Join(nodes, ", "))
	}
	if rollout != "" {
		fmt.Fprintf(&b, "  rollout: %s\n", rollout)
	}
	return b.String()
}

func call(t testing.TB, name string, body any) *plane.AdminCall {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return &plane.AdminCall{Name: name, Body: b}
}

// apply runs rollout.apply to its end.
func (e *env) apply(cf string) (*protocol.ApplyResult, error) {
	e.t.Helper()
	return e.applyWith(e.eng, protocol.ApplyRequest{Clusterfile: []byte(cf), Path: "Clusterfile"})
}

func (e *env) applyWith(eng *Engine, req protocol.ApplyRequest) (*protocol.ApplyResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := eng.adminApply(ctx, call(e.t, protocol.AdminApply, req))
	if err != nil {
		return nil, err
	}
	return out.(*protocol.ApplyResult), nil
}

func (e *env) mustApply(cf string) *protocol.ApplyResult {
	e.t.Helper()
	res, err := e.apply(cf)
	if err != nil {
		e.t.Fatalf("apply: %v", err)
	}
	return res
}

func outcomes(res *protocol.ApplyResult) map[string]protocol.NodeOutcome {
	out := map[string]protocol.NodeOutcome{}
	for _, o := range res.Nodes {
		out[o.Node] = o
	}
	return out
}

func statuses(res *protocol.ApplyResult) string {
	var parts []string
	for _, o := range res.Nodes {
		s := o.Node + "=" + o.Status
		if o.Error != "" {
			s += "(" + o.Error + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}
