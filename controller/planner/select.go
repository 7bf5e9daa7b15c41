package planner

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/flotilla-dev/flotilla/controller/clusterfile"
)

// member is one agent selected by the Clusterfile, with the entry that selected it.
type member struct {
	agent Agent
	ip    string // the address the Clusterfile named, else the agent's first
	host  clusterfile.Host
	field string // spec.hosts[i]…, for errors
}

// selectHosts resolves every spec.hosts entry to agents, in Clusterfile order.
func selectHosts(c *clusterfile.Cluster, agents []Agent) ([]member, error) {
	var errs []error
	fail := func(line int, field, format string, args ...any) {
		errs = append(errs, &clusterfile.FieldError{File: c.File(), Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	byAgent := map[string]string{} // agent name -> field that selected it
	var out []member
	add := func(a Agent, ip, field string, h clusterfile.Host) {
		if prev, dup := byAgent[a.Name]; dup {
			fail(h.Line, field, "agent %s is already selected by %s: an agent belongs to one host entry", a.Name, prev)
			return
		}
		byAgent[a.Name] = field
		if ip == "" && len(a.IPs) > 0 {
			ip = a.IPs[0].String()
		}
		out = append(out, member{agent: a, ip: ip, host: h, field: field})
	}
	known := func() string {
		names := make([]string, 0, len(agents))
		for _, a := range agents {
			names = append(names, a.Name)
		}
		sort.Strings(names)
		if len(names) > 8 {
			names = append(names[:8], fmt.Sprintf("and %d more", len(agents)-8))
		}
		if len(names) == 0 {
			return "no agent has joined yet: run `flotilla token create` and bootstrap the nodes"
		}
		return "known agents: " + strings.Join(names, ", ") + "; see `flotilla nodes`"
	}
	for i, h := range c.Hosts {
		hf := fmt.Sprintf("spec.hosts[%d]", i)
		if len(h.Selector) > 0 {
			var hit []Agent
			for _, a := range agents {
				if h.MatchesLabels(a.Labels) {
					hit = append(hit, a)
				}
			}
			if len(hit) == 0 {
				fail(h.Line, hf+".selector", "matches no agent (%s)", known())
			}
			sort.Slice(hit, func(x, y int) bool { return hit[x].Name < hit[y].Name })
			for _, a := range hit {
				add(a, "", hf+".selector", h)
			}
			continue
		}
		for j, n := range h.Names {
			nf := fmt.Sprintf("%s.names[%d]", hf, j)
			switch {
			case n.IsRange():
				type hitIP struct {
					a  Agent
					ip netip.Addr
				}
				var hit []hitIP
				var claimed []string
				for _, a := range agents {
					for _, ip := range a.VerifiedIPs {
						if n.Matches("", []netip.Addr{ip}) {
							hit = append(hit, hitIP{a, ip})
							break
						}
					}
					if !slices.ContainsFunc(hit, func(x hitIP) bool { return x.a.Name == a.Name }) &&
						slices.ContainsFunc(a.IPs, func(ip netip.Addr) bool { return n.Matches("", []netip.Addr{ip}) }) {
						claimed = append(claimed, a.Name)
					}
				}
				// A claim alone selects nothing; it is worth an error only
				// where it would explain an empty range.
				switch {
				case len(hit) == 0 && len(claimed) > 0:
					fail(h.Line, nf, "range %s: %s", n.Raw, unverified(claimed))
				case len(hit) == 0:
					fail(h.Line, nf, "range %s matches no agent (%s)", n.Raw, known())
				}
				sort.Slice(hit, func(x, y int) bool { return hit[x].ip.Less(hit[y].ip) })
				for _, x := range hit {
					add(x.a, x.ip.String(), nf, h)
				}
			default:
				var byName, byIP []Agent
				var claimed []string
				for _, a := range agents {
					switch {
					case a.Name == n.Raw:
						byName = append(byName, a)
					case n.Addr.IsValid() && slices.Contains(a.VerifiedIPs, n.Addr):
						byIP = append(byIP, a)
					case n.Addr.IsValid() && slices.Contains(a.IPs, n.Addr):
						claimed = append(claimed, a.Name)
					}
				}
				ip := ""
				if n.Addr.IsValid() {
					ip = n.Addr.String()
				}
				switch {
				case len(byName) == 1:
					add(byName[0], ip, nf, h)
				case len(byIP) == 0 && len(claimed) > 0:
					fail(h.Line, nf, "%s: %s", n.Raw, unverified(claimed))
				case len(byIP) == 1:
					add(byIP[0], ip, nf, h)
				case len(byIP) > 1:
					names := make([]string, len(byIP))
					for k, a := range byIP {
						names[k] = a.Name
					}
					fail(h.Line, nf, "%s is the address of several agents (%s): name the agent instead", n.Raw, strings.Join(names, ", "))
				default:
					fail(h.Line, nf, "%s matches no agent (%s)", n.Raw, known())
				}
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// unverified says that agents claim an address the controller has not
// verified, and how to make it select them.
func unverified(names []string) string {
	sort.Strings(names)
	what := "agent " + names[0] + " reports this address"
	if len(names) > 1 {
		what = "agents " + strings.Join(names, ", ") + " report this address"
	}
	return what + " but the controller has not verified it (an address selects a host only when the node's join or NATS connection came from it, " +
		"or an admin pinned it): check the node, then `flotilla nodes address " + names[0] + " --pin ADDRESS`, or name the agent instead; " +
		"`flotilla nodes -o json` shows each node's verified addresses"
}
