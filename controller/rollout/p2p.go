package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
	"github.com/flotilla-dev/flotilla/p2p/tracker"
)

// PeerToPeer returns an Options.DecorateLayer that makes layer steps fetch
// peer-to-peer: the controller seeds the blob from its store (the piece list
// is computed once per blob, when a rollout first needs it), puts the list in
// the signed step so every piece is checked as it arrives, and passes the
// Clusterfile's spec.bandwidth on as the step's caps.
//
// Blobs of one piece or less keep the plain fetch from the blob URL: a
// pipeline gains nothing there. When the seed cannot take a blob (its disk),
// the step keeps the URL fetch too, with a warning.
func PeerToPeer(st *store.Store, seed *tracker.Seed, log *slog.Logger) func(ctx context.Context, req LayerRequest) error {
	if log == nil {
		log = slog.Default()
	}
	return func(ctx context.Context, req LayerRequest) error {
		p := req.Payload
		if req.Cluster != nil {
			p.MaxDownload, p.MaxUpload = req.Cluster.Bandwidth.Download, req.Cluster.Bandwidth.Upload
		}
		if seed == nil || p.Size <= pieces.MinPieceSize {
			return nil
		}
		d, err := v1.NewHash(p.Digest)
		if err != nil {
			return fmt.Errorf("layer digest %q: %w", p.Digest, err)
		}
		if !st.HasBlob(d) {
			return fmt.Errorf("blob %s is not in the controller's store: flotilla pull/load the image on the controller host", d)
		}
		path, err := st.BlobPath(d)
		if err != nil {
			return err
		}
		list, err := seed.Add(ctx, d, path)
		if err != nil {
			log.Warn("cannot seed the layer: nodes fetch it from the controller alone", "digest", d, "err", err)
			return nil
		}
		if list.Size != p.Size {
			return fmt.Errorf("layer %s: the image says %d bytes, the store holds %d", d, p.Size, list.Size)
		}
		if p.Pieces, err = json.Marshal(list); err != nil {
			return err
		}
		return nil
	}
}
