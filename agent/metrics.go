package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/internal/httpserve"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultMetricsListen is the address the CLI documents for --metrics-listen
// (off unless given: a node's metrics are for its own monitoring agent).
const DefaultMetricsListen = "127.0.0.1:9445"

// metrics are the agent's Prometheus collectors, on Options.Metrics.
type metrics struct {
	reg        *prometheus.Registry
	tasks      *prometheus.CounterVec
	steps      *prometheus.CounterVec
	stepDur    *prometheus.HistogramVec
	heartbeats prometheus.Counter
	p2pServed  prometheus.Counter
	p2pFetched *prometheus.CounterVec
}

var stepBuckets = []float64{.001, .005, .025, .1, .5, 1, 5, 15, 60, 300, 1800}

func newMetrics(a *Agent, reg *prometheus.Registry) (*metrics, error) {
	m := &metrics{
		reg: reg,
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_agent_tasks_total",
			Help: "Signed tasks by outcome: ok, failed, canceled, refused (bad signature, replay, clock, unknown kind)."}, []string{"outcome"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_agent_steps_total",
			Help: "Steps run by kind and outcome: ok, skipped (digest already applied), failed."}, []string{"kind", "outcome"}),
		stepDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "flotilla_agent_step_duration_seconds",
			Help: "Time a step took, by kind and outcome.", Buckets: stepBuckets}, []string{"kind", "outcome"}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{Name: "flotilla_agent_heartbeats_total",
			Help: "Heartbeats published to the controller."}),
		p2pServed: prometheus.NewCounter(prometheus.CounterOpts{Name: "flotilla_agent_p2p_bytes_served_total",
			Help: "Response bytes the piece server sent to peers (pieces and blobs)."}),
		p2pFetched: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_agent_p2p_bytes_fetched_total",
			Help: "Piece and blob bytes the peer-to-peer fetcher received, by source: peer or controller (the seed)."}, []string{"from"}),
	}
	state := func(name, help string, f func() bool) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			if f() {
				return 1
			}
			return 0
		})
	}
	cs := []prometheus.Collector{m.tasks, m.steps, m.stepDur, m.heartbeats, m.p2pServed, m.p2pFetched,
		state("flotilla_agent_connected", "1 while the agent's NATS connection to the controller is up.", func() bool {
			return a.nc != nil && a.nc.IsConnected()
		}),
		state("flotilla_agent_registered", "1 once the controller accepted the agent's registration on this connection.", a.isRegistered),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_agent_tasks_running", Help: "Tasks accepted and not finished."}, func() float64 {
			a.mu.Lock()
			defer a.mu.Unlock()
			return float64(len(a.running))
		}),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register agent metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) step(kind, outcome string, d time.Duration) {
	m.steps.WithLabelValues(kind, outcome).Inc()
	m.stepDur.WithLabelValues(kind, outcome).Observe(d.Seconds())
}

// MetricsRegistry is the registry the agent's metrics are on.
func (a *Agent) MetricsRegistry() *prometheus.Registry { return a.metrics.reg }

// serveMetrics serves /metrics on Options.MetricsListen until ctx ends.
func (a *Agent) serveMetrics(ctx context.Context) error {
	if a.opts.MetricsListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.opts.MetricsListen)
	if err != nil {
		return optionErr("MetricsListen", fmt.Errorf("metrics address %s: %w", a.opts.MetricsListen, err))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{Timeout: 10 * time.Second}))
	// Idle scrapers' connections are closed at the cap: they cannot pile up
	// file descriptors or lock the real scraper out.
	srv := httpserve.New(mux, nil, nil)
	srv.MaxConns, srv.Logger = httpserve.MetricsMaxConns, a.log.With("component", "metrics")
	a.bg.Go(func() {
		<-ctx.Done()
		_ = srv.Close()
	})
	a.bg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics server stopped", "err", err)
		}
	})
	a.log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return nil
}

// countServed counts the response bytes of the piece server.
func (m *metrics) countServed(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&servedWriter{ResponseWriter: w, c: m.p2pServed}, r)
	})
}

type servedWriter struct {
	http.ResponseWriter
	c prometheus.Counter
}

func (w *servedWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.c.Add(float64(n))
	return n, err
}

func (w *servedWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (write deadlines).
func (w *servedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countFetched wraps the peer-to-peer client's transport: piece and blob
// bodies count as fetched from the controller (its host) or from a peer.
func (m *metrics) countFetched(rt http.RoundTripper, controllerURL string) http.RoundTripper {
	ctl := ""
	if u, err := url.Parse(controllerURL); err == nil {
		ctl = u.Host
	}
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		if err != nil || !(strings.HasPrefix(req.URL.Path, "/v1/pieces/") || strings.HasPrefix(req.URL.Path, "/v1/blobs/")) {
			return resp, err
		}
		from := "peer"
		if req.URL.Host == ctl {
			from = "controller"
		}
		resp.Body = &countedBody{ReadCloser: resp.Body, c: m.p2pFetched.WithLabelValues(from)}
		return resp, nil
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type countedBody struct {
	io.ReadCloser
	c prometheus.Counter
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.c.Add(float64(n))
	return n, err
}
