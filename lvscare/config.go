// Package lvscare keeps a virtual IP pointing at healthy backends: it health-checks them
// with fall/rise hysteresis and reconciles a kernel dataplane (nftables or IPVS) every interval.
package lvscare

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/flotilla-dev/flotilla/lvscare/health"
)

// Config is everything lvscare needs; the YAML file and the flags fill the same struct.
type Config struct {
	// Services are the VIPs this lvscare serves. The command's --vip/--rs make one.
	Services []ServiceConfig `json:"services"`
	Health   HealthConfig    `json:"health"`
	// Dataplane is auto, nftables or ipvs; auto picks IPVS where the kernel has it.
	Dataplane string `json:"dataplane,omitempty"`
	// MetricsListen is an address for Prometheus text metrics at /metrics; empty: none.
	MetricsListen string `json:"metricsListen,omitempty"`
}

// ServiceConfig is one VIP and its backends ("real servers").
type ServiceConfig struct {
	VIP      string   `json:"vip"`
	Backends []string `json:"backends"`
	// FromFlags makes errors name --vip and --rs instead of the file's field paths.
	FromFlags bool `json:"-"`
}

// HealthConfig says how backends are checked.
type HealthConfig struct {
	Protocol string   `json:"protocol,omitempty"` // http, https or tcp
	Path     string   `json:"path,omitempty"`     // for http and https
	Interval Duration `json:"interval,omitempty"`
	Timeout  Duration `json:"timeout,omitempty"`
	Fall     int      `json:"fall,omitempty"`
	Rise     int      `json:"rise,omitempty"`
}

// Duration is a time.Duration written as "2s" in YAML and JSON.
type Duration struct{ time.Duration }

// UnmarshalJSON accepts "1.5s" or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if err2 := json.Unmarshal(b, &secs); err2 != nil {
			return fmt.Errorf("duration %s: want a string like \"2s\"", b)
		}
		d.Duration = time.Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// Defaults are Sealer's lvscare defaults, with fall/rise hysteresis added.
var Defaults = HealthConfig{Protocol: "http", Path: "/healthz", Interval: Duration{2 * time.Second}, Timeout: Duration{time.Second}, Fall: 2, Rise: 2}

// LoadConfig reads a YAML (or JSON) config file; unknown fields are errors.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read lvscare config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses YAML (or JSON) config bytes; unknown fields are errors.
func ParseConfig(b []byte) (Config, error) {
	var c Config
	err := yaml.UnmarshalStrict(b, &c)
	return c, err
}

// WithDefaults fills unset health fields and the dataplane from Defaults.
func (c Config) WithDefaults() Config {
	h := &c.Health
	if h.Protocol == "" {
		h.Protocol = Defaults.Protocol
	}
	if h.Path == "" && h.Protocol != "tcp" {
		h.Path = Defaults.Path
	}
	if h.Interval.Duration == 0 {
		h.Interval = Defaults.Interval
	}
	if h.Timeout.Duration == 0 {
		h.Timeout = Defaults.Timeout
	}
	if h.Fall == 0 {
		h.Fall = Defaults.Fall
	}
	if h.Rise == 0 {
		h.Rise = Defaults.Rise
	}
	if c.Dataplane == "" {
		c.Dataplane = "auto"
	}
	return c
}

// Service is a validated ServiceConfig.
type Service struct {
	VIP      netip.AddrPort
	Backends []netip.AddrPort
}

// Validate checks the whole config without touching the system and returns the parsed services.
// Errors name the field, the bad value and what is expected.
func (c Config) Validate() ([]Service, error) {
	switch c.Dataplane {
	case "auto", "nftables", "ipvs":
	default:
		return nil, fmt.Errorf("dataplane %q: want auto, nftables or ipvs", c.Dataplane)
	}
	h := c.Health
	if _, err := health.NewProber(h.Protocol, h.Path); err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	if h.Interval.Duration <= 0 || h.Timeout.Duration <= 0 {
		return nil, fmt.Errorf("health: interval %s and timeout %s must both be positive", h.Interval, h.Timeout)
	}
	if h.Timeout.Duration > h.Interval.Duration {
		return nil, fmt.Errorf("health: timeout %s is longer than interval %s: checks would overlap; lower --timeout", h.Timeout, h.Interval)
	}
	if h.Fall < 1 || h.Rise < 1 {
		return nil, fmt.Errorf("health: fall %d and rise %d must be at least 1", h.Fall, h.Rise)
	}
	if c.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return nil, fmt.Errorf("metrics listen %q: want HOST:PORT, e.g. 127.0.0.1:9273: %w", c.MetricsListen, err)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return nil, fmt.Errorf("metrics listen %q: port %q is not a number", c.MetricsListen, port)
		}
	}
	if len(c.Services) == 0 {
		return nil, fmt.Errorf("no service: give --vip and at least one --rs, or services in the config file")
	}
	var out []Service
	seen := map[netip.AddrPort]int{}
	for i, sc := range c.Services {
		field := fmt.Sprintf("services[%d]", i)
		vipField := field + ".vip"
		rsField := func(k int) string { return fmt.Sprintf("%s.backends[%d]", field, k) }
		if sc.FromFlags {
			vipField = "--vip"
			rsField = func(k int) string { return fmt.Sprintf("--rs #%d", k+1) }
		}
		v, err := parseAddrPort(sc.VIP)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", vipField, err)
		}
		if j, dup := seen[v]; dup {
			return nil, fmt.Errorf("%s %s: already served by services[%d]", vipField, v, j)
		}
		seen[v] = i
		if len(sc.Backends) == 0 {
			return nil, fmt.Errorf("%s %s: no backend: give at least one --rs IP:PORT", vipField, v)
		}
		s := Service{VIP: v}
		dup := map[netip.AddrPort]bool{}
		for k, bs := range sc.Backends {
			b, err := parseAddrPort(bs)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", rsField(k), err)
			}
			if b.Addr() == v.Addr() {
				return nil, fmt.Errorf("%s %s: the backend is the VIP itself; a VIP must be an address no backend uses", rsField(k), b)
			}
			if b.Addr().Is4() != v.Addr().Is4() {
				return nil, fmt.Errorf("%s %s: VIP %s is another IP family", rsField(k), b, v)
			}
			if dup[b] {
				return nil, fmt.Errorf("%s %s: listed twice", rsField(k), b)
			}
			dup[b] = true
			s.Backends = append(s.Backends, b)
		}
		out = append(out, s)
	}
	return out, nil
}

func parseAddrPort(s string) (netip.AddrPort, error) {
	s = strings.TrimSpace(s)
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return ap, fmt.Errorf("%q is not IP:PORT (e.g. 10.103.97.2:2379 or [fd00::2]:2379): %w", s, err)
	}
	if ap.Port() == 0 {
		return ap, fmt.Errorf("%q: port 0 is not a service port", s)
	}
	if ap.Addr().Zone() != "" {
		return ap, fmt.Errorf("%q: zoned addresses are not supported", s)
	}
	a := ap.Addr().Unmap()
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return ap, fmt.Errorf("%q: want a unicast, non-loopback address", s)
	}
	return netip.AddrPortFrom(a, ap.Port()), nil
}
