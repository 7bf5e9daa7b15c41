package lvscare

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/lvscare/dataplane"
)

// fakeDataplane records every desired state it is asked to enforce.
type fakeDataplane struct {
	mu       sync.Mutex
	calls    [][]dataplane.Service
	failFrom int // fail calls with index >= failFrom (0: never)
	cleaned  bool
}

func (f *fakeDataplane) Name() string { return "fake" }
func (f *fakeDataplane) Reconcile(_ context.Context, s []dataplane.Service) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, dataplane.Normalize(s))
	if f.failFrom > 0 && len(f.calls) >= f.failFrom {
		return false, errors.New("kernel said no")
	}
	return true, nil
}
func (f *fakeDataplane) Clean(context.Context) error { f.cleaned = true; return nil }

// last returns the backends of the first service in the latest call.
func (f *fakeDataplane) last() ([]netip.AddrPort, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return nil, 0
	}
	return f.calls[len(f.calls)-1][0].Backends, len(f.calls)
}

// switchProber fails the backends marked down.
type switchProber struct {
	mu   sync.Mutex
	down map[netip.AddrPort]bool
}

func (p *switchProber) set(b netip.AddrPort, down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down[b] = down
}

func (p *switchProber) Probe(_ context.Context, b netip.AddrPort) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down[b] {
		return errors.New("down")
	}
	return nil
}

func testConfig() Config {
	c := Config{Services: []ServiceConfig{{VIP: "10.103.97.2:2379", Backends: []string{"10.0.0.11:2379", "10.0.0.12:2379"}}}}
	c.Health.Interval.Duration = 20 * time.Millisecond
	c.Health.Timeout.Duration = 10 * time.Millisecond
	return c
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if err := poll.Until(context.Background(), 5*time.Second, 5*time.Millisecond, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func TestRunFollowsHealthAndLeavesRulesOnStop(t *testing.T) {
	a, b := netip.MustParseAddrPort("10.0.0.11:2379"), netip.MustParseAddrPort("10.0.0.12:2379")
	dp := &fakeDataplane{}
	p := &switchProber{down: map[netip.AddrPort]bool{}}
	r, err := NewRunner(testConfig(), dp, quiet, WithProber(p))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitUntil(t, "both backends programmed", func() bool { got, _ := dp.last(); return slices.Equal(got, []netip.AddrPort{a, b}) })
	// The dataplane is asked every interval even with nothing to change: that is what repairs drift.
	_, n := dp.last()
	waitUntil(t, "reconciles on every tick", func() bool { _, m := dp.last(); return m >= n+3 })
	p.set(b, true)
	waitUntil(t, "b removed after fall", func() bool { got, _ := dp.last(); return slices.Equal(got, []netip.AddrPort{a}) })
	p.set(a, true)
	waitUntil(t, "empty backend list when all are down", func() bool { got, _ := dp.last(); return got != nil && len(got) == 0 })
	p.set(a, false)
	p.set(b, false)
	waitUntil(t, "both back after rise", func() bool { got, _ := dp.last(); return len(got) == 2 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if dp.cleaned {
		t.Error("stopping cleaned the dataplane; rules must stay in place")
	}
	var sb strings.Builder
	r.Metrics().WriteTo(&sb)
	if !strings.Contains(sb.String(), `flotilla_lvscare_membership_changes_total{vip="10.103.97.2:2379",backend="10.0.0.12:2379",change="removed"} 1`) {
		t.Errorf("metrics do not count b's removal:\n%s", sb.String())
	}
}

func TestRunFirstReconcileErrorIsFatalLaterOnesAreRetried(t *testing.T) {
	r, err := NewRunner(testConfig(), &fakeDataplane{failFrom: 1}, quiet, WithProber(&switchProber{down: map[netip.AddrPort]bool{}}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Run(ctx); err == nil {
		t.Fatal("first reconcile failed but Run returned nil")
	}
	dp := &fakeDataplane{failFrom: 2}
	r, _ = NewRunner(testConfig(), dp, quiet, WithProber(&switchProber{down: map[netip.AddrPort]bool{}}))
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if err := r.Run(ctx2); err != nil {
		t.Fatalf("later reconcile errors must be retried, Run returned %v", err)
	}
	if _, n := dp.last(); n < 3 {
		t.Errorf("%d reconcile attempts in 200ms at a 20ms interval, want retries", n)
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))
