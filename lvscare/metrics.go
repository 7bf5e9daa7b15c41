package lvscare

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
)

// Metrics holds lvscare's counters and renders them in the Prometheus text format.
type Metrics struct {
	mu         sync.Mutex
	dataplane  string
	backends   map[backendKey]*backendStats
	reconciles map[string]uint64 // result -> count
}

type backendKey struct{ vip, backend string }

type backendStats struct {
	up       bool
	checks   uint64
	failures uint64
	added    uint64
	removed  uint64
}

// NewMetrics returns empty metrics for the named dataplane.
func NewMetrics(dataplane string) *Metrics {
	return &Metrics{dataplane: dataplane, backends: map[backendKey]*backendStats{}, reconciles: map[string]uint64{}}
}

func (m *Metrics) stats(vip, backend string) *backendStats {
	k := backendKey{vip, backend}
	s := m.backends[k]
	if s == nil {
		s = &backendStats{}
		m.backends[k] = s
	}
	return s
}

// ObserveCheck records one health check and its effect on membership.
func (m *Metrics) ObserveCheck(vip, backend string, ok, up, changed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.stats(vip, backend)
	s.checks++
	if !ok {
		s.failures++
	}
	s.up = up
	if changed {
		if up {
			s.added++
		} else {
			s.removed++
		}
	}
}

// ObserveReconcile counts one reconcile by result: unchanged, changed or error.
func (m *Metrics) ObserveReconcile(result string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reconciles[result]++
}

// WriteTo writes all metrics in the Prometheus text exposition format.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var sb strings.Builder
	keys := make([]backendKey, 0, len(m.backends))
	for k := range m.backends {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b backendKey) int {
		return strings.Compare(a.vip+" "+a.backend, b.vip+" "+b.backend)
	})
	family := func(name, typ, help string, value func(*backendStats) string) {
		fmt.Fprintf(&sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
		for _, k := range keys {
			fmt.Fprintf(&sb, "%s{vip=%q,backend=%q} %s\n", name, k.vip, k.backend, value(m.backends[k]))
		}
	}
	family("flotilla_lvscare_backend_up", "gauge", "1 when the backend receives new connections, 0 when the health check removed it.",
		func(s *backendStats) string {
			if s.up {
				return "1"
			}
			return "0"
		})
	family("flotilla_lvscare_health_checks_total", "counter", "Health checks run against the backend.",
		func(s *backendStats) string { return fmt.Sprint(s.checks) })
	family("flotilla_lvscare_health_check_failures_total", "counter", "Health checks that failed.",
		func(s *backendStats) string { return fmt.Sprint(s.failures) })
	name := "flotilla_lvscare_membership_changes_total"
	fmt.Fprintf(&sb, "# HELP %s Times the backend was added to or removed from the VIP.\n# TYPE %s counter\n", name, name)
	for _, k := range keys {
		s := m.backends[k]
		fmt.Fprintf(&sb, "%s{vip=%q,backend=%q,change=\"added\"} %d\n", name, k.vip, k.backend, s.added)
		fmt.Fprintf(&sb, "%s{vip=%q,backend=%q,change=\"removed\"} %d\n", name, k.vip, k.backend, s.removed)
	}
	name = "flotilla_lvscare_reconciles_total"
	fmt.Fprintf(&sb, "# HELP %s Dataplane reconciliations by result (changed includes re-creating flushed rules).\n# TYPE %s counter\n", name, name)
	for _, r := range []string{"unchanged", "changed", "error"} {
		fmt.Fprintf(&sb, "%s{dataplane=%q,result=%q} %d\n", name, m.dataplane, r, m.reconciles[r])
	}
	n, err := io.WriteString(w, sb.String())
	return int64(n), err
}

// ServeHTTP serves the metrics at any path it is mounted on.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = m.WriteTo(w)
}
