package clusterfile

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/flotilla-dev/flotilla/internal/human"
	"go.yaml.in/yaml/v3"
)

// Infra is spec.infra: machines an infrastructure provider creates for the
// cluster, by count per role, instead of (or besides) hosts that exist:
//
//	spec:
//	  infra:
//	    provider: sandbox
//	    roles:
//	      master: {count: 3}
//	      node: {count: 2, cpus: 1, memory: 512Mi}
//
// Machine i (1-based) of role r is named <cluster>-<r>-<i>; Parse adds one
// host entry per role to Cluster.Hosts (Host.Infra set) after spec.hosts, so
// the planner sees them like any named host.
type Infra struct {
	Provider string
	Roles    []InfraRole // in file order
	Line     int
}

// InfraRole is one count group of spec.infra.roles.
type InfraRole struct {
	Role   string
	Count  int
	CPUs   float64 // 0: the provider's default
	Memory int64   // bytes; 0: the provider's default
	Line   int
}

// Machine is one machine spec.infra asks for.
type Machine struct {
	Name   string
	Role   string
	Index  int // 1-based within its role
	CPUs   float64
	Memory int64
}

// MaxMachinesPerRole bounds one count so that a typo cannot order a thousand machines.
const MaxMachinesPerRole = 256

var providerRe = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// hostLabelRe is what a cluster name must look like when machine host names derive from it.
var hostLabelRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// MachineName is the name (host name and agent name) of machine i of role in cluster.
func MachineName(cluster, role string, i int) string {
	return fmt.Sprintf("%s-%s-%d", cluster, role, i)
}

// Machines lists every machine spec.infra asks for, role by role in file
// order, by index; nil without spec.infra.
func (c *Cluster) Machines() []Machine {
	if c.Infra == nil {
		return nil
	}
	var out []Machine
	for _, r := range c.Infra.Roles {
		for i := 1; i <= r.Count; i++ {
			out = append(out, Machine{Name: MachineName(c.Name, r.Role, i), Role: r.Role, Index: i, CPUs: r.CPUs, Memory: r.Memory})
		}
	}
	return out
}

func (p *parser) infra(n *yaml.Node, field string) *Infra {
	in := &Infra{Line: n.Line}
	var sawProvider, sawRoles bool
	p.fields(n, field, map[string]func(*yaml.Node, string){
		"provider": func(v *yaml.Node, f string) {
			sawProvider = true
			in.Provider = p.str(v, f)
			if in.Provider != "" && !providerRe.MatchString(in.Provider) {
				p.errf(v, f, "%q is not a provider name (e.g. sandbox)", in.Provider)
			}
		},
		"roles": func(v *yaml.Node, f string) {
			sawRoles = true
			if v.Kind != yaml.MappingNode {
				p.errf(v, f, "must be a mapping of role to {count, cpus, memory}, not %s", describe(v))
				return
			}
			seen := map[string]bool{}
			for i := 0; i+1 < len(v.Content); i += 2 {
				k, rv := v.Content[i], v.Content[i+1]
				rf := join(f, k.Value)
				switch {
				case !roleRe.MatchString(k.Value):
					p.errf(k, rf, "%q is not a valid role name (lower-case letters, digits and '-')", k.Value)
					continue
				case k.Value == "master0" || k.Value == "all":
					p.errf(k, rf, "role %q is not assigned by hand: use master (the first master is master0) or another role", k.Value)
					continue
				case seen[k.Value]:
					p.errf(k, rf, "appears twice")
					continue
				}
				seen[k.Value] = true
				in.Roles = append(in.Roles, p.infraRole(k.Value, rv, rf))
			}
		},
	})
	if n.Kind != yaml.MappingNode {
		return nil
	}
	if !sawProvider {
		p.errf(n, join(field, "provider"), "missing: name the infrastructure provider (e.g. sandbox)")
	}
	if !sawRoles {
		p.errf(n, join(field, "roles"), "missing: give a count per role, e.g. roles: {master: {count: 3}}")
	}
	return in
}

