package lvscare

import (
	"github.com/flotilla-dev/flotilla/internal/promtest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	good := func() Config {
		return Config{Services: []ServiceConfig{{VIP: "10.103.97.2:2379", Backends: []string{"10.0.0.11:2379", "10.0.0.12:2379"}}}}.WithDefaults()
	}
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr string // empty: valid
	}{
		{"good", func(*Config) {}, ""},
		{"ipv6", func(c *Config) {
			c.Services[0] = ServiceConfig{VIP: "[fd00::2]:80", Backends: []string{"[fd00::11]:80"}}
		}, ""},
		{"malformed vip", func(c *Config) { c.Services[0].VIP = "10.103.97:2379" }, `services[0].vip: "10.103.97:2379" is not IP:PORT`},
		{"vip without port", func(c *Config) { c.Services[0].VIP = "10.103.97.2" }, "is not IP:PORT"},
		{"vip port 0", func(c *Config) { c.Services[0].VIP = "10.103.97.2:0" }, "port 0"},
		{"malformed backend", func(c *Config) { c.Services[0].Backends[1] = "10.0.0.300:2379" }, "services[0].backends[1]"},
		{"vip equals backend", func(c *Config) { c.Services[0].Backends[0] = "10.103.97.2:2379" }, "services[0].backends[0] 10.103.97.2:2379: the backend is the VIP itself"},
		{"flags name the flags", func(c *Config) { c.Services[0].FromFlags = true; c.Services[0].Backends[1] = "10.0.0.1" }, `--rs #2: "10.0.0.1" is not IP:PORT`},
		{"flags name --vip", func(c *Config) { c.Services[0].FromFlags = true; c.Services[0].VIP = "x" }, `--vip: "x" is not IP:PORT`},
		{"vip address equals backend on another port", func(c *Config) { c.Services[0].Backends[0] = "10.103.97.2:12379" }, "the backend is the VIP itself"},
		{"duplicate backend", func(c *Config) { c.Services[0].Backends[1] = "10.0.0.11:2379" }, "listed twice"},
		{"loopback backend", func(c *Config) { c.Services[0].Backends[1] = "127.0.0.1:2379" }, "non-loopback"},
		{"mixed families", func(c *Config) { c.Services[0].Backends[1] = "[fd00::1]:2379" }, "another IP family"},
		{"no backends", func(c *Config) { c.Services[0].Backends = nil }, "no backend"},
		{"no services", func(c *Config) { c.Services = nil }, "no service"},
		{"duplicate vip", func(c *Config) { c.Services = append(c.Services, c.Services[0]) }, "already served by services[0]"},
		{"unknown dataplane", func(c *Config) { c.Dataplane = "iptables" }, `dataplane "iptables": want auto, nftables or ipvs`},
		{"unknown health", func(c *Config) { c.Health.Protocol = "grpc" }, "want http, https or tcp"},
		{"timeout over interval", func(c *Config) { c.Health.Timeout.Duration = 5 * time.Second }, "lower --timeout"},
		{"fall 0", func(c *Config) { c.Health.Fall = -1 }, "at least 1"},
		{"metrics listen", func(c *Config) { c.MetricsListen = "9273" }, "want HOST:PORT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.edit(&c)
			svcs, err := c.Validate()
			if tt.wantErr == "" {
				if err != nil || len(svcs) == 0 {
					t.Fatalf("Validate: %v, %d services; want valid", err, len(svcs))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := write("ok.yaml", `
services:
  - vip: 10.103.97.2:2379
    backends:
      - 10.0.0.11:2379
      - 10.0.0.12:2379
health:
  protocol: https
  path: /health
  interval: 3s
  timeout: 500ms
  fall: 3
dataplane: nftables
metricsListen: 127.0.0.1:9273
`)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	c = c.WithDefaults()
	if _, err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Health.Interval.Duration != 3*time.Second || c.Health.Timeout.Duration != 500*time.Millisecond ||
		c.Health.Fall != 3 || c.Health.Rise != Defaults.Rise || c.Health.Protocol != "https" || c.Dataplane != "nftables" ||
		len(c.Services) != 1 || len(c.Services[0].Backends) != 2 {
		t.Errorf("loaded %+v", c)
	}
	if _, err := LoadConfig(write("typo.yaml", "service:\n  - vip: 10.0.0.1:80\n")); err == nil || !strings.Contains(err.Error(), "typo.yaml") {
		t.Errorf("unknown field: err = %v, want an error naming the file", err)
	}
	if _, err := LoadConfig(write("dur.yaml", "health: {interval: 2 seconds}\n")); err == nil {
		t.Error("bad duration: want an error")
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("missing file: want an error")
	}
}

func TestMetricsText(t *testing.T) {
	m := NewMetrics("nftables")
	m.ObserveCheck("10.0.0.1:80", "10.0.0.2:80", true, true, true)
	m.ObserveCheck("10.0.0.1:80", "10.0.0.2:80", false, true, false)
	m.ObserveCheck("10.0.0.1:80", "10.0.0.2:80", false, false, true)
	m.ObserveReconcile("changed")
	var sb strings.Builder
	if _, err := m.WriteTo(&sb); err != nil {
		t.Fatal(err)
	}
	got, err := promtest.Parse(strings.NewReader(sb.String()))
	if err != nil {
		t.Fatalf("%v:\n%s", err, sb.String())
	}
	vb := []string{"vip=10.0.0.1:80", "backend=10.0.0.2:80"}
	for _, c := range []struct {
		name  string
		match []string
		want  float64
	}{
		{"flotilla_lvscare_backend_up", vb, 0},
		{"flotilla_lvscare_health_checks_total", vb, 3},
		{"flotilla_lvscare_health_check_failures_total", vb, 2},
		{"flotilla_lvscare_membership_changes_total", append(vb, "change=added"), 1},
		{"flotilla_lvscare_membership_changes_total", append(vb, "change=removed"), 1},
		{"flotilla_lvscare_reconciles_total", []string{"dataplane=nftables", "result=changed"}, 1},
		{"flotilla_lvscare_reconciles_total", []string{"dataplane=nftables", "result=error"}, 0},
	} {
		if !got.Has(c.name) {
			t.Errorf("metrics lack %s:\n%s", c.name, sb.String())
		} else if v := got.Sum(c.name, c.match...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.match, v, c.want)
		}
	}
	if !strings.Contains(sb.String(), "# TYPE flotilla_lvscare_health_checks_total counter\n") {
		t.Errorf("metrics lack the counter type:\n%s", sb.String())
	}
}

// FuzzParseConfig: no config file, however broken, panics the parser or the validator,
// and whatever validates has only well-formed, distinct addresses.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("services:\n  - vip: 10.103.97.2:2379\n    backends: [10.0.0.11:2379, 10.0.0.12:2379]\nhealth: {protocol: tcp, interval: 2s}\n"))
	f.Add([]byte(`{"services":[{"vip":"[fd00::2]:80","backends":["[fd00::3]:80"]}],"dataplane":"ipvs"}`))
	f.Add([]byte("health: {interval: 1}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		svcs, err := c.WithDefaults().Validate()
		if err != nil {
			return
		}
		for _, s := range svcs {
			if !s.VIP.IsValid() || s.VIP.Port() == 0 || len(s.Backends) == 0 {
				t.Fatalf("validated a bad service %+v", s)
			}
			for _, bk := range s.Backends {
				if bk.Addr() == s.VIP.Addr() || bk.Port() == 0 {
					t.Fatalf("validated backend %s of %s", bk, s.VIP)
				}
			}
		}
	})
}
