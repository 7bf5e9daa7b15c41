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
	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/p2p/fetch"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
	"github.com/flotilla-dev/flotilla/protocol"
)

// fetchBlob is the default FetchFunc. Layer steps whose payload carries a
// piece list fetch peer-to-peer: from the other agents of the cluster and the
// controller (the first seed), every piece checked against the list as it
// lands and the blob against its digest at the end, through the agent's peer
// (sc.Peer). Without a piece list, or without a running peer, or when the
// peer-to-peer fetch fails, the blob comes from the controller's URL.
//
// A peer-to-peer fetch returns verified: the peer store counts a blob only
// once it matched its digest, so the layer executor need not hash it again.
func (x *steps) fetchBlob(ctx context.Context, sc *agent.StepContext, p protocol.LayerPayload, dst string) (bool, error) {
	fromController := func() (bool, error) { return false, x.fetchHTTPS(ctx, sc, p, dst) }
	if len(p.Pieces) == 0 {
		return fromController()
	}
	list, err := layerPieceList(p)
	if err != nil {
		return false, err // a signed task with a wrong list: the controller's bug, say so
	}
	peer := sc.Peer
	if peer == nil {
		return fromController()
	}
	log := stepLogger(sc)
	start := time.Now()
	path, err := peer.Fetch(ctx, list, agent.StepCaps{Upload: p.MaxUpload, Download: p.MaxDownload}, x.progressReporter(sc))
	if err != nil {
		if ctx.Err() != nil {
			return false, err
		}
		sc.Output("stderr", fmt.Sprintf("peer-to-peer fetch of %s failed, fetching from the controller: %v", protocol.ShortDigest(p.Digest), err))
		log.Warn("peer-to-peer fetch failed; falling back to the controller", "digest", p.Digest, "err", err)
		return fromController()
	}
	el := time.Since(start)
	log.Info("layer fetched peer-to-peer", "node", sc.Task.Node, "digest", p.Digest, "bytes", list.Size,
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
// ProgressEvery, with the achieved rate for `flotilla apply`.
func (x *steps) progressReporter(sc *agent.StepContext) func(fetch.Progress) {
	var mu sync.Mutex
	var last time.Time
	return func(pr fetch.Progress) {
		mu.Lock()
		defer mu.Unlock()
		if !pr.Done && time.Since(last) < x.opts.ProgressEvery {
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

// stepLogger is the step's logger (the agent's), or the default one for a
// StepContext built without.
func stepLogger(sc *agent.StepContext) *slog.Logger {
	if sc.Logger != nil {
		return sc.Logger
	}
	return slog.Default()
}
