package lvscare_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNftablesInNamespaces runs the real binary with the nftables dataplane in a client
// namespace in front of three HTTP backends, and walks through a backend's death and
// return, a flushed table, all backends down, a restart with another backend list,
// --clean and bad input. It logs the failover and recovery times the README quotes.
func TestNftablesInNamespaces(t *testing.T) {
	l := newLab(t)
	b1, b2, b3 := l.backends[0], l.backends[1], l.backends[2]
	common := []string{"--vip", vip, "--health", "http", "--health-path", "/healthz",
		"--interval", interval.String(), "--timeout", "900ms", "--fall", fmt.Sprint(fall), "--rise", fmt.Sprint(rise),
		"--dataplane", "nftables", "--log-level", "debug"}
	// The VIP is inside the client's on-link subnet: until lvscare's route and rules
	// exist, a SYN would wait for ARP, so wait for the table before the first request.
	p := l.lvscare(append(common, "--rs", b1.addr, "--rs", b2.addr, "--rs", b3.addr, "--metrics-listen", "127.0.0.1:9273")...)
	if took, ok := waitFor(5*time.Second, func() bool {
		_, err := tryRun("ip", "netns", "exec", l.client, "nft", "list", "table", "ip", "flotilla-lvscare")
		return err == nil
	}); !ok {
		t.Fatalf("no nftables table %s after lvscare started:\n%s", took, p.out.String())
	} else {
		t.Logf("table programmed %s after lvscare started", took.Round(time.Millisecond))
	}
	if took, ok := waitFor(5*time.Second, func() bool { _, err := l.getVIP(); return err == nil }); !ok {
		t.Fatalf("VIP never answered after lvscare started (%s)", took)
	} else {
		t.Logf("VIP answers %s after lvscare started", took.Round(time.Millisecond))
	}

	t.Run("requests reach all three backends, local and forwarded", func(t *testing.T) {
		got := l.spread(t, l.client, 60)
		for _, b := range l.backends {
			if got[b.name] == 0 {
				t.Errorf("locally originated: backend %s got none of 60 requests: %v", b.name, got)
			}
		}
		fwd := l.spread(t, l.fwd, 60)
		for _, b := range l.backends {
			if fwd[b.name] == 0 {
				t.Errorf("forwarded: backend %s got none of 60 requests: %v", b.name, fwd)
			}
		}
		rules := l.nft(t, "list", "table", "ip", "flotilla-lvscare")
		for _, want := range []string{"numgen random mod 3", "dnat to " + b1.addr, "masquerade", "type nat hook output", "type nat hook prerouting"} {
			if !strings.Contains(rules, want) {
				t.Errorf("nft list table lacks %q:\n%s", want, rules)
			}
		}
		m, err := l.get(l.client, "http://127.0.0.1:9273/metrics")
		if err != nil {
			t.Fatalf("metrics: %v", err)
		}
		for _, b := range l.backends {
			want := fmt.Sprintf("flotilla_lvscare_backend_up{vip=%q,backend=%q} 1", vip, b.addr)
			if !strings.Contains(m, want) {
				t.Errorf("metrics lack %q:\n%s", want, m)
			}
		}
	})

	t.Run("a dead backend stops failing requests after fall x interval", func(t *testing.T) {
		bound := time.Duration(fall)*interval + time.Second
		died := time.Now()
		b2.stop()
		var lastFail time.Duration
		failures, after := 0, 0
		for time.Since(died) < bound+2*time.Second {
			_, err := l.getVIP()
			if err != nil {
				failures++
				lastFail = time.Since(died)
				if lastFail > bound {
					after++
					t.Errorf("request failed %s after the backend died (bound %s): %v", lastFail.Round(time.Millisecond), bound, err)
				}
			}
			time.Sleep(10 * time.Millisecond) // paces the requests whose failures this measures
		}
		t.Logf("MEASURED backend death -> last failed request: %s (%d failed requests; bound fall*interval+1s = %s)",
			lastFail.Round(time.Millisecond), failures, bound)
	})

	t.Run("a returning backend serves again within rise x interval", func(t *testing.T) {
		bound := time.Duration(rise)*interval + time.Second
		b2.start(t)
		took, ok := waitFor(bound+2*time.Second, func() bool {
			body, err := l.getVIP()
			return err == nil && body == b2.name
		})
		if !ok || took > bound {
			t.Errorf("returned backend served its first request after %s, bound %s (served=%v)", took, bound, ok)
		}
		t.Logf("MEASURED backend return -> first served request: %s (bound rise*interval+1s = %s)", took.Round(time.Millisecond), bound)
	})

	t.Run("rules flushed or deleted by hand come back within one interval", func(t *testing.T) {
		for _, how := range [][]string{{"flush", "table", "ip", "flotilla-lvscare"}, {"delete", "table", "ip", "flotilla-lvscare"}} {
			l.nft(t, how...)
			took, ok := waitFor(interval+2*time.Second, func() bool {
				out, err := tryRun("ip", "netns", "exec", l.client, "nft", "list", "table", "ip", "flotilla-lvscare")
				return err == nil && strings.Contains(out, "dnat to") && strings.Contains(out, "vmap @service-ips")
			})
			// lvscare checks at every tick, so the rules are back one interval after the
			// edit at worst; the extra second absorbs a CI machine shared with other tests.
			if !ok || took > interval+time.Second {
				t.Errorf("after nft %v: rules back after %s (ok=%v), want within one interval (%s) plus 1s of slack", how, took, ok, interval)
			}
			t.Logf("MEASURED nft %s -> rules re-created: %s", strings.Join(how, " "), took.Round(time.Millisecond))
			if got := l.spread(t, l.client, 30); len(got) != 3 {
				t.Errorf("after re-creation, 30 requests reached %v, want all three", got)
			}
		}
	})

	t.Run("with every backend down new connections are refused at once", func(t *testing.T) {
		for _, b := range l.backends {
			b.stop()
		}
		time.Sleep(time.Duration(fall)*interval + time.Second) // past the bound the health checker promises: the state being measured
		var slowest time.Duration
		for range 5 {
			start := time.Now()
			_, err := l.getVIP()
			took := time.Since(start)
			if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("request with all backends down: err=%v, want connection refused", err)
			}
			// ECONNREFUSED already proves a reset rather than a hang (a hang ends in the
			// client's 1s timeout); the bound only catches a refusal that came late.
			if took > 900*time.Millisecond {
				t.Errorf("refusal took %s, want it at once", took)
			}
			slowest = max(slowest, took)
		}
		t.Logf("MEASURED all backends down -> new connection refused in at most %s", slowest.Round(100*time.Microsecond))
		if rules := l.nft(t, "list", "table", "ip", "flotilla-lvscare"); !strings.Contains(rules, "reject with tcp reset") {
			t.Errorf("no reject rule with all backends down:\n%s", rules)
		}
		for _, b := range l.backends {
			b.start(t)
		}
		if took, ok := waitFor(time.Duration(rise)*interval+3*time.Second, func() bool {
			got, err := l.trySpread(l.client, 30)
			return err == nil && len(got) == 3
		}); !ok {
			t.Fatalf("backends not all back after %s", took)
		}
	})

	t.Run("SIGTERM leaves the rules and traffic flowing", func(t *testing.T) {
		if err := p.stop(t); err != nil {
			t.Fatalf("lvscare exit after SIGTERM: %v, want 0", err)
		}
		if got := l.spread(t, l.client, 30); len(got) != 3 {
			t.Errorf("with lvscare stopped, requests reached %v, want all three", got)
		}
	})

	t.Run("a backend dropped from the config gets no new connections", func(t *testing.T) {
		cfg := filepath.Join(t.TempDir(), "lvscare.yaml")
		body := fmt.Sprintf("services:\n  - vip: %s\n    backends: [%s, %s]\nhealth: {protocol: tcp, interval: %s, timeout: 900ms, fall: %d, rise: %d}\ndataplane: nftables\n",
			vip, b1.addr, b3.addr, interval, fall, rise)
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		p2 := l.lvscare("--config", cfg)
		if _, ok := waitFor(interval+2*time.Second, func() bool {
			return !strings.Contains(l.nft(t, "list", "table", "ip", "flotilla-lvscare"), b2.addr)
		}); !ok {
			t.Fatalf("removed backend %s still in the rules:\n%s", b2.addr, l.nft(t, "list", "table", "ip", "flotilla-lvscare"))
		}
		b2.hits.Store(0)
		got := l.spread(t, l.client, 60)
		if b2.hits.Load() != 0 || got[b1.name] == 0 || got[b3.name] == 0 {
			t.Errorf("after dropping %s: answers %v, %s hits %d; want only b1 and b3", b2.name, got, b2.name, b2.hits.Load())
		}
		if err := p2.stop(t); err != nil {
			t.Errorf("lvscare exit after SIGTERM: %v", err)
		}
	})

	t.Run("--clean leaves no table and no route", func(t *testing.T) {
		out := run(t, "ip", "netns", "exec", l.client, l.bin, "lvscare", "--clean", "--dataplane", "nftables")
		if rs := l.nft(t, "list", "ruleset"); strings.Contains(rs, "flotilla-lvscare") {
			t.Errorf("table left after --clean (%s):\n%s", out, rs)
		}
		if routes := run(t, "ip", "-n", l.client, "route", "show", "table", "all"); strings.Contains(routes, "proto 249") {
			t.Errorf("VIP route left after --clean:\n%s", routes)
		}
	})

	t.Run("bad input is refused before anything changes", func(t *testing.T) {
		tests := []struct {
			name string
			args []string
			want string
		}{
			{"malformed vip", []string{"--vip", "10.77.70.250", "--rs", b1.addr}, "is not IP:PORT"},
			{"malformed backend", []string{"--vip", vip, "--rs", "10.77.70.11:http"}, `--rs #1: "10.77.70.11:http" is not IP:PORT`},
			{"vip equal to a backend", []string{"--vip", vip, "--rs", b1.addr, "--rs", vip}, "the backend is the VIP itself"},
			{"unknown dataplane", []string{"--vip", vip, "--rs", b1.addr, "--dataplane", "iptables"}, `dataplane "iptables"`},
		}
		for _, tt := range tests {
			cmd := exec.Command("ip", append([]string{"netns", "exec", l.client, l.bin, "lvscare"}, tt.args...)...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Errorf("%s: err=%v, want exit code 2\n%s", tt.name, err, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Errorf("%s: output %q lacks %q", tt.name, out, tt.want)
			}
		}
		if rs := l.nft(t, "list", "ruleset"); strings.TrimSpace(rs) != "" {
			t.Errorf("bad input changed the ruleset:\n%s", rs)
		}
		if routes := run(t, "ip", "-n", l.client, "route", "show", "table", "all"); strings.Contains(routes, "proto 249") {
			t.Errorf("bad input added a route:\n%s", routes)
		}
	})
}