func (p *parser) infraRole(role string, n *yaml.Node, field string) InfraRole {
	r := InfraRole{Role: role, Line: n.Line}
	var sawCount bool
	p.fields(n, field, map[string]func(*yaml.Node, string){
		"count": func(v *yaml.Node, f string) {
			sawCount = true
			r.Count = p.integer(v, f, 0)
			if r.Count > MaxMachinesPerRole {
				p.errf(v, f, "%d machines: at most %d per role", r.Count, MaxMachinesPerRole)
				r.Count = 0
			}
		},
		"cpus": func(v *yaml.Node, f string) {
			s := p.str(v, f)
			c, err := strconv.ParseFloat(s, 64)
			if err != nil || c <= 0 || c > 1024 || math.IsNaN(c) {
				p.errf(v, f, "%q is not a CPU count (a number above 0, e.g. 1 or 0.5)", s)
				return
			}
			r.CPUs = c
		},
		"memory": func(v *yaml.Node, f string) {
			s := p.str(v, f)
			m, err := parseMemory(s)
			if err != nil {
				p.errf(v, f, "%v", err)
				return
			}
			r.Memory = m
		},
	})
	if n.Kind == yaml.MappingNode && !sawCount {
		p.errf(n, join(field, "count"), "missing: how many machines of role %s", role)
	}
	return r
}

// parseMemory reads 512Mi, 2Gi (Kubernetes style) or 512MiB, 2GB; at least 32 MiB.
func parseMemory(s string) (int64, error) {
	t := strings.TrimSpace(s)
	for _, k := range []string{"Ki", "Mi", "Gi"} {
		if strings.HasSuffix(t, k) {
			t += "B"
			break
		}
	}
	m, err := human.ParseBytes(t)
	if err != nil {
		return 0, fmt.Errorf("%q is not a memory size (e.g. 512Mi, 2Gi)", s)
	}
	if m < 32<<20 {
		return 0, fmt.Errorf("%q is less than 32Mi: too little for a machine", s)
	}
	return m, nil
}

// addInfraHosts appends one host entry per role of spec.infra to c.Hosts and
// checks that no machine name is also listed in spec.hosts.
func (p *parser) addInfraHosts(c *Cluster) {
	if c.Infra == nil {
		return
	}
	if c.Name != "" && !hostLabelRe.MatchString(c.Name) {
		p.errs = append(p.errs, &FieldError{File: p.file, Line: c.Infra.Line, Field: "spec.infra",
			Msg: fmt.Sprintf("the cluster name %q becomes part of machine host names (<cluster>-<role>-<i>): use only a-z, 0-9 and '-' in metadata.name", c.Name)})
		return
	}
	listed := map[string]bool{}
	for _, h := range c.Hosts {
		for _, n := range h.Names {
			listed[n.Raw] = true
		}
	}
	for _, r := range c.Infra.Roles {
		if r.Count == 0 {
			continue
		}
		h := Host{Roles: []string{r.Role}, Line: r.Line, Infra: true}
		for i := 1; i <= r.Count; i++ {
			name := MachineName(c.Name, r.Role, i)
			if len(name) > 63 {
				p.errs = append(p.errs, &FieldError{File: p.file, Line: r.Line, Field: "spec.infra.roles." + r.Role,
					Msg: fmt.Sprintf("machine name %q is longer than a host name may be (63): shorten the cluster or role name", name)})
				return
			}
			if listed[name] {
				p.errs = append(p.errs, &FieldError{File: p.file, Line: r.Line, Field: "spec.infra.roles." + r.Role,
					Msg: fmt.Sprintf("machine %s is also listed in spec.hosts: a host is either listed or created", name)})
				continue
			}
			h.Names = append(h.Names, Name{Raw: name})
		}
		c.Hosts = append(c.Hosts, h)
	}
}
