package rollout

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/protocol"
)

func undo(kind, target string, digests ...string) protocol.UndoPayload {
	return protocol.UndoPayload{Cluster: "c1", Kind: kind, Target: target, Digests: digests}
}

func TestUndoRemoveLayerKeepsSharedPaths(t *testing.T) {
	a := makeLayer(t, "etc/", "etc/a.conf=a", "etc/shared.conf=s", "opt/", "opt/a/", "opt/a/bin=x")
	b := makeLayer(t, "etc/", "etc/shared.conf=s", "etc/b.conf=b")
	srv := newBlobServer(t, a, b)
	n := newNode(t, srv.caPEM())
	for _, l := range []layer{a, b} {
		if _, err := n.run(protocol.KindLayer, srv.payload(l, "good")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.run(protocol.KindFile, filePayload("/etc/rendered.conf", "r", 0)); err != nil {
		t.Fatal(err)
	}
	if got, want := tree(t, n.root), []string{"etc/", "etc/a.conf", "etc/b.conf", "etc/rendered.conf", "etc/shared.conf", "opt/", "opt/a/", "opt/a/bin"}; !slices.Equal(got, want) {
		t.Fatalf("root after two layers: %v, want %v", got, want)
	}
	hexA, hexB := strings.TrimPrefix(a.digest, "sha256:"), strings.TrimPrefix(b.digest, "sha256:")

	if _, err := n.run(protocol.KindUndo, undo(protocol.UndoRemoveLayer, a.digest)); err != nil {
		t.Fatal(err)
	}
	if got, want := tree(t, n.root), []string{"etc/", "etc/b.conf", "etc/rendered.conf", "etc/shared.conf"}; !slices.Equal(got, want) {
		t.Errorf("root after removing layer a: %v, want %v", got, want)
	}
	if exists(layerRecordPath(filepath.Join(n.dataDir, "clusters/c1"), hexA)) || exists(blobPath(n.dataDir, hexA)) {
		t.Error("layer a's record or its unused blob is still there")
	}
	if !exists(blobPath(n.dataDir, hexB)) {
		t.Error("layer b's blob was removed while b is still unpacked")
	}

	// Removing b and the rendered file then removes etc/ too, which layer a created.
	ev, err := n.run(protocol.KindUndo, undo(protocol.UndoRemoveLayer, b.digest))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tree(t, n.root), []string{"etc/", "etc/rendered.conf"}; !slices.Equal(got, want) {
		t.Errorf("root after removing layer b: %v, want %v (output %q)", got, want, ev.lines(""))
	}
	if _, err := n.run(protocol.KindUndo, undo(protocol.UndoRemoveFile, "/etc/rendered.conf")); err != nil {
		t.Fatal(err)
	}
	if got := tree(t, n.root); len(got) != 0 {
		t.Errorf("root after removing everything: %v", got)
	}
	if got := tree(t, n.dataDir); slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "clusters/c1") }) {
		t.Errorf("cluster records left after removing everything: %v", got)
	}

	// Removing a layer that is not recorded is fine.
	ev, err = n.run(protocol.KindUndo, undo(protocol.UndoRemoveLayer, a.digest))
	if err != nil || !slices.ContainsFunc(ev.lines("stdout"), func(s string) bool { return strings.Contains(s, "nothing to remove") }) {
		t.Errorf("second removal: %v, output %q", err, ev.lines(""))
	}
}

func TestUndoRemoveLayerKeepsBlobOtherClusterUses(t *testing.T) {
	l := makeLayer(t, "etc/", "etc/a.conf=a")
	srv := newBlobServer(t, l)
	n := newNode(t, srv.caPEM())
	p := srv.payload(l, "good")
	for _, c := range []string{"c1", "c2"} {
		p.Cluster = c
		if _, err := n.run(protocol.KindLayer, p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.run(protocol.KindUndo, undo(protocol.UndoRemoveLayer, l.digest)); err != nil {
		t.Fatal(err)
	}
	if !exists(blobPath(n.dataDir, strings.TrimPrefix(l.digest, "sha256:"))) {
		t.Error("the blob was removed although cluster c2 still has the layer")
	}
}

func TestUndoRemoveFile(t *testing.T) {
	n := newNode(t, nil)
	for _, p := range []string{"/etc/app/kept.conf", "/etc/app/removed.conf"} {
		if _, err := n.run(protocol.KindFile, filePayload(p, "v1", 0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(n.root, "etc/app/kept.conf"), []byte("edited by the operator"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range []string{"/etc/app/kept.conf", "/etc/app/removed.conf"} {
		ev, err := n.run(protocol.KindUndo, undo(protocol.UndoRemoveFile, p))
		if err != nil {
			t.Fatalf("undo %s: %v", p, err)
		}
		out = append(out, ev.lines("stderr")...)
	}
	if got, want := tree(t, n.root), []string{"etc/", "etc/app/", "etc/app/kept.conf"}; !slices.Equal(got, want) {
		t.Errorf("root: %v, want %v", got, want)
	}
	if len(out) != 1 || !strings.Contains(out[0], "kept /etc/app/kept.conf") || !strings.Contains(out[0], "changed") {
		t.Errorf("stderr %q: want one line reporting the kept file", out)
	}
	if exists(filesPath(filepath.Join(n.dataDir, "clusters/c1"))) {
		t.Error("files.json still lists files after both were undone")
	}
}

func TestUndoForget(t *testing.T) {
	n := newNode(t, nil)
	state := map[string]any{"sha256:aa": map[string]string{"task": "t"}, "sha256:bb": map[string]string{"task": "t"}}
	data, _ := json.Marshal(state)
	if err := os.WriteFile(filepath.Join(n.dataDir, "applied.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := n.run(protocol.KindUndo, undo(protocol.UndoForget, "", "sha256:aa")); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(n.dataDir, "applied.json"))), &got); err != nil {
		t.Fatal(err)
	}
	if _, ok := got["sha256:aa"]; ok || len(got) != 1 {
		t.Errorf("applied state after forgetting sha256:aa: %v", got)
	}
}

func TestUndoRefusesBadPayloads(t *testing.T) {
	n := newNode(t, nil)
	for _, tc := range []struct {
		p    protocol.UndoPayload
		want string
	}{
		{undo("explode", "x"), `unknown kind "explode"`},
		{undo(protocol.UndoRemoveFile, ""), "no target"},
		{undo(protocol.UndoRemoveLayer, "sha256:zz"), "not sha256:<64 hex digits>"},
		{undo(protocol.UndoStopService, "../etc/passwd"), "want a systemd unit name"},
		{protocol.UndoPayload{Cluster: "", Kind: protocol.UndoRemoveFile, Target: "/x"}, "cluster name"},
	} {
		if _, err := n.run(protocol.KindUndo, tc.p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.p, err, tc.want)
		}
	}
}
