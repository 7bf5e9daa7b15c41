// Package health checks backends (HTTP, HTTPS or TCP) and turns check results into
// membership with fall/rise hysteresis, so one lost probe does not flap a backend.
package health

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Prober checks one backend once; a nil error means healthy.
type Prober interface {
	Probe(ctx context.Context, backend netip.AddrPort) error
}

// NewProber returns the prober for kind "http", "https" or "tcp". path is the HTTP path.
func NewProber(kind, path string) (Prober, error) {
	switch kind {
	case "tcp":
		return TCPProber{}, nil
	case "http", "https":
		if path == "" {
			path = "/"
		}
		if path[0] != '/' {
			return nil, fmt.Errorf("health path %q must start with /", path)
		}
		return &HTTPProber{Scheme: kind, Path: path, Client: newHTTPClient()}, nil
	}
	return nil, fmt.Errorf("health check %q: want http, https or tcp", kind)
}

// TCPProber calls a backend healthy when it accepts a TCP connection.
type TCPProber struct{}

// Probe implements Prober.
func (TCPProber) Probe(ctx context.Context, b netip.AddrPort) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", b.String())
	if err != nil {
		return err
	}
	return c.Close()
}

// HTTPProber calls a backend healthy when GET Scheme://backend/Path answers 2xx or 3xx.
type HTTPProber struct {
	Scheme string
	Path   string
	Client *http.Client
}

func newHTTPClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			// Backends are addressed by IP, and apiserver-like backends rarely carry
			// an IP SAN; a health check sends no secret and trusts only the status.
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // see above
			DisableKeepAlives: true,
			Proxy:             nil,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Probe implements Prober.
func (p *HTTPProber) Probe(ctx context.Context, b netip.AddrPort) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.Scheme+"://"+b.String()+p.Path, nil)
	if err != nil {
		return err
	}
	resp, err := p.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("GET %s: status %s", req.URL, resp.Status)
	}
	return nil
}

// State is one backend's membership: Up changes only after Fall failures or Rise
// successes in a row. The first observation decides the initial state at once,
// so a fresh lvscare neither sends traffic to a dead backend nor withholds it from a live one.
type State struct {
	Up    bool
	known bool
	fails int
	oks   int
}

// Observe records one check result and reports whether Up changed.
func (s *State) Observe(ok bool, fall, rise int) (changed bool) {
	if !s.known {
		s.known, s.Up = true, ok
		return true
	}
	if ok {
		s.fails = 0
		s.oks++
		if !s.Up && s.oks >= rise {
			s.Up, s.oks = true, 0
			return true
		}
		return false
	}
	s.oks = 0
	s.fails++
	if s.Up && s.fails >= fall {
		s.Up, s.fails = false, 0
		return true
	}
	return false
}

// Result is the outcome of one check of one backend.
type Result struct {
	Backend netip.AddrPort
	Err     error // nil when the check passed
	Up      bool  // membership after this check
	Changed bool  // membership changed with this check
	Took    time.Duration
}

// Checker checks a set of backends concurrently and keeps their State.
type Checker struct {
	Prober  Prober
	Timeout time.Duration
	Fall    int
	Rise    int

	mu     sync.Mutex
	states map[netip.AddrPort]*State
}

// Round checks every backend once, all at the same time, each bounded by Timeout,
// and returns the results in the order of backends. Backends no longer listed are forgotten.
func (c *Checker) Round(ctx context.Context, backends []netip.AddrPort) []Result {
	results := make([]Result, len(backends))
	var wg sync.WaitGroup
	for i, b := range backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, c.Timeout)
			defer cancel()
			start := time.Now()
			err := c.Prober.Probe(cctx, b)
			results[i] = Result{Backend: b, Err: err, Took: time.Since(start)}
		}()
	}
	wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.states == nil {
		c.states = map[netip.AddrPort]*State{}
	}
	listed := map[netip.AddrPort]bool{}
	for i := range results {
		r := &results[i]
		listed[r.Backend] = true
		st := c.states[r.Backend]
		if st == nil {
			st = &State{}
			c.states[r.Backend] = st
		}
		if ctx.Err() != nil {
			// Shutting down: a cancelled probe says nothing about the backend.
			r.Up = st.Up
			continue
		}
		r.Changed = st.Observe(r.Err == nil, c.Fall, c.Rise)
		r.Up = st.Up
	}
	for b := range c.states {
		if !listed[b] {
			delete(c.states, b)
		}
	}
	return results
}
