package planner

import (
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
)

const memberConf = `state: {{ .Member.State }}
peers: {{ range $i, $p := .Member.Peers }}{{ if $i }},{{ end }}{{ $p }}{{ end }}
`

// quorumImage is testImage whose masters form a quorum managed by JOIN and LEAVE,
// and whose member file is rendered from .Member (stable while others change).
func quorumImage() *recipe.Recipe {
	img := testImage()
	img.Templates[0].Content = memberConf
	img.Quorum = []string{recipe.RoleMaster}
	img.Join = []recipe.Step{{Role: recipe.RoleMaster, Kind: recipe.KindRun, Command: "member add {{ .Node.Name }} {{ .Node.IP }}", Line: 20}}
	img.Leave = []recipe.Step{{Role: recipe.RoleMaster, Kind: recipe.KindRun, Command: "member remove {{ .Node.IP }}", Line: 21}}
	return img
}

// appliedMembers is applied(p) with every member's membership recorded, as the
// engine leaves it after a successful apply.
func appliedMembers(p *ClusterPlan) map[string]Applied {
	out := applied(p)
	for _, n := range p.Nodes() {
		if a, ok := out[n.Node]; ok && n.Membership != nil && n.Membership.Record != nil {
			rec := *n.Membership.Record
			rec.Joined = true
			a.Member = &rec
			out[n.Node] = a
		}
	}
	return out
}

func masters(names string) string {
	return "    - {names: [" + names + "], roles: [master]}\n    - {names: [n1], roles: [node]}\n"
}

func offline(agents []Agent, name string) []Agent {
	out := slices.Clone(agents)
	for i := range out {
		if out[i].Name == name {
			out[i].Online = false
		}
	}
	return out
}

func joins(p *ClusterPlan) []string {
	var out []string
	for _, ph := range p.Phases {
		for _, n := range ph.Nodes {
			if ms := n.Membership; ms != nil {
				for _, s := range ms.Join {
					out = append(out, ph.Name+"/"+n.Node+" via "+strings.Join(ms.Via, ",")+": "+s.Command)
				}
				for _, s := range ms.Leave {
					out = append(out, ph.Name+"/"+n.Node+" via "+strings.Join(ms.Via, ",")+": "+s.Command)
				}
			}
		}
	}
	return out
}

func TestMembershipFormation(t *testing.T) {
	p := mustPlan(t, Input{File: cf(t, masters("m1, m2, m3")), Image: quorumImage(), ImageDigest: "sha256:aaaa", Agents: agents(3)})
	if got := joins(p); len(got) != 0 {
		t.Errorf("a first apply runs no JOIN or LEAVE: %q", got)
	}
	for _, name := range []string{"m1", "m2", "m3"} {
		ms := p.Node(name).Membership
		if ms == nil || ms.State != MemberNew || !slices.Equal(ms.Peers, []string{"10.0.0.11", "10.0.0.12", "10.0.0.13"}) || !ms.Quorum || !ms.Record.Joined {
			t.Fatalf("%s membership %+v", name, ms)
		}
		if c := string(p.Node(name).Files[0].Content); c != "state: new\npeers: 10.0.0.11,10.0.0.12,10.0.0.13\n" {
			t.Errorf("%s member file %q", name, c)
		}
	}
	if p.Node("n1").Membership != nil {
		t.Error("a worker is no member of the masters' quorum")
	}
	for _, ph := range p.Phases {
		if (ph.Name == "master" || ph.Name == "master0") != ph.Quorum || (ph.Quorum && ph.Parallelism != 1) {
			t.Errorf("phase %s quorum %v parallelism %d", ph.Name, ph.Quorum, ph.Parallelism)
		}
	}
}

