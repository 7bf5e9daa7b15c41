package clusterfile

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// maxRange bounds one IP range so that a typo cannot expand to millions of hosts.
const maxRange = 65536

// Host is one entry of spec.hosts: a set of agents and the roles and env they get.
type Host struct {
	Names    []Name            // agents by name, IP or IP range (empty if Selector is used)
	Selector map[string]string // agents whose labels hold every pair (empty if Names is used)
	Roles    []string
	Env      map[string]string // overrides spec.env on these hosts
	Line     int               // line of the entry, for errors
	// Infra is set on the entries Parse adds for spec.infra's machines (one per
	// role, after spec.hosts); Line is then the role's line in spec.infra.
	Infra bool
}

// Name is one element of a host entry's names: an agent name, an IP or an IP range.
type Name struct {
	Raw   string     // as written
	Addr  netip.Addr // set for an IP
	First netip.Addr // set for a range (inclusive)
	Last  netip.Addr
}

// IsRange reports whether n is an IP range.
func (n Name) IsRange() bool { return n.First.IsValid() }

// Matches reports whether an agent with this name and these IPs is meant by n.
func (n Name) Matches(agent string, ips []netip.Addr) bool {
	switch {
	case n.IsRange():
		for _, ip := range ips {
			if ip.BitLen() == n.First.BitLen() && n.First.Compare(ip) <= 0 && ip.Compare(n.Last) <= 0 {
				return true
			}
		}
		return false
	case n.Addr.IsValid():
		for _, ip := range ips {
			if ip == n.Addr {
				return true
			}
		}
		return agent == n.Raw
	}
	return agent == n.Raw
}

// MatchesLabels reports whether labels hold every pair of the selector.
func (h Host) MatchesLabels(labels map[string]string) bool {
	if len(h.Selector) == 0 {
		return false
	}
	for k, v := range h.Selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, err
	}
	return a.Unmap(), nil
}

// parseName reads `10.0.0.11`, `10.0.0.11-10.0.0.19`, `10.0.0.11-19` or an agent name.
func parseName(s string) (Name, error) {
	if a, err := parseAddr(s); err == nil {
		return Name{Raw: s, Addr: a}, nil
	}
	lo, hi, ok := strings.Cut(s, "-")
	first, err := parseAddr(lo)
	if !ok || err != nil {
		if !nameRe.MatchString(s) {
			return Name{}, fmt.Errorf("%q is neither an IP, an IP range nor an agent name", s)
		}
		return Name{Raw: s}, nil
	}
	var last netip.Addr
	if n, err := strconv.Atoi(hi); err == nil && first.Is4() {
		if n < 0 || n > 255 {
			return Name{}, fmt.Errorf("range %q: last octet %d is out of 0-255", s, n)
		}
		b := first.As4()
		b[3] = byte(n)
		last = netip.AddrFrom4(b)
	} else if last, err = parseAddr(hi); err != nil {
		return Name{}, fmt.Errorf("range %q: %q is neither an IP nor a last octet", s, hi)
	}
	if first.BitLen() != last.BitLen() {
		return Name{}, fmt.Errorf("range %q mixes IPv4 and IPv6", s)
	}
	if last.Less(first) {
		return Name{}, fmt.Errorf("range %q ends before it starts", s)
	}
	n := 0
	for a := first; a != last; a = a.Next() {
		if n++; n >= maxRange {
			return Name{}, fmt.Errorf("range %q holds more than %d addresses", s, maxRange)
		}
	}
	return Name{Raw: s, First: first, Last: last}, nil
}

func (p *parser) hosts(n *yaml.Node, field string) []Host {
	if n.Kind != yaml.SequenceNode {
		p.errf(n, field, "must be a list, not %s", describe(n))
		return nil
	}
	var out []Host
	type where struct {
		field string
		line  int
	}
	names := map[string]where{} // agent names and single IPs
	var ranges []struct {       // ranges, for overlap checks
		name  Name
		where where
	}
	for i, hn := range n.Content {
		hf := fmt.Sprintf("%s[%d]", field, i)
		h := Host{Line: hn.Line}
		var sawRoles bool
		p.fields(hn, hf, map[string]func(*yaml.Node, string){
			"names": func(v *yaml.Node, f string) {
				for j, raw := range p.strList(v, f) {
					nf := fmt.Sprintf("%s[%d]", f, j)
					if raw == "" {
						continue
					}
					nm, err := parseName(raw)
					if err != nil {
						p.errf(v, nf, "%v", err)
						continue
					}
					here := where{nf, v.Line}
					if v.Kind == yaml.SequenceNode {
						here.line = v.Content[j].Line
					}
					if nm.IsRange() {
						for _, r := range ranges {
							if !(nm.Last.Less(r.name.First) || r.name.Last.Less(nm.First)) {
								p.errf(v, nf, "duplicate host: range %s overlaps %s at %s (line %d)", raw, r.name.Raw, r.where.field, r.where.line)
							}
						}
						for k, w := range names {
							if a, err := parseAddr(k); err == nil && nm.Matches("", []netip.Addr{a}) {
								p.errf(v, nf, "duplicate host: range %s includes %s listed at %s (line %d)", raw, k, w.field, w.line)
							}
						}
						ranges = append(ranges, struct {
							name  Name
							where where
						}{nm, here})
					} else {
						key := nm.Raw
						if nm.Addr.IsValid() {
							key = nm.Addr.String()
						}
						if w, dup := names[key]; dup {
							p.errf(v, nf, "duplicate host: %s is already listed at %s (line %d)", raw, w.field, w.line)
						}
						for _, r := range ranges {
							if nm.Addr.IsValid() && r.name.Matches("", []netip.Addr{nm.Addr}) {
								p.errf(v, nf, "duplicate host: %s is already in range %s at %s (line %d)", raw, r.name.Raw, r.where.field, r.where.line)
							}
						}
						names[key] = here
					}
					h.Names = append(h.Names, nm)
				}
			},
			"selector": func(v *yaml.Node, f string) {
				h.Selector = p.strMap(v, f, nil, "")
				if len(h.Selector) == 0 {
					p.errf(v, f, "is empty: it would match every agent; list the labels to match")
				}
			},
			"roles": func(v *yaml.Node, f string) {
				sawRoles = true
				seen := map[string]bool{}
				for j, r := range p.strList(v, f) {
					rf := fmt.Sprintf("%s[%d]", f, j)
					switch {
					case r == "":
					case !roleRe.MatchString(r):
						p.errf(v, rf, "%q is not a valid role name (lower-case letters, digits and '-')", r)
					case seen[r]:
						p.errf(v, rf, "role %q is listed twice", r)
					default:
						seen[r] = true
						h.Roles = append(h.Roles, r)
					}
				}
			},
			"env": func(v *yaml.Node, f string) {
				h.Env = p.strMap(v, f, envKeyRe.MatchString, "environment variable name")
			},
		})
		if hn.Kind == yaml.MappingNode {
			switch {
			case len(h.Names) == 0 && h.Selector == nil:
				p.errf(hn, hf, "names or selector is required")
			case len(h.Names) > 0 && h.Selector != nil:
				p.errf(hn, hf, "names and selector are exclusive: split them into two entries")
			}
			if !sawRoles || len(h.Roles) == 0 {
				p.errf(hn, hf+".roles", "missing: give each host at least one role (master, node or a role of the image)")
			}
		}
		out = append(out, h)
	}
	return out
}
