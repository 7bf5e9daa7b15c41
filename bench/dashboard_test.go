package bench

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestGrafanaDashboardNamesExist: every flotilla_ metric the Grafana
// dashboard (packaging/grafana/flotilla.json) queries is defined by the
// controller, the agent or lvscare, so a renamed metric cannot leave an empty
// panel behind.
func TestGrafanaDashboardNamesExist(t *testing.T) {
	data, err := os.ReadFile("../packaging/grafana/flotilla.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("flotilla.json: %v", err)
	}
	var defined strings.Builder
	for _, f := range []string{"../controller/plane/metrics.go", "../agent/metrics.go", "../lvscare/metrics.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		defined.Write(b)
	}
	name := regexp.MustCompile(`flotilla_[a-z0-9_]+`)
	n := 0
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range name.FindAllString(tg.Expr, -1) {
				base := m
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					base = strings.TrimSuffix(base, suf)
				}
				n++
				if !strings.Contains(defined.String(), `"`+base+`"`) {
					t.Errorf("panel %q queries %s, which no metrics.go defines", p.Title, m)
				}
			}
		}
	}
	if n == 0 {
		t.Error("the dashboard queries no flotilla_ metric")
	}
}
