// Package promtest scrapes a Prometheus text endpoint and reads samples off
// it, for tests and benchmarks that check metrics of real processes.
package promtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Samples are the metric families of one scrape, by name.
type Samples map[string]*dto.MetricFamily

// Scrape GETs url (http://HOST:PORT/metrics) and parses the text format.
func Scrape(ctx context.Context, url string) (Samples, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("scrape %s: %s: %s", url, resp.Status, b)
	}
	return Parse(resp.Body)
}

// Parse reads the Prometheus text format.
func Parse(r io.Reader) (Samples, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return Samples(mfs), nil
}

// Sum adds the values of every sample of family name whose labels hold all
// pairs of match ("k=v"; a value ending in "*" matches by prefix). Counters
// and gauges give their value, histograms and summaries their count.
func (s Samples) Sum(name string, match ...string) float64 {
	mf := s[name]
	if mf == nil {
		return 0
	}
	var sum float64
	for _, m := range mf.GetMetric() {
		if !matches(m, match) {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Untyped != nil:
			sum += m.Untyped.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		case m.Summary != nil:
			sum += float64(m.Summary.GetSampleCount())
		}
	}
	return sum
}

// HistogramSum adds the sums (not counts) of the matching histogram samples.
func (s Samples) HistogramSum(name string, match ...string) float64 {
	mf := s[name]
	if mf == nil {
		return 0
	}
	var sum float64
	for _, m := range mf.GetMetric() {
		if m.Histogram != nil && matches(m, match) {
			sum += m.Histogram.GetSampleSum()
		}
	}
	return sum
}

// Has reports whether family name was exposed.
func (s Samples) Has(name string) bool { return s[name] != nil }

func matches(m *dto.Metric, match []string) bool {
	for _, kv := range match {
		k, v, _ := strings.Cut(kv, "=")
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() != k {
				continue
			}
			if p, ok := strings.CutSuffix(v, "*"); ok {
				found = strings.HasPrefix(l.GetValue(), p)
			} else {
				found = l.GetValue() == v
			}
		}
		if !found {
			return false
		}
	}
	return true
}
