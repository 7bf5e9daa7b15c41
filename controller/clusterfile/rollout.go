package clusterfile

import (
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/internal/bandwidth"

	"go.yaml.in/yaml/v3"
)

// On-failure policies.
const (
	OnFailureHalt     = "halt"     // start no new node after a failure
	OnFailureContinue = "continue" // keep going; report every failure at the end
)

// Defaults for spec.rollout fields left out.
const (
	DefaultStepTimeout       = 10 * time.Minute
	DefaultRetries           = 2
	DefaultMasterParallelism = 1 // masters one at a time: quorum first
	DefaultNodeParallelism   = 5
)

// Rollout is spec.rollout: how many nodes at once and what to do on failure.
type Rollout struct {
	// MaxUnavailable caps the nodes being changed at once across the cluster: a count, or a
	// percentage of the cluster's hosts when MaxUnavailablePercent is set. 0 = no cap.
	MaxUnavailable        int
	MaxUnavailablePercent bool
	// Parallelism per phase (master0, master, node or a custom role); "" holds the single
	// number given as `parallelism: N`.
	Parallelism map[string]int
	OnFailure   string        // OnFailureHalt or OnFailureContinue
	StepTimeout time.Duration // for steps that give no timeout of their own
	Retries     int           // retries of a transient failure (node briefly offline)
}

func defaultRollout() Rollout {
	return Rollout{OnFailure: OnFailureHalt, StepTimeout: DefaultStepTimeout, Retries: DefaultRetries}
}

// ParallelismFor returns how many nodes of a phase run at once, given the number of
// hosts in the cluster: the phase's own value, else the single value, else the default
// (1 for masters, 5 for others), then capped by maxUnavailable. Always at least 1.
func (r Rollout) ParallelismFor(phase string, clusterHosts int) int {
	n, ok := r.Parallelism[phase]
	if !ok && phase == "master0" {
		n, ok = 1, true
	}
	if !ok {
		n, ok = r.Parallelism[""]
	}
	if !ok {
		n = DefaultNodeParallelism
		if phase == "master" {
			n = DefaultMasterParallelism
		}
	}
	if mu := r.MaxUnavailableOf(clusterHosts); mu > 0 && n > mu {
		n = mu
	}
	return max(n, 1)
}

// MaxUnavailableOf resolves maxUnavailable for a cluster of total hosts (0: no cap).
func (r Rollout) MaxUnavailableOf(total int) int {
	if !r.MaxUnavailablePercent {
		return r.MaxUnavailable
	}
	return max(1, total*r.MaxUnavailable/100)
}

func (p *parser) rollout(n *yaml.Node, field string) Rollout {
	r := defaultRollout()
	p.fields(n, field, map[string]func(*yaml.Node, string){
		"maxUnavailable": func(v *yaml.Node, f string) {
			if v.Kind == yaml.ScalarNode && strings.HasSuffix(v.Value, "%") {
				pc, err := strconv.Atoi(strings.TrimSuffix(v.Value, "%"))
				if err != nil || pc < 1 || pc > 100 {
					p.errf(v, f, "%q is not a percentage between 1%% and 100%%", v.Value)
					return
				}
				r.MaxUnavailable, r.MaxUnavailablePercent = pc, true
				return
			}
			r.MaxUnavailable = p.integer(v, f, 1)
		},
		"parallelism": func(v *yaml.Node, f string) {
			r.Parallelism = map[string]int{}
			if v.Kind == yaml.ScalarNode {
				r.Parallelism[""] = p.integer(v, f, 1)
				return
			}
			if v.Kind != yaml.MappingNode {
				p.errf(v, f, "must be a number or a mapping of phase to number, not %s", describe(v))
				return
			}
			for i := 0; i+1 < len(v.Content); i += 2 {
				k, val := v.Content[i], v.Content[i+1]
				kf := join(f, k.Value)
				if !roleRe.MatchString(k.Value) {
					p.errf(k, kf, "%q is not a phase name (master0, master, node or a role of the image)", k.Value)
					continue
				}
				if _, dup := r.Parallelism[k.Value]; dup {
					p.errf(k, kf, "appears twice")
					continue
				}
				r.Parallelism[k.Value] = p.integer(val, kf, 1)
			}
		},
		"onFailure": func(v *yaml.Node, f string) {
			s := p.str(v, f)
			if s != OnFailureHalt && s != OnFailureContinue {
				p.errf(v, f, "%q is not %s or %s", s, OnFailureHalt, OnFailureContinue)
				return
			}
			r.OnFailure = s
		},
		"stepTimeout": func(v *yaml.Node, f string) {
			s := p.str(v, f)
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				p.errf(v, f, "%q is not a positive duration like 90s or 10m", s)
				return
			}
			r.StepTimeout = d
		},
		"retries": func(v *yaml.Node, f string) { r.Retries = p.integer(v, f, 0) },
	})
	return r
}

// Bandwidth is spec.bandwidth: per-node limits for layer distribution, in bytes per
// second (0 = unlimited). Parsed and validated here; used by peer-to-peer distribution.
type Bandwidth struct {
	Upload   int64
	Download int64
}

func (p *parser) bandwidth(n *yaml.Node, field string) Bandwidth {
	var b Bandwidth
	p.fields(n, field, map[string]func(*yaml.Node, string){
		"upload":   func(v *yaml.Node, f string) { b.Upload = p.rate(v, f) },
		"download": func(v *yaml.Node, f string) { b.Download = p.rate(v, f) },
	})
	return b
}

func (p *parser) rate(n *yaml.Node, field string) int64 {
	s := p.str(n, field)
	if s == "" {
		return 0
	}
	v, err := bandwidth.Parse(s)
	if err != nil {
		p.errf(n, field, "%v", err)
	}
	return int64(v)
}
