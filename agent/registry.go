package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"syscall"
	"time"

	"github.com/flotilla-dev/flotilla/agent/imagecache"
	"github.com/flotilla-dev/flotilla/agent/mirror"
)

// MirrorDir is where an agent with data dir dataDir keeps its registry mirror's
// identity (mirror.Identity: its own CA, the key 0600).
func MirrorDir(dataDir string) string { return filepath.Join(dataDir, "mirror") }

// ImageCacheDir is where an agent with data dir dataDir keeps the container images of
// the cluster images applied on its node (imagecache layout): executors import into
// it, the registry mirror serves from it.
func ImageCacheDir(dataDir string) string { return filepath.Join(dataDir, imagecache.DirName) }

// runRegistry serves the node-local registry mirror on opts.RegistryListen until ctx
// ends, over TLS with the mirror's own identity, retrying while the address is
// taken. While it does not serve, status.json says why (`flotilla agent status`
// fails) and images steps fail.
func (a *Agent) runRegistry(ctx context.Context) {
	if a.opts.RegistryListen == "" {
		a.refreshHostsTOML(nil)
		a.registryTried()
		return
	}
	cache, err := imagecache.Open(ImageCacheDir(a.opts.DataDir))
	if err != nil {
		a.registryFailed(fmt.Errorf("no image cache: %w", err))
		a.log.Error("registry mirror disabled: no image cache", "err", err)
		return
	}
	id, err := mirror.LoadIdentity(MirrorDir(a.opts.DataDir), a.opts.RegistryListen)
	if err != nil {
		a.registryFailed(err)
		a.log.Error("registry mirror disabled: no TLS identity; check that the data dir is writable", "err", err)
		return
	}
	a.mu.Lock()
	a.registryCA = id.CAPath()
	a.mu.Unlock()
	// Before listening: a hosts.toml of an older flotilla (plain HTTP, another
	// port) must not keep containerd pointed where another process may answer.
	a.refreshHostsTOML(id)
	h := mirror.New(mirror.Options{Content: cache, Logger: a.log.With("component", "registry-mirror"), Listen: a.opts.RegistryListen})
	for attempt := 1; ; attempt++ {
		err := a.serveRegistry(ctx, h, id)
		if ctx.Err() != nil {
			return
		}
		a.registryFailed(err)
		wait := min(30*time.Second, time.Duration(attempt)*2*time.Second)
		a.log.Error("registry mirror is NOT serving: containerd pulls from the upstream registries meanwhile (its hosts.toml trusts only this agent's certificate, so no other process at this address is used), and nodes that cannot reach them fail to pull; images steps fail until it serves",
			"listen", a.opts.RegistryListen, "err", err, "retry in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (a *Agent) serveRegistry(ctx context.Context, h *mirror.Server, id *mirror.Identity) error {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", a.opts.RegistryListen)
	if err != nil {
		return listenHint(a.opts.RegistryListen, err)
	}
	a.log.Info("registry mirror serving", "url", "https://"+l.Addr().String(), "cache", ImageCacheDir(a.opts.DataDir), "ca", id.CAPath())
	a.mu.Lock()
	a.registryAddr, a.registryErr = l.Addr().String(), ""
	a.mu.Unlock()
	a.registryTried()
	a.writeStatus()
	err = mirror.Serve(ctx, l, h, mirror.ServeOptions{Logger: a.log.With("component", "registry-mirror"), TLS: id.TLSConfig()})
	if err == nil && ctx.Err() == nil {
		err = errors.New("the server stopped")
	}
	return err
}

// listenHint says what to do about a failed listen.
func listenHint(addr string, err error) error {
	_, port, _ := net.SplitHostPort(addr)
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("the address is taken by another process (%w): find it with `ss -ltnp 'sport = :%s'` and stop it; the agent retries", err, port)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%w: a port below 1024 needs root or CAP_NET_BIND_SERVICE; run the agent as root or choose another --registry-listen", err)
	}
	return err
}

// registryTried marks the mirror's first attempt to listen as over (steps
// waiting in RegistryMirror go on).
func (a *Agent) registryTried() { a.registryOnce.Do(func() { close(a.registryFirst) }) }

// registryFailed records that the mirror does not serve, and why.
func (a *Agent) registryFailed(err error) {
	a.mu.Lock()
	a.registryAddr, a.registryErr = "", err.Error()
	a.mu.Unlock()
	a.registryTried()
	a.writeStatus()
}

// registryMirror is StepContext.RegistryMirror for this agent.
func (a *Agent) registryMirror(ctx context.Context) (string, bool, error) {
	if a.opts.RegistryListen == "" {
		return "", false, nil
	}
	select {
	case <-a.registryFirst:
	case <-ctx.Done():
		return "", true, fmt.Errorf("waiting for the registry mirror to start: %w", ctx.Err())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.registryAddr == "" {
		why := a.registryErr
		if why == "" {
			why = "not started"
		}
		return "", true, fmt.Errorf("the node's registry mirror does not serve on %s: %s", a.opts.RegistryListen, why)
	}
	return a.registryAddr, true, nil
}

// refreshHostsTOML keeps a containerd hosts.toml that flotilla wrote (`flotilla
// agent containerd-mirror`) in line with this agent's mirror: rewritten for its
// address and CA when it names anything else (an older flotilla's plain HTTP
// mirror, another port, a CA that was replaced), removed when the agent runs no
// mirror (id nil) or its address has no fixed port. A hosts.toml of anyone else
// is left alone.
func (a *Agent) refreshHostsTOML(id *mirror.Identity) {
	root := a.opts.Root
	remove := func(why string) {
		removed, err := mirror.RemoveHostsTOML(root)
		if err != nil {
			a.log.Error("cannot remove containerd's hosts.toml that names the registry mirror; remove it by hand", "why", why, "err", err)
		} else if removed {
			a.log.Warn("removed containerd's hosts.toml that named the registry mirror", "why", why, "path", filepath.Join(root, mirror.HostsTOMLPath))
		}
	}
	if id == nil {
		remove("this agent runs no registry mirror (--registry-listen \"\")")
		return
	}
	addr := mirror.DialAddr(a.opts.RegistryListen)
	ours, current := mirror.HostsTOMLCurrent(root, addr, id.CAPEM())
	if !ours || current {
		return
	}
	if _, port, _ := net.SplitHostPort(addr); port == "0" {
		remove("the registry mirror's port is chosen at start (--registry-listen " + a.opts.RegistryListen + ")")
		return
	}
	p, err := mirror.WriteHostsTOML(root, addr, id.CAPEM())
	if err != nil {
		a.log.Error("cannot rewrite containerd's hosts.toml for the registry mirror", "err", err)
		remove("it names another registry mirror and cannot be rewritten")
		return
	}
	a.log.Info("rewrote containerd's hosts.toml: it named another registry mirror (an earlier flotilla's, another address or CA)", "path", p, "mirror", "https://"+addr)
}
