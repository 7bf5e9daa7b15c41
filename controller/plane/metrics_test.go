package plane_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/bundle/build"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/internal/promtest"
)

// TestMetricsAfterExecAndApply scrapes a real controller's and a real agent's
// /metrics (processes, --metrics-listen) before and after an exec and an
// apply, and checks that the figures moved as they should.
func TestMetricsAfterExecAndApply(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: starts processes")
	}
	ctx := context.Background()
	storeDir := filepath.Join(t.TempDir(), "store")
	st, err := store.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	imgDir := t.TempDir()
	os.WriteFile(filepath.Join(imgDir, "Kubefile"), []byte("FROM scratch\nON node RUN true\n"), 0o644)
	if _, err := build.Build(ctx, st, build.Options{ContextDir: imgDir, Tags: []string{"metrics:1"}}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLOTILLA_STORE", storeDir)
	ctlAddr, agentAddr := freeAddr(t), freeAddr(t)
	f := controllertest.StartWith(t, "--metrics-listen", ctlAddr)
	f.StartAgent("m1", "--metrics-listen", agentAddr, "--peer-listen", "", "--registry-listen", "")
	f.WaitOnline(30*time.Second, true, "m1")
	ctlURL, agentURL := "http://"+ctlAddr+"/metrics", "http://"+agentAddr+"/metrics"

	c0, a0 := mustScrape(t, ctlURL), mustScrape(t, agentURL)
	for name, want := range map[string]float64{"flotilla_nodes": 1, "flotilla_agent_connected": 1, "flotilla_agent_registered": 1} {
		s := c0
		if strings.HasPrefix(name, "flotilla_agent_") {
			s = a0
		}
		match := []string{}
		if name == "flotilla_nodes" {
			match = []string{"state=online"}
		}
		if got := s.Sum(name, match...); got != want {
			t.Errorf("%s%v = %v, want %v", name, match, got, want)
		}
	}
	if out, errOut, code := f.CLI(ctx, "exec", "--all", "--", "true"); code != 0 {
		t.Fatalf("exec: exit %d\n%s\n%s", code, out, errOut)
	}
	c1, a1 := mustScrape(t, ctlURL), mustScrape(t, agentURL)
	delta := []struct {
		s0, s1 promtest.Samples
		name   string
		match  []string
		want   float64
	}{
		{c0, c1, "flotilla_exec_fanout_seconds", nil, 1},
		{c0, c1, "flotilla_tasks_dispatched_total", []string{"result=accepted"}, 1},
		{a0, a1, "flotilla_agent_tasks_total", []string{"outcome=ok"}, 1},
		{a0, a1, "flotilla_agent_steps_total", []string{"kind=exec", "outcome=ok"}, 1},
		{a0, a1, "flotilla_agent_step_duration_seconds", []string{"kind=exec"}, 1},
	}
	checkDeltas := func(stage string) {
		t.Helper()
		for _, d := range delta {
			if got := d.s1.Sum(d.name, d.match...) - d.s0.Sum(d.name, d.match...); got != d.want {
				t.Errorf("after %s: %s%v grew by %v, want %v", stage, d.name, d.match, got, d.want)
			}
		}
	}
	checkDeltas("exec")
	if c1.Sum("flotilla_jetstream_stream_messages", "stream=KV_flotilla_nodes") < 1 {
		t.Errorf("flotilla_jetstream_stream_messages{stream=KV_flotilla_nodes} < 1")
	}
	if a1.Sum("flotilla_agent_heartbeats_total") < 1 {
		t.Errorf("flotilla_agent_heartbeats_total = 0")
	}

	cf := filepath.Join(t.TempDir(), "Clusterfile")
	os.WriteFile(cf, []byte("apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: m}\nspec:\n  image: metrics:1\n  hosts:\n    - {names: [m1], roles: [node]}\n"), 0o644)
	if out, errOut, code := f.CLI(ctx, "apply", "-f", cf); code != 0 {
		t.Fatalf("apply: exit %d\n%s\n%s", code, out, errOut)
	}
	c2, a2 := mustScrape(t, ctlURL), mustScrape(t, agentURL)
	delta = []struct {
		s0, s1 promtest.Samples
		name   string
		match  []string
		want   float64
	}{
		{c1, c2, "flotilla_rollouts_total", []string{"kind=apply", "outcome=done"}, 1},
		{c1, c2, "flotilla_rollout_duration_seconds", []string{"kind=apply"}, 1},
		{c1, c2, "flotilla_rollout_steps_total", []string{"kind=run", "outcome=ok"}, 1},
		{c1, c2, "flotilla_rollout_nodes_total", []string{"status=ok"}, 1},
		{a1, a2, "flotilla_agent_steps_total", []string{"kind=run", "outcome=ok"}, 1},
	}
	checkDeltas("apply")
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func mustScrape(t *testing.T, url string) promtest.Samples {
	t.Helper()
	var (
		s    promtest.Samples
		last error
	)
	scraped := func() bool { s, last = promtest.Scrape(context.Background(), url); return last == nil }
	if err := poll.Until(context.Background(), 10*time.Second, 100*time.Millisecond, scraped); err != nil {
		t.Fatalf("scrape %s: %v (%v)", url, last, err)
	}
	return s
}
