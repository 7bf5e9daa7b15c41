package main

import (
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync/atomic"

	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller"
	"github.com/flotilla-dev/flotilla/controller/rollout"
	"github.com/flotilla-dev/flotilla/controller/tracker"
)

// p2pSeed is the controller's seed and tracker for peer-to-peer layer
// distribution; nil when its store could not be opened (layers then come
// from the controller's blob URL alone).
var p2pSeed *tracker.Seed

// p2pController answers the tracker's inventory questions once it runs.
var p2pController atomic.Pointer[controller.Controller]

// The tracker and the seed's pieces go on the controller's HTTPS server,
// for agents only (their peer certificate, mutual TLS, and a node in the
// inventory).
func init() {
	controllerAgentHandlers = append(controllerAgentHandlers, func(dataDir string) map[string]http.Handler {
		log := slog.Default().With("component", "seed")
		seed, err := tracker.NewSeed(filepath.Join(dataDir, "seed"), tracker.New(0), log)
		if err != nil {
			slog.Error("peer-to-peer distribution off: layers come from the controller alone", "err", err)
			return nil
		}
		p2pSeed = seed
		return seed.Handlers(tracker.Access{
			Identify: controller.AgentFromRequest,
			Member: func(node string) bool {
				c := p2pController.Load()
				return c != nil && c.IsMember(node)
			},
			Log: log,
		})
	})
	controllerHooks = append(controllerHooks, func(ctx context.Context, c *controller.Controller) error {
		p2pController.Store(c)
		if p2pSeed != nil {
			p2pSeed.SetAddr(c.HTTPURL())
			go p2pSeed.Run(ctx)
		}
		return nil
	})
}

// p2pDecorateLayer makes the rollout engine's layer steps peer-to-peer (nil:
// the seed is off and layers come from the blob URL).
func p2pDecorateLayer(st *store.Store) func(context.Context, rollout.LayerRequest) error {
	if p2pSeed == nil {
		return nil
	}
	return rollout.PeerToPeer(st, p2pSeed, slog.Default().With("component", "seed"))
}
