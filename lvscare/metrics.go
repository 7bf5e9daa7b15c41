package lvscare

import (
	"io"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
)

// Metrics holds lvscare's Prometheus collectors, on a registry of its own.
type Metrics struct {
	reg        *prometheus.Registry
	up         *prometheus.GaugeVec
	checks     *prometheus.CounterVec
	failures   *prometheus.CounterVec
	changes    *prometheus.CounterVec
	reconciles *prometheus.CounterVec
	dataplane  string
}

// NewMetrics returns empty metrics for the named dataplane.
func NewMetrics(dataplane string) *Metrics {
	m := &Metrics{
		reg:       prometheus.NewRegistry(),
		dataplane: dataplane,
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flotilla_lvscare_backend_up",
			Help: "1 when the backend receives new connections, 0 when the health check removed it."}, []string{"vip", "backend"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_lvscare_health_checks_total",
			Help: "Health checks run against the backend."}, []string{"vip", "backend"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_lvscare_health_check_failures_total",
			Help: "Health checks that failed."}, []string{"vip", "backend"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_lvscare_membership_changes_total",
			Help: "Times the backend was added to or removed from the VIP."}, []string{"vip", "backend", "change"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flotilla_lvscare_reconciles_total",
			Help: "Dataplane reconciliations by result (changed includes re-creating flushed rules)."}, []string{"dataplane", "result"}),
	}
	m.reg.MustRegister(m.up, m.checks, m.failures, m.changes, m.reconciles)
	for _, r := range []string{"unchanged", "changed", "error"} {
		m.reconciles.WithLabelValues(dataplane, r)
	}
	return m
}

// Registry is the registry the metrics are on (to serve or gather them).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveCheck records one health check and its effect on membership.
func (m *Metrics) ObserveCheck(vip, backend string, ok, up, changed bool) {
	m.checks.WithLabelValues(vip, backend).Inc()
	failures := m.failures.WithLabelValues(vip, backend)
	added, removed := m.changes.WithLabelValues(vip, backend, "added"), m.changes.WithLabelValues(vip, backend, "removed")
	if !ok {
		failures.Inc()
	}
	v := 0.0
	if up {
		v = 1
	}
	m.up.WithLabelValues(vip, backend).Set(v)
	if changed {
		if up {
			added.Inc()
		} else {
			removed.Inc()
		}
	}
}

// ObserveReconcile counts one reconcile by result: unchanged, changed or error.
func (m *Metrics) ObserveReconcile(result string) {
	m.reconciles.WithLabelValues(m.dataplane, result).Inc()
}

// WriteTo writes all metrics in the Prometheus text exposition format.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	mfs, err := m.reg.Gather()
	if err != nil {
		return 0, err
	}
	var n int64
	for _, mf := range mfs {
		k, err := expfmt.MetricFamilyToText(w, mf)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// ServeHTTP serves the metrics at any path it is mounted on.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}
