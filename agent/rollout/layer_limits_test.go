package rollout

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/protocol"
)

// TestLayerStepAppliesThePlansUnpackPolicy: the bounds the image's plan set
// travel in the signed step; a layer over them fails the step with a clear
// error and places nothing, records nothing.
func TestLayerStepAppliesThePlansUnpackPolicy(t *testing.T) {
	l := makeLayer(t, appLayer...)
	srv := newBlobServer(t, l)
	n := newNode(t, srv.caPEM())
	p := srv.payload(l, "good")
	p.MaxUnpackEntries = 3 // the layer has 6
	_, err := n.run(protocol.KindLayer, p)
	if err == nil || !strings.Contains(err.Error(), "more than 3 entries") || !strings.Contains(err.Error(), "nothing placed") {
		t.Fatalf("layer step over the plan's entry bound: %v", err)
	}
	if entries, _ := os.ReadDir(n.root); len(entries) != 0 {
		t.Fatalf("a refused layer placed %d entries under the root", len(entries))
	}
	h := strings.TrimPrefix(l.digest, "sha256:")
	if _, err := os.Stat(filepath.Join(n.dataDir, "clusters/c1/layers", h+".json")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused layer left a record: %v", err)
	}
	p.MaxUnpackEntries = 6
	if _, err := n.run(protocol.KindLayer, p); err != nil {
		t.Fatalf("layer step within the plan's bound: %v", err)
	}
}
