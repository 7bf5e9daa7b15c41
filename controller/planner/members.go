package planner

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Membership states, what a member's templates see as .Member.State.
const (
	// MemberNew: the node formed the role's membership with the first apply (etcd:
	// --initial-cluster-state new).
	MemberNew = "new"
	// MemberExisting: the node joined a running membership (etcd: existing).
	MemberExisting = "existing"
)

// PhaseEvict is the phase, first of all, of the members that leave while their
// machine is offline: the image's LEAVE commands run for them on a remaining member
// before any member joins (a dead member is replaced: removed first, then added).
const PhaseEvict = protocol.PhaseEvict

// MemberRecord is what a node's applied state keeps of its membership in a role
// whose membership the image manages (a quorum role, or one with JOIN or LEAVE).
// It is written before the JOIN that makes the node a member runs, so a resumed
// rollout neither forgets a member nor adds it twice.
type MemberRecord struct {
	Role  string   `json:"role"`
	IP    string   `json:"ip"`
	State string   `json:"state"` // MemberNew or MemberExisting
	Peers []string `json:"peers"` // the members (IPs) it was rendered with, itself included
	// Joined: the JOIN commands ran (or none were needed: a founding member).
	Joined bool `json:"joined,omitempty"`
	// Left: the LEAVE commands ran; the node is no member any more.
	Left bool `json:"left,omitempty"`
	// Leave are the node's rendered LEAVE commands, run on a remaining member when
	// it leaves (rendered while it is applied, like CLEANUP: a leaving node's host
	// entry is gone).
	Leave []Step `json:"-"`
}

// Membership is a node's part in its role's membership, in its plan.
type Membership struct {
	Role   string `json:"role"`
	Quorum bool   `json:"quorum,omitempty"`
	State  string `json:"state,omitempty"`
	// Peers are the members (IPs) the node's templates see as .Member.Peers.
	Peers []string `json:"peers,omitempty"`
	// Join are the JOIN commands to run on a member (one of Via) before the node's
	// own work; nil when it is a founding member or joined already.
	Join []Step `json:"join,omitempty"`
	// Leave are the LEAVE commands to run on a member (one of Via) after a leaving
	// node's removal (or instead of it when its machine is gone); nil when the node
	// stays, left already, or its whole role goes away.
	Leave []Step `json:"leave,omitempty"`
	// Via are the members that may run Join or Leave, in order of preference: the
	// role's members that stay, in plan order.
	Via []string `json:"via,omitempty"`
	// Record is what the node's applied state keeps (nil for a leaving node).
	Record *MemberRecord `json:"-"`
}

// MemberFacts are a member's facts in templates and commands (.Member).
type MemberFacts struct {
	Role  string
	State string   // MemberNew or MemberExisting
	Peers []string // IPs, itself included, in the order they became members
}

// roleMembers is the membership of one managed role as the planner sees it.
type roleMembers struct {
	role    string
	quorum  bool
	facts   map[string]*Membership // selected nodes of the role, by name
	leaving []string               // applied members no longer selected, by name
	via     []string               // the members that stay, in plan order
}

