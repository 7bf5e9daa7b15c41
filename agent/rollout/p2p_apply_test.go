package rollout_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/protocol"
)

// TestApplyDistributesLayersPeerToPeer is the whole path with the real
// binary: `flotilla apply` on a controller whose store holds an image with a
// layer of many pieces, three agents with their piece servers; every node
// ends with the layer's file, and every agent's piece store holds the blob
// (it came peer-to-peer, not from the blob URL).
func TestApplyDistributesLayersPeerToPeer(t *testing.T) {
	storeDir := t.TempDir()
	t.Setenv("FLOTILLA_STORE", storeDir) // the controller process resolves images there
	st, err := store.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3<<20)
	rand.Read(big)
	ctxDir := t.TempDir()
	os.WriteFile(filepath.Join(ctxDir, "big.bin"), big, 0o644)
	os.WriteFile(filepath.Join(ctxDir, "Kubefile"), []byte("FROM scratch\nCOPY big.bin /opt/p2p/big.bin\n"), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := build.Build(ctx, st, build.Options{ContextDir: ctxDir, Tags: []string{"p2p:1"}}); err != nil {
		t.Fatal(err)
	}

	f := controllertest.Start(t)
	nodes := []string{"q1", "q2", "q3"}
	for _, n := range nodes {
		f.StartAgent(n, "--peer-listen", "127.0.0.1:0")
	}
	waitPeerURLsOf(t, f, nodes)
	cf := filepath.Join(t.TempDir(), "Clusterfile")
	os.WriteFile(cf, []byte(fmt.Sprintf("apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: p2p}\nspec:\n  image: p2p:1\n"+
		"  hosts:\n    - names: [%s]\n      roles: [node]\n  bandwidth: {download: 400Mbit}\n", strings.Join(nodes, ", "))), 0o644)
	out, errOut, code := f.CLI(ctx, "apply", "-f", cf)
	if code != 0 {
		t.Fatalf("apply: exit %d\n%s\n%s\ncontroller log:\n%s", code, out, errOut, f.Controller.Tail())
	}
	for _, n := range nodes {
		got, err := os.ReadFile(filepath.Join(f.Dir, "roots", n, "opt/p2p/big.bin"))
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("%s: /opt/p2p/big.bin: %d bytes, %v", n, len(got), err)
		}
		if completeBlobs(filepath.Join(f.AgentDataDir(n), "p2p")) == 0 {
			t.Errorf("%s: no blob in its piece store: the layer did not come peer-to-peer", n)
		}
	}
	if completeBlobs(filepath.Join(f.ControllerDir(), "seed")) == 0 {
		t.Errorf("the controller's seed holds no blob")
	}
}

// completeBlobs counts the complete blobs in a piece store directory.
func completeBlobs(dir string) int {
	n := 0
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "sha256:") && !strings.Contains(e.Name(), ".") {
			n++
		}
	}
	return n
}

func waitPeerURLsOf(t *testing.T, f *controllertest.Fleet, nodes []string) {
	t.Helper()
	f.WaitNodes(30*time.Second, "agents register with peer URLs", func(list []protocol.NodeInfo) bool {
		n := 0
		for _, ni := range list {
			if slices.Contains(nodes, ni.Name) && strings.HasPrefix(ni.PeerURL, "https://127.0.0.1:") {
				n++
			}
		}
		return n == len(nodes)
	})
}
