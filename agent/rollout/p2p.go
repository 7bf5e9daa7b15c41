package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/p2p"
	"github.com/flotilla-dev/flotilla/bundle/pieces"
	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Layer steps whose payload carries a piece list fetch peer-to-peer: from the
// other agents of the cluster and the controller (the first seed), every
// piece checked against the list as it lands and the blob against its digest
// at the end, through the agent's peer (agent.PeerOf). Without a piece list,
// or without a running peer, or when the peer-to-peer fetch fails, the blob
// comes from the controller's URL as before.
func init() { FetchBlob = fetchPeerToPeer }

// fetchPeerToPeer returns verified: the peer store counts a blob only once it matched
// its digest, so the layer executor need not hash it a second time.
func fetchPeerToPeer(ctx context.Context, sc *agent.StepContext, p protocol.LayerPayload, dst string) (bool, error) {
	if len(p.Pieces) == 0 {
		return DefaultFetchBlob(ctx, sc, p, dst)
	}
	list, err := layerPieceList(p)
	if err != nil {
		return false, err // a signed task with a wrong list: the controller's bug, say so
	}
	peer := agent.PeerOf(sc.DataDir)
	if peer == nil {
		return DefaultFetchBlob(ctx, sc, p, dst)
	}
	start := time.Now()
	path, err := peer.Fetch(ctx, list, agent.StepCaps{Upload: p.MaxUpload, Download: p.MaxDownload}, progressReporter(sc))
	if err != nil {
		if ctx.Err() != nil {
			return false, err
		}
		sc.Output("stderr", fmt.Sprintf("peer-to-peer fetch of %s failed, fetching from the controller: %v", protocol.ShortDigest(p.Digest), err))
		slog.Warn("peer-to-peer fetch failed; falling back to the controller", "digest", p.Digest, "err", err)
		return DefaultFetchBlob(ctx, sc, p, dst)
	}
	el := time.Since(start)
	slog.Info("layer fetched peer-to-peer", "node", sc.Task.Node, "digest", p.Digest, "bytes", list.Size,
		"seconds", el.Seconds(), "MBps", float64(list.Size)/1e6/max(el.Seconds(), 1e-3))
	// The store keeps its copy to serve peers; the cache gets a hard link (no
	// second copy on disk) that the layer executor moves in place.
	_ = os.Remove(dst)
	if err := pieces.LinkOrCopy(path, dst); err != nil {
		return false, fmt.Errorf("layer %s: from the peer store to the blob cache: %w", p.Digest, err)
	}
	return true, nil
}

// layerPieceList decodes the payload's piece list and checks it describes
// the step's blob.
func layerPieceList(p protocol.LayerPayload) (pieces.PieceList, error) {
	var list pieces.PieceList
	if err := json.Unmarshal(p.Pieces, &list); err != nil {
		return list, fmt.Errorf("layer %s: piece list: %w", p.Digest, err)
	}
	if err := list.Validate(); err != nil {
		return list, fmt.Errorf("layer %s: %w", p.Digest, err)
	}
	if list.Digest.String() != p.Digest || (p.Size > 0 && list.Size != p.Size) {
		return list, fmt.Errorf("layer %s (%d bytes): the piece list is of %s (%d bytes)", p.Digest, p.Size, list.Digest, list.Size)
	}
	// The list came inside the controller's signed task, built from the blob:
	// pieces that match it prove the blob (one sha256 per byte, not two).
	list.Vouch()
	return list, nil
}

// progressReporter turns fetch progress into step progress at most every
// progressEvery, with the achieved rate for `flotilla apply`.
func progressReporter(sc *agent.StepContext) func(p2p.Progress) {
	var mu sync.Mutex
	var last time.Time
	return func(pr p2p.Progress) {
		mu.Lock()
		defer mu.Unlock()
		if !pr.Done && time.Since(last) < progressEvery {
			return
		}
		last = time.Now()
		msg := fmt.Sprintf("fetch %s/s from %d peers", human.Bytes(int64(pr.Rate)), pr.Peers)
		if pr.Done {
			msg = fmt.Sprintf("fetched %s at %s/s", human.Bytes(pr.Fetched), human.Bytes(int64(pr.Rate)))
		}
		sc.Progress(pr.Held, pr.Total, msg)
	}
}
