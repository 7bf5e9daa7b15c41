package plane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/internal/httpserve"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the controller's Prometheus collectors, registered on
// Options.Metrics. Components built on the controller (the rollout engine)
// observe into the ones that concern them; the rest the controller keeps.
type Metrics struct {
	// ExecFanout is the time from an exec request to the last node's result.
	ExecFanout prometheus.Histogram
	// Tasks counts signed tasks sent to nodes, by result (accepted, refused,
	// offline, error).
	Tasks *prometheus.CounterVec
	// Rollouts counts finished rollouts by kind (apply, delete) and outcome
	// (done, failed, halted); RolloutDuration is their wall time.
	Rollouts        *prometheus.CounterVec
	RolloutDuration *prometheus.HistogramVec
	// Steps counts step results by kind and outcome (ok, skipped, failed);
	// StepDuration is how long each took on its node.
	Steps        *prometheus.CounterVec
	StepDuration *prometheus.HistogramVec
	// NodeOutcomes counts the nodes of finished rollouts by status.
	NodeOutcomes *prometheus.CounterVec
	// HTTPRequests and HTTPBytes count what the HTTPS listener served, by
	// route pattern (the seed's pieces and blobs are the peer-to-peer bytes)
	// and, for requests, status code (joins: 200 admitted, 403/409 refused,
	// 429/503 limited).
	HTTPRequests *prometheus.CounterVec
	HTTPBytes    *prometheus.CounterVec
	// Leader is 1 while this controller serves admin requests (with HA: holds
	// the leader lease); LeaderSince is when it started to.
	Leader      prometheus.Gauge
	LeaderSince prometheus.Gauge
}

// durationBuckets span a 1 ms exec on one node to a long rollout.
var durationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800}

func newMetrics(c *Controller, reg *prometheus.Registry) (*Metrics, error) {
	m := &Metrics{
		ExecFanout: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flotilla_exec_fanout_seconds",
			Help: "Time from an exec request to the last selected node's result.", Buckets: durationBuckets}),
		Tasks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_tasks_dispatched_total",
			Help: "Signed tasks sent to nodes, by result: accepted, refused (by the agent), offline, error."}, []string{"result"}),
		Rollouts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_rollouts_total",
			Help: "Finished rollouts by kind (apply, delete) and outcome (done, failed, halted)."}, []string{"kind", "outcome"}),
		RolloutDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "flotilla_rollout_duration_seconds",
			Help: "Wall time of finished rollouts, by kind and outcome.", Buckets: durationBuckets}, []string{"kind", "outcome"}),
		Steps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_rollout_steps_total",
			Help: "Rollout step results by step kind and outcome (ok, skipped, failed)."}, []string{"kind", "outcome"}),
		StepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "flotilla_rollout_step_duration_seconds",
			Help: "Time a rollout step took on its node, by kind and outcome.", Buckets: durationBuckets}, []string{"kind", "outcome"}),
		NodeOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_rollout_nodes_total",
			Help: "Nodes of finished rollouts by status (ok, noop, failed, unreachable, not-started)."}, []string{"status"}),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_http_requests_total",
			Help: "Requests the controller's HTTPS listener answered, by route and status code."}, []string{"route", "code"}),
		HTTPBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_http_response_bytes_total",
			Help: "Response body bytes the controller's HTTPS listener served, by route (pieces and blobs: peer-to-peer seeding)."}, []string{"route"}),
		Leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flotilla_controller_leader",
			Help: "1 while this controller leads: it holds the leader lease (HA) and serves admin requests; 0 otherwise."}),
		LeaderSince: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flotilla_controller_leader_since_timestamp_seconds",
			Help: "Unix time this controller began to lead (0: it does not)."}),
	}
	cs := []prometheus.Collector{m.ExecFanout, m.Tasks, m.Rollouts, m.RolloutDuration, m.Steps, m.StepDuration, m.NodeOutcomes,
		m.HTTPRequests, m.HTTPBytes, m.Leader, m.LeaderSince, &stateCollector{c: c},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})}
	for _, col := range cs {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register controller metrics: %w", err)
		}
	}
	return m, nil
}

// Metrics returns the controller's collectors (never nil after New).
func (c *Controller) Metrics() *Metrics { return c.metrics }

// MetricsRegistry is the registry the controller's metrics are on.
func (c *Controller) MetricsRegistry() *prometheus.Registry { return c.reg }

// stateCollector reads the inventory, the NATS server and JetStream at scrape time.
type stateCollector struct{ c *Controller }