// planMembership works out every managed role's membership: which selected nodes
// found it, which join (and with which peers), which members leave; and refuses a
// change of a quorum role that would lose its quorum. members are the selected
// hosts in plan order.
func planMembership(in Input, members []member) (map[string]*roleMembers, error) {
	out := map[string]*roleMembers{}
	online := map[string]bool{}
	for _, a := range in.Agents {
		online[a.Name] = a.Online
	}
	var errs []error
	for _, role := range in.Image.Roles {
		if in.Image.MemberRole([]string{role}) != role {
			continue
		}
		rm := &roleMembers{role: role, quorum: in.Image.IsQuorum(role), facts: map[string]*Membership{}}
		out[role] = rm
		// The role's members before this apply, in name order.
		var existing []string
		for _, name := range slices.Sorted(maps.Keys(in.Applied)) {
			a := in.Applied[name]
			switch {
			case a.Member != nil && a.Member.Role == role && !a.Member.Left:
				existing = append(existing, name)
			case a.Member == nil && slices.Contains(a.Roles, role):
				existing = append(existing, name) // applied before memberships were recorded
			}
		}
		var selected []member
		for _, m := range members {
			if in.Image.MemberRole(m.host.Roles) == role {
				selected = append(selected, m)
			}
		}
		isSelected := map[string]bool{}
		for _, m := range selected {
			isSelected[m.agent.Name] = true
		}
		var kept, joining []string
		for _, name := range existing {
			if isSelected[name] {
				kept = append(kept, name)
			} else {
				rm.leaving = append(rm.leaving, name)
			}
		}
		for _, m := range selected {
			if !slices.Contains(existing, m.agent.Name) {
				joining = append(joining, m.agent.Name)
			}
		}
		if rm.quorum && len(existing) > 0 && len(selected) > 0 {
			if err := quorumCheck(in.File.Cluster.Name, role, existing, rm.leaving, kept, joining, online); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		// Via: the members that stay, in plan order.
		var via []string
		for _, m := range selected {
			a := in.Applied[m.agent.Name]
			if slices.Contains(kept, m.agent.Name) && (a.Member == nil || a.Member.Joined) {
				via = append(via, m.agent.Name)
			}
		}
		rm.via = via
		ipOf := func(name string) string {
			if a, ok := in.Applied[name]; ok && a.Member != nil && a.Member.IP != "" {
				return a.Member.IP
			}
			for _, m := range members {
				if m.agent.Name == name {
					return m.ip
				}
			}
			for _, a := range in.Agents {
				if a.Name == name && len(a.IPs) > 0 {
					return a.IPs[0].String()
				}
			}
			return ""
		}
		if len(existing) == 0 {
			// The role's first apply: every selected node founds the membership.
			var peers []string
			for _, m := range selected {
				peers = append(peers, m.ip)
			}
			for _, m := range selected {
				rec := &MemberRecord{Role: role, IP: m.ip, State: MemberNew, Peers: peers, Joined: true}
				rm.facts[m.agent.Name] = &Membership{Role: role, Quorum: rm.quorum, State: MemberNew, Peers: peers, Record: rec}
			}
			continue
		}
		// Members at the time of the first join: the members that stay and the online
		// ones that leave (they leave after the joins); offline leavers are evicted first.
		var current []string
		for _, name := range existing {
			if isSelected[name] || online[name] {
				current = append(current, ipOf(name))
			}
		}
		for _, m := range selected {
			name := m.agent.Name
			if a := in.Applied[name]; a.Member != nil && a.Member.Role == role && !a.Member.Left {
				rec := *a.Member
				rec.IP = cmp.Or(rec.IP, m.ip)
				ms := &Membership{Role: role, Quorum: rm.quorum, State: rec.State, Peers: rec.Peers, Record: &rec}
				if !rec.Joined {
					ms.Via = without(via, name) // recorded before its JOIN ran: run it (again)
				}
				rm.facts[name] = ms
				continue
			}
			if slices.Contains(existing, name) { // applied before memberships were recorded
				rec := &MemberRecord{Role: role, IP: m.ip, State: MemberNew, Peers: slices.Clone(current), Joined: true}
				rm.facts[name] = &Membership{Role: role, Quorum: rm.quorum, State: MemberNew, Peers: rec.Peers, Record: rec}
				continue
			}
			current = append(current, m.ip)
			peers := slices.Clone(current)
			rec := &MemberRecord{Role: role, IP: m.ip, State: MemberExisting, Peers: peers}
			rm.facts[name] = &Membership{Role: role, Quorum: rm.quorum, State: MemberExisting, Peers: peers, Via: via, Record: rec}
		}
		if len(via) == 0 {
			// Every member goes (the cluster is deleted, or the role dropped): nobody is
			// left to run LEAVE, and no quorum is left to keep.
			rm.leaving = nil
		}
	}
	return out, errors.Join(errs...)
}

// quorumCheck refuses a change of a quorum role's membership that would lose its
// quorum: removing a majority of its members in one apply, or adding members while
// one that stays is down.
func quorumCheck(cluster, role string, existing, leaving, kept, joining []string, online map[string]bool) error {
	n := len(existing)
	q := n/2 + 1
	if n-len(leaving) < q {
		return fmt.Errorf("cluster %s: role %s is a quorum role with %d members (quorum %d); this apply removes %d (%s), which leaves %d: fewer than a quorum of the members it has now. Remove at most %d member(s) per apply (%d → %d), or restore a backup into a new cluster",
			cluster, role, n, q, len(leaving), strings.Join(leaving, ", "), n-len(leaving), n-q, n, q)
	}
	var down []string
	for _, name := range kept {
		if !online[name] {
			down = append(down, name)
		}
	}
	if len(joining) > 0 && len(down) > 0 {
		return fmt.Errorf("cluster %s: role %s is a quorum role and member(s) %s are offline: adding %s now would raise the quorum while %d of %d members are down. Bring them back, or remove them from the Clusterfile first (a member whose machine is gone is removed from the membership, then its replacement joins)",
			cluster, role, strings.Join(down, ", "), strings.Join(joining, ", "), len(down), n)
	}
	return nil
}

func without(list []string, s string) []string {
	return slices.DeleteFunc(slices.Clone(list), func(x string) bool { return x == s })
}

// renderMemberSteps renders a role's JOIN or LEAVE commands for the node they are
// about (.Node is the node joining or leaving), to run on another member.
func renderMemberSteps(steps []recipe.Step, role string, c *clusterfile.Cluster, env map[string]string, data *Data) ([]Step, error) {
	var out []Step
	for _, s := range recipe.StepsOfRole(steps, role) {
		st, err := renderStep(&s, c, env, data, nil, nil, nil)
		if err != nil {
			return nil, err
		}
		out = append(out, *st)
	}
	return out, nil
}
