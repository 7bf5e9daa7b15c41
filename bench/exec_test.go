package bench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
)

// BenchmarkExecAll measures `flotilla exec --all -- true` on 3 agents over
// loopback, end to end: CLI process start, TLS connect, admin request, signed
// dispatch, fork/exec on every agent, events back, summary. Target: < 100 ms.
func BenchmarkExecAll(b *testing.B) {
	f := controllertest.Start(b)
	names := []string{"b1", "b2", "b3"}
	for _, n := range names {
		f.StartAgent(n)
	}
	f.WaitOnline(30*time.Second, true, names...)
	ctx := context.Background()
	for b.Loop() {
		out, errOut, code := f.CLI(ctx, "exec", "--all", "--", "true")
		if code != 0 || !strings.Contains(out, "3 nodes: 3 ok") {
			b.Fatalf("exec: exit %d\n%s\n%s", code, out, errOut)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/exec")
}