func TestMembershipGrowAndShrink(t *testing.T) {
	in := Input{File: cf(t, masters("m1, m2, m3")), Image: quorumImage(), ImageDigest: "sha256:aaaa", Agents: agents(5)}
	in.Applied = appliedMembers(mustPlan(t, in))

	in.File = cf(t, masters("m1, m2, m3, m4, m5"))
	p := mustPlan(t, in)
	want := []string{"master/m4 via m1,m2,m3: member add m4 10.0.0.14", "master/m5 via m1,m2,m3: member add m5 10.0.0.15"}
	if got := joins(p); !slices.Equal(got, want) {
		t.Fatalf("3 → 5 joins\n got %q\nwant %q", got, want)
	}
	for _, c := range []struct{ node, state, peers string }{
		{"m1", "new", "10.0.0.11,10.0.0.12,10.0.0.13"},
		{"m4", "existing", "10.0.0.11,10.0.0.12,10.0.0.13,10.0.0.14"},
		{"m5", "existing", "10.0.0.11,10.0.0.12,10.0.0.13,10.0.0.14,10.0.0.15"},
	} {
		if got := string(p.Node(c.node).Files[0].Content); got != "state: "+c.state+"\npeers: "+c.peers+"\n" {
			t.Errorf("%s member file %q, want state %s peers %s", c.node, got, c.state, c.peers)
		}
	}
	for _, n := range []string{"m1", "m2", "m3"} {
		if a := p.Node(n).Action; a != ActionNoop {
			t.Errorf("%s: %s, want noop: a member's files do not change when others join", n, a)
		}
	}

	in.Applied = appliedMembers(p)
	in.File = cf(t, masters("m1, m2, m3"))
	p = mustPlan(t, in)
	want = []string{"remove/m4 via m1,m2,m3: member remove 10.0.0.14", "remove/m5 via m1,m2,m3: member remove 10.0.0.15"}
	if got := joins(p); !slices.Equal(got, want) {
		t.Fatalf("5 → 3 leaves\n got %q\nwant %q", got, want)
	}
	if p.Phases[0].Name == PhaseEvict {
		t.Error("online members leave in the remove phase, after their cleanup")
	}
}

