package agent

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/flotilla-dev/flotilla/agent/imagecache"
	"github.com/flotilla-dev/flotilla/agent/mirror"
)

// ImageCacheDir is where an agent with data dir dataDir keeps the container images of
// the cluster images applied on its node (imagecache layout): executors import into
// it, the registry mirror serves from it.
func ImageCacheDir(dataDir string) string { return filepath.Join(dataDir, imagecache.DirName) }

// runRegistry serves the node-local registry mirror on opts.RegistryListen until ctx
// ends, retrying while the address is taken.
func (a *Agent) runRegistry(ctx context.Context) {
	if a.opts.RegistryListen == "" {
		return
	}
	cache, err := imagecache.Open(ImageCacheDir(a.opts.DataDir))
	if err != nil {
		a.log.Error("registry mirror disabled: no image cache", "err", err)
		return
	}
	h := mirror.New(mirror.Options{Content: cache, Logger: a.log.With("component", "registry-mirror"), Listen: a.opts.RegistryListen})
	for attempt := 1; ; attempt++ {
		err := a.serveRegistry(ctx, h)
		if ctx.Err() != nil {
			return
		}
		wait := min(30*time.Second, time.Duration(attempt)*2*time.Second)
		a.log.Warn("registry mirror not serving; container runtimes pull from upstream meanwhile", "listen", a.opts.RegistryListen, "err", err, "retry in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (a *Agent) serveRegistry(ctx context.Context, h *mirror.Server) error {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", a.opts.RegistryListen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	a.log.Info("registry mirror serving", "addr", l.Addr().String(), "cache", ImageCacheDir(a.opts.DataDir))
	a.mu.Lock()
	a.registryAddr = l.Addr().String()
	a.mu.Unlock()
	a.writeStatus()
	return mirror.Serve(ctx, l, h, mirror.ServeOptions{Logger: a.log.With("component", "registry-mirror")})
}
