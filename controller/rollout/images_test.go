package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/blobserver"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/protocol"
)

// TestImagesStepPieceBudget: the piece lists of one images step stay within
// MaxImagePieceBytes (the signed task is one NATS message); blobs past it keep their
// URL and token (the controller's HTTPS) and the caps, and a warning names the count.
func TestImagesStepPieceBudget(t *testing.T) {
	var logs strings.Builder
	decorate := func(_ context.Context, req LayerRequest) error {
		req.Payload.MaxDownload = 1 << 20
		req.Payload.Pieces = json.RawMessage(`{"pad":"` + strings.Repeat("x", 90) + `"}`) // 100 bytes
		return nil
	}
	blobs, err := blobserver.New(t.TempDir(), nil, blobserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := &rolloutRun{
		e: &Engine{opts: Options{BaseURL: "https://controller.test:9443", MaxImagePieceBytes: 250, DecorateLayer: decorate},
			blobs: blobs, log: slog.New(slog.NewTextHandler(&logs, nil))},
		plan: &planner.ClusterPlan{Cluster: "c1"},
		cf:   &clusterfile.File{},
	}
	im := &planner.Images{Platform: "linux/amd64", Digest: "sha256:" + strings.Repeat("d", 64),
		Images: []recipe.ContainerImage{{Name: "registry.test/app:1", Digest: "sha256:" + strings.Repeat("a", 64)}}}
	for i := range 5 {
		im.Blobs = append(im.Blobs, planner.ImageBlob{Digest: fmt.Sprintf("sha256:%064d", i), Size: 1 << 20})
	}
	s, err := r.imagesStep(context.Background(), "n1", im)
	if err != nil {
		t.Fatal(err)
	}
	// Each attempt mints the tokens.
	minted, err := r.e.mintTokens("n1", []protocol.Step{s}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	s = minted[0]
	var p protocol.ImagesPayload
	if err := json.Unmarshal(s.Payload, &p); err != nil {
		t.Fatal(err)
	}
	withPieces, total := 0, 0
	for _, b := range p.Blobs {
		if len(b.Pieces) > 0 {
			withPieces++
			total += len(b.Pieces)
		}
		if b.URL == "" || b.Token == "" || b.MaxDownload != 1<<20 {
			t.Errorf("blob %s: URL %q token %q caps %d: every blob keeps the controller fallback and the caps", b.Digest, b.URL, b.Token, b.MaxDownload)
		}
	}
	if withPieces != 2 || total > 250 {
		t.Errorf("%d blobs carry piece lists (%d bytes), want 2 within the 250-byte budget", withPieces, total)
	}
	if !strings.Contains(logs.String(), "blobs=3") || !strings.Contains(logs.String(), "node=n1") {
		t.Errorf("no warning naming the 3 blobs past the budget:\n%s", logs.String())
	}
	if s.Kind != protocol.KindImages || s.Digest != im.Digest || p.Cluster != "c1" || p.Platform != "linux/amd64" || len(p.Images) != 1 {
		t.Errorf("step %+v payload %+v", s, p)
	}
}