func TestMembershipQuorumRefused(t *testing.T) {
	in := Input{File: cf(t, masters("m1, m2, m3")), Image: quorumImage(), ImageDigest: "sha256:aaaa", Agents: agents(5)}
	in.Applied = appliedMembers(mustPlan(t, in))
	cases := []struct{ name, masters, want string }{
		{"3 to 1", "m1", "role master is a quorum role with 3 members (quorum 2); this apply removes 2 (m2, m3), which leaves 1: fewer than a quorum"},
		{"majority replaced", "m1, m4, m5", "removes 2 (m2, m3), which leaves 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := in
			in.File = cf(t, masters(c.masters))
			_, err := Plan(in)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "Remove at most 1 member(s) per apply (3 → 2)") {
				t.Fatalf("error %v, want %q and the way out", err, c.want)
			}
		})
	}
	t.Run("one at a time is allowed", func(t *testing.T) {
		in := in
		in.File = cf(t, masters("m1, m2"))
		if _, err := Plan(in); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("joining while a kept member is down", func(t *testing.T) {
		in := in
		in.Agents = offline(in.Agents, "m3")
		in.File = cf(t, masters("m1, m2, m3, m4"))
		_, err := Plan(in)
		if err == nil || !strings.Contains(err.Error(), "member(s) m3 are offline: adding m4 now would raise the quorum while 1 of 3 members are down") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("deleting the cluster removes every member without LEAVE", func(t *testing.T) {
		in := in
		in.File = cf(t, "    - {names: [n1], roles: [node]}\n")
		p, err := Plan(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := joins(p); len(got) != 0 {
			t.Errorf("no member stays to run LEAVE: %q", got)
		}
	})
}

func TestMembershipDeadMemberReplaced(t *testing.T) {
	in := Input{File: cf(t, masters("m1, m2, m3")), Image: quorumImage(), ImageDigest: "sha256:aaaa", Agents: agents(4)}
	in.Applied = appliedMembers(mustPlan(t, in))
	in.Agents = offline(in.Agents, "m2")
	in.File = cf(t, masters("m1, m3, m4"))
	p := mustPlan(t, in)
	if p.Phases[0].Name != PhaseEvict || len(p.Phases[0].Nodes) != 1 || p.Phases[0].Nodes[0].Node != "m2" {
		t.Fatalf("first phase %+v, want evict of m2", p.Phases[0])
	}
	want := []string{"evict/m2 via m1,m3: member remove 10.0.0.12", "master/m4 via m1,m3: member add m4 10.0.0.14"}
	if got := joins(p); !slices.Equal(got, want) {
		t.Fatalf("\n got %q\nwant %q", got, want)
	}
	if ms := p.Node("m4").Membership; !slices.Equal(ms.Peers, []string{"10.0.0.11", "10.0.0.13", "10.0.0.14"}) {
		t.Errorf("the replacement starts with peers %v: the dead member is gone by then", ms.Peers)
	}
}

func TestMembershipResume(t *testing.T) {
	in := Input{File: cf(t, masters("m1, m2, m3")), Image: quorumImage(), ImageDigest: "sha256:aaaa", Agents: agents(4)}
	in.Applied = appliedMembers(mustPlan(t, in))
	in.File = cf(t, masters("m1, m2, m3, m4"))
	p := mustPlan(t, in)
	rec := *p.Node("m4").Membership.Record // what the engine writes before the JOIN runs

	t.Run("recorded before its JOIN ran: JOIN again, same peers", func(t *testing.T) {
		in := in
		in.Applied = appliedMembers(mustPlan(t, Input{File: cf(t, masters("m1, m2, m3")), Image: quorumImage(), ImageDigest: "sha256:aaaa", Agents: agents(4)}))
		in.Applied["m4"] = Applied{Roles: []string{"master"}, Member: &rec}
		p := mustPlan(t, in)
		ms := p.Node("m4").Membership
		if len(ms.Join) != 1 || !slices.Equal(ms.Via, []string{"m1", "m2", "m3"}) || !slices.Equal(ms.Peers, rec.Peers) || p.Node("m4").Action != ActionCreate {
			t.Fatalf("m4 after a cut-off JOIN: %+v action %s", ms, p.Node("m4").Action)
		}
	})
	t.Run("joined: no second JOIN", func(t *testing.T) {
		in := in
		in.Applied = appliedMembers(mustPlan(t, Input{File: cf(t, masters("m1, m2, m3")), Image: quorumImage(), ImageDigest: "sha256:aaaa", Agents: agents(4)}))
		done := rec
		done.Joined = true
		in.Applied["m4"] = Applied{Roles: []string{"master"}, Member: &done}
		if got := joins(mustPlan(t, in)); len(got) != 0 {
			t.Fatalf("a joined member joins again: %q", got)
		}
	})
	t.Run("left: no second LEAVE", func(t *testing.T) {
		in := in
		in.Applied = appliedMembers(p)
		m4 := in.Applied["m4"]
		left := *m4.Member
		left.Left = true
		m4.Member = &left
		in.Applied["m4"] = m4
		in.File = cf(t, masters("m1, m2, m3"))
		got := mustPlan(t, in)
		if j := joins(got); len(j) != 0 || got.Node("m4").Action != ActionRemove {
			t.Fatalf("a member that left leaves again: %q", j)
		}
	})
	t.Run("a founder cut off before its first step stays a founder", func(t *testing.T) {
		first := mustPlan(t, Input{File: cf(t, masters("m1, m2, m3")), Image: quorumImage(), ImageDigest: "sha256:aaaa", Agents: agents(4)})
		in := Input{File: cf(t, masters("m1, m2, m3")), Image: quorumImage(), ImageDigest: "sha256:aaaa", Agents: agents(4), Applied: appliedMembers(first)}
		in.Applied["m3"] = Applied{Roles: []string{"master"}, Member: first.Node("m3").Membership.Record} // recorded at rollout start only
		p := mustPlan(t, in)
		if got := joins(p); len(got) != 0 || p.Node("m3").Membership.State != MemberNew || p.Node("m3").Action != ActionCreate {
			t.Fatalf("m3: joins %q, membership %+v, action %s", got, p.Node("m3").Membership, p.Node("m3").Action)
		}
	})
}