var (
	descNodes = prometheus.NewDesc("flotilla_nodes", "Nodes in the inventory by state (online: heartbeats arrive).", []string{"state"}, nil)
	descConns = prometheus.NewDesc("flotilla_nats_connections", "Client connections to the embedded NATS server (agents, CLI, the controller's own).", nil, nil)
	descInFl  = prometheus.NewDesc("flotilla_tasks_in_flight", "Tasks dispatched whose result has not arrived yet.", nil, nil)
	descMsgs  = prometheus.NewDesc("flotilla_jetstream_stream_messages", "Messages held by a JetStream stream (KV buckets are streams KV_<bucket>).", []string{"stream"}, nil)
	descBytes = prometheus.NewDesc("flotilla_jetstream_stream_bytes", "Bytes held by a JetStream stream.", []string{"stream"}, nil)
	descSeq   = prometheus.NewDesc("flotilla_jetstream_stream_last_sequence", "Last sequence number of a JetStream stream: messages ever stored (its rate is the write rate).", []string{"stream"}, nil)
	descSubj  = prometheus.NewDesc("flotilla_jetstream_stream_subjects", "Distinct subjects in a JetStream stream (KV: keys).", []string{"stream"}, nil)
)

func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodes, descConns, descInFl, descMsgs, descBytes, descSeq, descSubj} {
		ch <- d
	}
}

func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c := s.c
	if c.inv != nil {
		on, off := c.inv.counts()
		ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(on), "online")
		ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(off), "offline")
	}
	if c.ns != nil {
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(c.ns.NumClients()))
	}
	c.runsMu.Lock()
	inFlight := len(c.runs)
	c.runsMu.Unlock()
	ch <- prometheus.MustNewConstMetric(descInFl, prometheus.GaugeValue, float64(inFlight))
	if c.js == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	lister := c.js.ListStreams(ctx)
	for info := range lister.Info() {
		st, name := info.State, info.Config.Name
		ch <- prometheus.MustNewConstMetric(descMsgs, prometheus.GaugeValue, float64(st.Msgs), name)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, float64(st.Bytes), name)
		ch <- prometheus.MustNewConstMetric(descSeq, prometheus.CounterValue, float64(st.LastSeq), name)
		ch <- prometheus.MustNewConstMetric(descSubj, prometheus.GaugeValue, float64(st.NumSubjects), name)
	}
	if err := lister.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		c.log.Debug("metrics: list streams", "err", err)
	}
}

// instrument counts a mounted handler's requests and response bytes under
// its route pattern (a bounded label: patterns, not paths).
func (m *Metrics) instrument(pattern string, h http.Handler) http.Handler {
	route := pattern
	if _, p, ok := strings.Cut(pattern, " "); ok {
		route = p
	}
	bytes := m.HTTPBytes.WithLabelValues(route)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &countingWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(cw, r)
		bytes.Add(float64(cw.n))
		m.HTTPRequests.WithLabelValues(route, fmt.Sprint(cw.code)).Inc()
	})
}

type countingWriter struct {
	http.ResponseWriter
	n    int64
	code int
}

func (w *countingWriter) WriteHeader(code int) { w.code = code; w.ResponseWriter.WriteHeader(code) }
func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}
func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (write deadlines).
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// MetricsHandler serves the controller's metrics in the Prometheus formats.
func (c *Controller) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(c.reg, promhttp.HandlerOpts{ErrorLog: nil, Timeout: 10 * time.Second})
}

// startMetrics serves /metrics (and /debug/pprof/ with MetricsPprof) on
// MetricsListen, plain HTTP: bind it to loopback or a management network.
func (c *Controller) startMetrics() error {
	if c.opts.MetricsListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", c.opts.MetricsListen)
	if err != nil {
		return fmt.Errorf("--metrics-listen %s: %w", c.opts.MetricsListen, err)
	}
	c.metricsAddr = ln.Addr()
	// Every bound of the HTTPS listener, and a small connection cap: idle
	// connections are closed when a new scraper arrives at it.
	srv := httpserve.New(metricsMux(c.MetricsHandler(), c.opts.MetricsPprof), nil, nil)
	srv.MaxConns, srv.Logger = httpserve.MetricsMaxConns, c.log.With("component", "metrics")
	if c.opts.MetricsPprof {
		// pprof refuses a CPU profile or trace longer than the write timeout.
		srv.WriteTimeout = pprofWriteTimeout
	}
	c.metricsSrv = srv
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.log.Error("metrics server stopped", "err", err)
		}
	}()
	c.log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics", "pprof", c.opts.MetricsPprof)
	return nil
}

// pprofWriteTimeout bounds answers of a metrics listener with pprof: CPU
// profiles and traces up to about 10 minutes (?seconds=).
const pprofWriteTimeout = 10*time.Minute + 30*time.Second

// MetricsAddr is where --metrics-listen listens (nil: off).
func (c *Controller) MetricsAddr() net.Addr { return c.metricsAddr }

func metricsMux(h http.Handler, withPprof bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	if withPprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}
