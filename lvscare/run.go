package lvscare

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/internal/httpserve"
	"github.com/flotilla-dev/flotilla/lvscare/dataplane"
	"github.com/flotilla-dev/flotilla/lvscare/health"
)

// Runner is one running lvscare: it checks backends and reconciles the dataplane every interval.
type Runner struct {
	cfg      Config
	services []Service
	dp       dataplane.Dataplane
	checkers []*health.Checker
	metrics  *Metrics
	log      *slog.Logger
}

// Option adjusts a Runner.
type Option func(*Runner)

// WithProber replaces the prober built from cfg.Health (tests, custom checks).
func WithProber(p health.Prober) Option {
	return func(r *Runner) {
		for _, c := range r.checkers {
			c.Prober = p
		}
	}
}

// NewRunner validates cfg (after WithDefaults) and binds it to a dataplane. It changes nothing.
func NewRunner(cfg Config, dp dataplane.Dataplane, log *slog.Logger, opts ...Option) (*Runner, error) {
	cfg = cfg.WithDefaults()
	services, err := cfg.Validate()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	r := &Runner{cfg: cfg, services: services, dp: dp, metrics: NewMetrics(dp.Name()), log: log}
	for range services {
		p, err := health.NewProber(cfg.Health.Protocol, cfg.Health.Path)
		if err != nil {
			return nil, err
		}
		r.checkers = append(r.checkers, &health.Checker{Prober: p, Timeout: cfg.Health.Timeout.Duration, Fall: cfg.Health.Fall, Rise: cfg.Health.Rise})
	}
	for _, o := range opts {
		o(r)
	}
	return r, nil
}

// Metrics returns the runner's metrics.
func (r *Runner) Metrics() *Metrics { return r.metrics }

// Run checks and reconciles until ctx ends, then returns nil and leaves the rules in
// place, so traffic keeps flowing while lvscare restarts. It returns an error only when
// the first reconcile fails (wrong privileges, missing kernel support) or the metrics
// listener cannot start.
func (r *Runner) Run(ctx context.Context) error {
	if r.cfg.MetricsListen != "" {
		stop, err := r.serveMetrics(ctx)
		if err != nil {
			return err
		}
		defer stop()
	}
	r.log.Info("lvscare starting", "dataplane", r.dp.Name(), "services", len(r.services),
		"health", r.cfg.Health.Protocol, "interval", r.cfg.Health.Interval.Duration,
		"timeout", r.cfg.Health.Timeout.Duration, "fall", r.cfg.Health.Fall, "rise", r.cfg.Health.Rise)
	tick := time.NewTicker(r.cfg.Health.Interval.Duration)
	defer tick.Stop()
	// First round: check, then program; a failure here (privileges, kernel support) is fatal.
	desired := r.checkRound(ctx)
	if ctx.Err() == nil {
		if err := r.reconcile(ctx, desired); err != nil {
			return fmt.Errorf("program %s dataplane: %w", r.dp.Name(), err)
		}
	}
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			continue
		case <-tick.C:
		}
		// Repair drift first, with the membership already known, so rules someone
		// flushed are back one interval after the flush at worst, not one interval
		// plus a slow check round. Then check, and apply any membership change at once.
		_ = r.reconcile(ctx, desired)
		next := r.checkRound(ctx)
		if ctx.Err() != nil {
			break
		}
		if !dataplane.Equal(dataplane.Normalize(next), dataplane.Normalize(desired)) {
			desired = next
			_ = r.reconcile(ctx, desired)
		}
	}
	r.log.Info("lvscare stopping; rules stay in place (run with --clean to remove them)")
	return nil
}

// reconcile applies desired once, logging and counting the outcome.
func (r *Runner) reconcile(ctx context.Context, desired []dataplane.Service) error {
	changed, err := r.dp.Reconcile(ctx, desired)
	switch {
	case err != nil:
		r.metrics.ObserveReconcile("error")
		if ctx.Err() == nil {
			r.log.Error("reconcile dataplane, retrying next interval", "dataplane", r.dp.Name(), "err", err)
		}
	case changed:
		r.metrics.ObserveReconcile("changed")
		r.log.Info("dataplane programmed", "dataplane", r.dp.Name(), "state", dataplane.String(desired))
	default:
		r.metrics.ObserveReconcile("unchanged")
	}
	return err
}

// checkRound checks every backend of every service at once and returns the desired state.
func (r *Runner) checkRound(ctx context.Context) []dataplane.Service {
	out := make([]dataplane.Service, len(r.services))
	var wg sync.WaitGroup
	for i, s := range r.services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results := r.checkers[i].Round(ctx, s.Backends)
			ds := dataplane.Service{VIP: s.VIP, Backends: []netip.AddrPort{}}
			for _, res := range results {
				if ctx.Err() != nil {
					return
				}
				r.metrics.ObserveCheck(s.VIP.String(), res.Backend.String(), res.Err == nil, res.Up, res.Changed)
				if res.Changed {
					if res.Up {
						r.log.Info("backend up: receives new connections", "vip", s.VIP, "backend", res.Backend)
					} else {
						r.log.Warn("backend down: removed from the VIP", "vip", s.VIP, "backend", res.Backend, "err", res.Err)
					}
				} else if res.Err != nil {
					r.log.Debug("health check failed", "vip", s.VIP, "backend", res.Backend, "err", res.Err)
				}
				if res.Up {
					ds.Backends = append(ds.Backends, res.Backend)
				}
			}
			out[i] = ds
		}()
	}
	wg.Wait()
	return out
}

func (r *Runner) serveMetrics(ctx context.Context) (stop func(), err error) {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", r.cfg.MetricsListen)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", r.cfg.MetricsListen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", r.metrics)
	srv := httpserve.New(mux, nil, nil)
	srv.MaxConns, srv.Logger = httpserve.MetricsMaxConns, r.log
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("metrics server", "err", err)
		}
	}()
	r.log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}
