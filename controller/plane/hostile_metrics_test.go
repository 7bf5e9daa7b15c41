package plane_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/internal/httpserve"
	"github.com/flotilla-dev/flotilla/internal/promtest"
)

// openFiles counts the open file descriptors of process pid.
func openFiles(t *testing.T, pid int) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("open files of pid %d: %v", pid, err)
	}
	return len(fds)
}

// TestHostileIdleMetricsConnections (issue 23, finding 6): 300 keep-alive
// connections that each ask once and then sit idle on the real controller's and
// the real agent's metrics listeners. Each process keeps at most the cap of
// connections open (its open files stay bounded, not one per connection), a
// new scrape is answered at once, and the cap is logged.
func TestHostileIdleMetricsConnections(t *testing.T) {
	skipShort(t)
	const idle = 300
	ctlAddr, agentAddr := freeAddr(t), freeAddr(t)
	f := controllertest.StartWith(t, "--metrics-listen", ctlAddr)
	f.StartAgent("m1", "--metrics-listen", agentAddr, "--peer-listen", "", "--registry-listen", "")
	f.WaitOnline(30*time.Second, true, "m1")
	mustScrape(t, "http://"+agentAddr+"/metrics")

	for _, tc := range []struct {
		name string
		proc *controllertest.Proc
		addr string
	}{
		{"controller", f.Controller, ctlAddr},
		{"agent", f.Agents["m1"], agentAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := openFiles(t, tc.proc.PID())
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for i := range idle {
				c, err := net.DialTimeout("tcp", tc.addr, 5*time.Second)
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				conns = append(conns, c)
				// One request, answered with keep-alive; then nothing.
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.WriteString(c, "GET /idle HTTP/1.1\r\nHost: metrics\r\n\r\n"); err != nil {
					continue // closed for a later one
				}
				if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			after := openFiles(t, tc.proc.PID())
			// The cap, and a few files the process may open meanwhile.
			if limit := before + httpserve.MetricsMaxConns + 16; after > limit {
				t.Errorf("%s: %d open files after %d idle connections (%d before), want at most %d", tc.name, after, idle, before, limit)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			if _, err := promtest.Scrape(ctx, "http://"+tc.addr+"/metrics"); err != nil {
				t.Fatalf("%s: a scrape while %d idle connections wait: %v", tc.name, idle, err)
			}
			t.Logf("%s: %d open files before, %d after %d idle connections; a new scrape took %s",
				tc.name, before, after, idle, time.Since(start).Round(time.Millisecond))
			if out := tc.proc.Output(); !strings.Contains(out, "connection cap reached") {
				t.Errorf("%s: the cap is not logged:\n%s", tc.name, tc.proc.Tail())
			}
		})
	}
}
