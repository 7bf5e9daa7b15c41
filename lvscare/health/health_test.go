package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestStateObserve(t *testing.T) {
	tests := []struct {
		name        string
		fall, rise  int
		results     string // o = ok, x = failed
		wantUp      string // membership after each result
		wantChanges int
	}{
		{"first ok decides up", 2, 2, "o", "U", 1},
		{"first failure decides down", 2, 2, "x", "D", 1},
		{"one lost probe does not flap", 2, 2, "oxoxo", "UUUUU", 1},
		{"fall after two failures", 2, 2, "oxx", "UUD", 2},
		{"rise after two successes", 2, 2, "xoo", "DDU", 2},
		{"interrupted rise starts over", 2, 3, "xooxooo", "DDDDDDU", 2},
		{"fall 1 rise 1 follows every check", 1, 1, "oxox", "UDUD", 4},
		{"fall 3", 3, 1, "oxxxo", "UUUDU", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s State
			changes := 0
			for i, r := range tt.results {
				if s.Observe(r == 'o', tt.fall, tt.rise) {
					changes++
				}
				want := tt.wantUp[i] == 'U'
				if s.Up != want {
					t.Fatalf("after %q: up=%v, want %v", tt.results[:i+1], s.Up, want)
				}
			}
			if changes != tt.wantChanges {
				t.Errorf("changes = %d, want %d", changes, tt.wantChanges)
			}
		})
	}
}

// fakeProber fails for the backends in down and blocks for those in slow until ctx ends.
// No probe answers before together probes have been in flight at once (or its ctx ends),
// so a checker that probes one backend after another shows up in maxSeen.
type fakeProber struct {
	down, slow map[netip.AddrPort]bool
	together   int32
	allIn      chan struct{}
	once       sync.Once
	inflight   atomic.Int32
	maxSeen    atomic.Int32
}

func (f *fakeProber) Probe(ctx context.Context, b netip.AddrPort) error {
	n := f.inflight.Add(1)
	defer f.inflight.Add(-1)
	for {
		m := f.maxSeen.Load()
		if n <= m || f.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	if n >= f.together {
		f.once.Do(func() { close(f.allIn) })
	}
	select {
	case <-f.allIn:
	case <-ctx.Done():
		return ctx.Err()
	}
	if f.slow[b] {
		<-ctx.Done()
		return ctx.Err()
	}
	if f.down[b] {
		return errors.New("down")
	}
	return nil
}

func TestCheckerRoundConcurrentWithTimeouts(t *testing.T) {
	a := netip.MustParseAddrPort("10.0.0.1:80")
	b := netip.MustParseAddrPort("10.0.0.2:80")
	c := netip.MustParseAddrPort("10.0.0.3:80")
	p := &fakeProber{down: map[netip.AddrPort]bool{b: true}, slow: map[netip.AddrPort]bool{c: true}, together: 3, allIn: make(chan struct{})}
	ch := &Checker{Prober: p, Timeout: 200 * time.Millisecond, Fall: 2, Rise: 2}
	start := time.Now()
	res := ch.Round(context.Background(), []netip.AddrPort{a, b, c})
	took := time.Since(start)
	if took > time.Second {
		t.Errorf("round took %s: the slow backend's timeout (200ms) did not bound it", took)
	}
	if p.maxSeen.Load() != 3 {
		t.Errorf("at most %d probes ran at once, want all 3 concurrently", p.maxSeen.Load())
	}
	wantUp := map[netip.AddrPort]bool{a: true, b: false, c: false}
	for _, r := range res {
		if r.Up != wantUp[r.Backend] {
			t.Errorf("%s: up=%v, want %v (err %v)", r.Backend, r.Up, wantUp[r.Backend], r.Err)
		}
		if !r.Changed {
			t.Errorf("%s: first round must decide membership", r.Backend)
		}
	}
	// Forgetting: drop b, then bring it back; it starts fresh (first check decides).
	ch.Round(context.Background(), []netip.AddrPort{a})
	p.down = nil
	res = ch.Round(context.Background(), []netip.AddrPort{a, b})
	if !res[1].Up || !res[1].Changed {
		t.Errorf("re-added backend: %+v, want up and changed on its first check", res[1])
	}
}

func TestProbers(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer ok.Close()
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer tlsSrv.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer bad.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	ap := func(u string) netip.AddrPort { return netip.MustParseAddrPort(u[len("http://"):]) }
	aps := func(u string) netip.AddrPort { return netip.MustParseAddrPort(u[len("https://"):]) }
	tests := []struct {
		kind, path string
		target     netip.AddrPort
		wantOK     bool
	}{
		{"http", "/healthz", ap(ok.URL), true},
		{"http", "/other", ap(ok.URL), false},
		{"http", "/healthz", ap(bad.URL), false},
		{"http", "/healthz", closed, false},
		{"https", "/", aps(tlsSrv.URL), true},
		{"tcp", "", ap(ok.URL), true},
		{"tcp", "", closed, false},
	}
	for _, tt := range tests {
		p, err := NewProber(tt.kind, tt.path)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = p.Probe(ctx, tt.target)
		cancel()
		if (err == nil) != tt.wantOK {
			t.Errorf("%s %s%s: err=%v, want ok=%v", tt.kind, tt.target, tt.path, err, tt.wantOK)
		}
	}
	for _, bad := range [][2]string{{"udp", ""}, {"http", "healthz"}} {
		if _, err := NewProber(bad[0], bad[1]); err == nil {
			t.Errorf("NewProber(%q, %q): want an error", bad[0], bad[1])
		}
	}
}
