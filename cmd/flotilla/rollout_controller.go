package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller"
	"github.com/flotilla-dev/flotilla/controller/rollout"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/pflag"
)

// The rollout engine in `flotilla controller`: layer blobs on the HTTPS server (mounted
// before start, served once the engine exists), the rollout admin handlers, and the
// resume of rollouts a stopped controller left running. Images are resolved in the
// controller host's store ($FLOTILLA_STORE, else the default store directory).

// rolloutBlobs forwards to the engine's blob handler once it exists.
var rolloutBlobs atomic.Pointer[http.Handler]

func init() {
	controllerHandlers = append(controllerHandlers, func(string) map[string]http.Handler {
		return map[string]http.Handler{"GET " + rollout.BlobPath + "{digest}": http.HandlerFunc(serveRolloutBlob)}
	})
	controllerHooks = append(controllerHooks, startRolloutEngine)
	controllerFlags = append(controllerFlags, func(f *pflag.FlagSet) {
		f.DurationVar(&unreachableTimeout, "unreachable-timeout", 2*time.Minute,
			"how long a rollout retries a node that is offline before it reports it unreachable and goes on")
	})
}

// unreachableTimeout is `flotilla controller --unreachable-timeout`.
var unreachableTimeout time.Duration

func serveRolloutBlob(w http.ResponseWriter, r *http.Request) {
	h := rolloutBlobs.Load()
	if h == nil {
		http.Error(w, "rollout engine not started yet: retry", http.StatusServiceUnavailable)
		return
	}
	(*h).ServeHTTP(w, r)
}

func startRolloutEngine(ctx context.Context, c *controller.Controller) error {
	st, err := store.Open(store.DefaultDir())
	if err != nil {
		// The controller still serves joins and exec; rollouts say what is wrong.
		err = fmt.Errorf("rollout engine unavailable: image store %s: %w (set %s to a store this user can write)", store.DefaultDir(), err, store.EnvStore)
		slog.Error("rollout engine", "err", err)
		for _, name := range []string{protocol.AdminPlan, protocol.AdminApply, protocol.AdminStatus, protocol.AdminDelete} {
			c.HandleAdmin(name, func(context.Context, *controller.AdminCall) (any, error) { return nil, err })
		}
		return nil
	}
	log := slog.Default()
	inf, err := newInfra(ctx, c)
	if err != nil {
		return err
	}
	e, err := rollout.New(c, st, rollout.Options{Logger: log, UnreachableTimeout: unreachableTimeout, DecorateLayer: p2pDecorateLayer(st),
		Infra: inf})
	if err != nil {
		return err
	}
	h := e.BlobHandler()
	rolloutBlobs.Store(&h)
	e.Register()
	go func() {
		<-ctx.Done()
		e.Close()
	}()
	log.Info("rollout engine ready", "component", "rollout", "store", st.Dir())
	if err := e.Resume(ctx); err != nil {
		log.Error("resume interrupted rollouts", "err", err)
	}
	return nil
}
