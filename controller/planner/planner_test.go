package planner

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
)

const (
	lBin     = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	lEtcd    = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	lLvscare = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
	lNginx   = "sha256:4444444444444444444444444444444444444444444444444444444444444444"
	lLvsNew  = "sha256:5555555555555555555555555555555555555555555555555555555555555555"
)

const etcdConf = `name: {{ .Node.Name }}
token: {{ .Env.ETCD_TOKEN }}
members: {{ range $i, $m := .Cluster.Masters }}{{ if $i }},{{ end }}{{ $m }}{{ end }}
`

// testImage is an etcd-like image: a layer for all, etcd for masters, lvscare for nodes
// and nginx for a custom ingress role, in one Seq order.
func testImage() *recipe.Recipe {
	return &recipe.Recipe{
		SchemaVersion: 1,
		Env:           map[string]string{"ETCD_TOKEN": "default", "DATA": "/var/lib/etcd", "LOG": "info"},
		Roles:         []string{recipe.RoleAll, recipe.RoleMaster, recipe.RoleMaster0, recipe.RoleNode, "ingress"},
		Layers: []recipe.Layer{
			{Digest: lBin, DiffID: lBin, Size: 1 << 20, Role: recipe.RoleAll, Seq: 1},
			{Digest: lEtcd, DiffID: lEtcd, Size: 20 << 20, Role: recipe.RoleMaster, Seq: 2},
			{Digest: lLvscare, DiffID: lLvscare, Size: 5 << 20, Role: recipe.RoleNode, Seq: 7},
			{Digest: lNginx, DiffID: lNginx, Size: 9 << 20, Role: "ingress", Seq: 10},
		},
		Templates: []recipe.Template{
			{Role: recipe.RoleMaster, Path: "/etc/etcd/etcd.conf", Mode: 0o600, Content: etcdConf, Seq: 4},
			{Role: recipe.RoleNode, Path: "/etc/lvscare.conf", Mode: 0o644, Content: "vip: {{ .Cluster.VIP }}\nreal: {{ range .Cluster.Masters }}{{ . }} {{ end }}\n", Seq: 8},
		},
		Steps: []recipe.Step{
			{Role: recipe.RoleMaster, Kind: recipe.KindRun, Command: "mkdir -p $DATA", Line: 5, Seq: 3},
			{Role: recipe.RoleMaster, Kind: recipe.KindService, Command: "etcd.service", Line: 7, Seq: 5},
			{Role: recipe.RoleMaster0, Kind: recipe.KindRun, Command: "etcdctl endpoint health", Line: 8, Seq: 6},
			{Role: recipe.RoleNode, Kind: recipe.KindService, Command: "lvscare.service", Line: 10, Seq: 9},
			{Role: "ingress", Kind: recipe.KindRun, Command: "nginx -t", Line: 12, Seq: 11, Timeout: "30s"},
		},
		Cmd: &recipe.Step{Role: recipe.RoleMaster0, Kind: recipe.KindRun, Command: "etcdctl --endpoints={{ .VIP }}:2379 endpoint health", Line: 13, Seq: 12},
	}
}

// agents are n masters and n workers whose addresses the controller verified.
func agents(n int) []Agent {
	out := claimingAgents(n)
	for i := range out {
		out[i].VerifiedIPs = out[i].IPs
	}
	return out
}

// claimingAgents are agents(n) whose addresses nobody verified: they only
// report them.
func claimingAgents(n int) []Agent {
	var out []Agent
	for i := 1; i <= n; i++ {
		out = append(out, Agent{Name: fmt.Sprintf("m%d", i), IPs: []netip.Addr{netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", 10+i))}, Arch: "amd64", Online: true})
	}
	for i := 1; i <= n; i++ {
		out = append(out, Agent{Name: fmt.Sprintf("n%d", i), IPs: []netip.Addr{netip.MustParseAddr(fmt.Sprintf("10.0.1.%d", i))}, Arch: "arm64",
			Labels: map[string]string{"rack": fmt.Sprintf("r%d", i%2)}, Online: true})
	}
	return out
}

func cf(t *testing.T, hosts string, extra ...string) *clusterfile.File {
	t.Helper()
	doc := "apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  image: reg/etcd:1\n  env: {ETCD_TOKEN: prod}\n  vip: 10.0.9.9\n  hosts:\n" + hosts
	for _, e := range extra {
		doc += "---\n" + e
	}
	f, err := clusterfile.Parse("Clusterfile", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

const threeTwo = "    - {names: [m1, 10.0.0.12, m3], roles: [master]}\n    - {names: [10.0.1.1-2], roles: [node], env: {LOG: debug}}\n"

// applied simulates a successful apply of p: what each node would report afterwards.
func applied(p *ClusterPlan) map[string]Applied {
	out := map[string]Applied{}
	for _, n := range p.Nodes() {
		if n.Action == ActionRemove {
			continue
		}
		a := Applied{Image: p.ImageDigest, Roles: n.Roles}
		for _, l := range n.Layers {
			a.Layers = append(a.Layers, l.Digest)
		}
		for _, f := range n.Files {
			a.Files = append(a.Files, AppliedFile{Path: f.Path, Digest: f.Digest, Mode: f.Mode})
		}
		for _, s := range n.Steps {
			a.Steps = append(a.Steps, s.Digest)
			if s.Kind == recipe.KindService {
				a.Services = append(a.Services, s.Command)
			}
		}
		if n.Images != nil {
			a.Images, a.ImagesDigest = n.Images.AppliedImages(), n.Images.Digest
		}
		out[n.Node] = a
	}
	return out
}

func mustPlan(t *testing.T, in Input) *ClusterPlan {
	t.Helper()
	p, err := Plan(in)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// summary is "node:action:run-steps" per node in run order, for compact comparisons.
func summary(p *ClusterPlan) []string {
	var out []string
	for _, ph := range p.Phases {
		for _, n := range ph.Nodes {
			var run []string
			for _, s := range n.Steps {
				if !s.Skip {
					run = append(run, s.Command)
				}
			}
			out = append(out, fmt.Sprintf("%s/%s:%s[%s]", ph.Name, n.Node, n.Action, strings.Join(run, ";")))
		}
	}
	return out
}

func layersToFetch(n *NodePlan) []string {
	var out []string
	for _, l := range n.Layers {
		if !l.Skip {
			out = append(out, l.Digest[7:8])
		}
	}
	return out
}

func TestFreshApply(t *testing.T) {
	p := mustPlan(t, Input{File: cf(t, threeTwo), Image: testImage(), ImageDigest: "sha256:aaaa", Agents: agents(3)})
	want := []string{
		"master0/m1:create[mkdir -p $DATA;etcd.service;etcdctl endpoint health]",
		"master/m2:create[mkdir -p $DATA;etcd.service]",
		"master/m3:create[mkdir -p $DATA;etcd.service]",
		"node/n1:create[lvscare.service]",
		"node/n2:create[lvscare.service]",
	}
	if got := summary(p); !slices.Equal(got, want) {
		t.Fatalf("phases:\n got %q\nwant %q", got, want)
	}
	m1, n1 := p.Node("m1"), p.Node("n1")
	if got := layersToFetch(m1); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("m1 fetches layers %v, want 1 and 2 (not the node or ingress layers)", got)
	}
	if got := layersToFetch(n1); !slices.Equal(got, []string{"1", "3"}) {
		t.Errorf("n1 fetches layers %v, want 1 and 3", got)
	}
	if !m1.Master0 || m1.Index != 0 || p.Node("m3").Index != 2 || p.Node("n2").Index != 1 {
		t.Errorf("master0/index: m1 %v %d, m3 %d, n2 %d", m1.Master0, m1.Index, p.Node("m3").Index, p.Node("n2").Index)
	}
	if got, want := string(m1.Files[0].Content), "name: m1\ntoken: prod\nmembers: 10.0.0.11,10.0.0.12,10.0.0.13\n"; got != want {
		t.Errorf("etcd.conf rendered as %q, want %q", got, want)
	}
	if m1.Files[0].Mode != 0o600 || m1.Files[0].Source != "template" {
		t.Errorf("etcd.conf file: %+v", m1.Files[0])
	}
	if got := n1.Env["LOG"]; got != "debug" || n1.Env["ETCD_TOKEN"] != "prod" || n1.Env["DATA"] != "/var/lib/etcd" || m1.Env["LOG"] != "info" {
		t.Errorf("env precedence (image < cluster < host): n1 %v, m1 %v", n1.Env, m1.Env)
	}
	if p.HealthCheck == nil || p.HealthCheck.Command != "etcdctl --endpoints=10.0.9.9:2379 endpoint health" {
		t.Errorf("health check: %+v", p.HealthCheck)
	}
	if d1, d2 := p.Node("m2").Steps[1].Digest, p.Node("m3").Steps[1].Digest; d1 == d2 {
		t.Errorf("m2 and m3 render different etcd.conf files but got the same etcd.service digest %s", d1)
	}
	if !slices.Equal(p.Masters, []string{"10.0.0.11", "10.0.0.12", "10.0.0.13"}) {
		t.Errorf("masters: %v", p.Masters)
	}
	if p.Phases[0].Parallelism != 1 || p.Phases[1].Parallelism != 1 || p.Phases[2].Parallelism != 5 {
		t.Errorf("parallelism: %d %d %d", p.Phases[0].Parallelism, p.Phases[1].Parallelism, p.Phases[2].Parallelism)
	}
	if !p.Changed() {
		t.Error("fresh apply reports no change")
	}
}

func TestNoopReapply(t *testing.T) {
	in := Input{File: cf(t, threeTwo), Image: testImage(), ImageDigest: "sha256:aaaa", Agents: agents(3)}
	first := mustPlan(t, in)
	in.Applied = applied(first)
	p := mustPlan(t, in)
	if p.Changed() {
		t.Fatalf("re-apply changes something: %q", summary(p))
	}
	for _, n := range p.Nodes() {
		if len(layersToFetch(n)) > 0 || len(n.Undo) > 0 {
			t.Errorf("%s: fetch %v undo %v", n.Node, layersToFetch(n), n.Undo)
		}
		for _, s := range n.Steps {
			if !strings.HasPrefix(s.Reason, "applied ") {
				t.Errorf("%s: step %s reason %q", n.Node, s.Command, s.Reason)
			}
		}
	}
}

func TestScaleUp(t *testing.T) {
	in := Input{File: cf(t, threeTwo), Image: testImage(), ImageDigest: "sha256:aaaa", Agents: agents(4)}
	in.Applied = applied(mustPlan(t, in))

	t.Run("a node: only the new node works", func(t *testing.T) {
		in := in
		in.File = cf(t, "    - {names: [m1, 10.0.0.12, m3], roles: [master]}\n    - {names: [10.0.1.1-3], roles: [node], env: {LOG: debug}}\n")
		p := mustPlan(t, in)
		want := []string{
			"master0/m1:noop[]", "master/m2:noop[]", "master/m3:noop[]",
			"node/n1:noop[]", "node/n2:noop[]", "node/n3:create[lvscare.service]",
		}
		if got := summary(p); !slices.Equal(got, want) {
			t.Fatalf("\n got %q\nwant %q", got, want)
		}
	})
	t.Run("a master: members re-render, steps after the file re-run", func(t *testing.T) {
		in := in
		in.File = cf(t, "    - {names: [m1, 10.0.0.12, m3, m4], roles: [master]}\n    - {names: [10.0.1.1-2], roles: [node], env: {LOG: debug}}\n")
		p := mustPlan(t, in)
		want := []string{
			"master0/m1:update[etcd.service;etcdctl endpoint health]",
			"master/m2:update[etcd.service]", "master/m3:update[etcd.service]",
			"master/m4:create[mkdir -p $DATA;etcd.service]",
			"node/n1:update[lvscare.service]", "node/n2:update[lvscare.service]",
		}
		if got := summary(p); !slices.Equal(got, want) {
			t.Fatalf("\n got %q\nwant %q", got, want)
		}
		m2 := p.Node("m2")
		if len(layersToFetch(m2)) != 0 || m2.Files[0].Skip || !strings.Contains(string(m2.Files[0].Content), "10.0.0.14") {
			t.Errorf("m2: fetch %v, file %+v %q", layersToFetch(m2), m2.Files[0], m2.Files[0].Content)
		}
		if m2.Steps[0].Skip != true || m2.Steps[1].Reason != "/etc/etcd/etcd.conf changed" {
			t.Errorf("m2 steps: %+v", m2.Steps)
		}
	})
}

func TestScaleDown(t *testing.T) {
	in := Input{File: cf(t, threeTwo), Image: testImage(), ImageDigest: "sha256:aaaa", Agents: agents(3)}
	in.Applied = applied(mustPlan(t, in))
	in.File = cf(t, "    - {names: [m1, m2], roles: [master]}\n    - {names: [n1], roles: [node], env: {LOG: debug}}\n")
	in.Agents = slices.DeleteFunc(in.Agents, func(a Agent) bool { return a.Name == "n2" }) // n2 is gone from the inventory too
	p := mustPlan(t, in)
	want := []string{
		"master0/m1:update[etcd.service;etcdctl endpoint health]", "master/m2:update[etcd.service]",
		"node/n1:update[lvscare.service]",
		"remove/n2:remove[]", "remove/m3:remove[]",
	}
	if got := summary(p); !slices.Equal(got, want) {
		t.Fatalf("\n got %q\nwant %q", got, want)
	}
	n2 := p.Node("n2")
	wantUndo := []Undo{{UndoStopService, "lvscare.service"}, {UndoCleanLvscare, "lvscare.service"}, {UndoRemoveFile, "/etc/lvscare.conf"}, {UndoRemoveLayer, lLvscare}, {UndoRemoveLayer, lBin}}
	if !slices.Equal(n2.Undo, wantUndo) || n2.Online {
		t.Errorf("n2 undo %v online %v, want %v offline", n2.Undo, n2.Online, wantUndo)
	}
	if m3 := p.Node("m3"); !m3.Online || m3.IP != "10.0.0.13" || m3.Undo[0] != (Undo{UndoStopService, "etcd.service"}) {
		t.Errorf("m3: %+v", m3)
	}
}

func TestUpgradeOneLayer(t *testing.T) {
	in := Input{File: cf(t, threeTwo), Image: testImage(), ImageDigest: "sha256:aaaa", Agents: agents(3)}
	in.Applied = applied(mustPlan(t, in))
	in.Image = testImage()
	in.Image.Layers[2].Digest = lLvsNew
	in.ImageDigest = "sha256:bbbb"
	p := mustPlan(t, in)
	want := []string{
		"master0/m1:noop[]", "master/m2:noop[]", "master/m3:noop[]",
		"node/n1:update[lvscare.service]", "node/n2:update[lvscare.service]",
	}
	if got := summary(p); !slices.Equal(got, want) {
		t.Fatalf("\n got %q\nwant %q", got, want)
	}
	n1 := p.Node("n1")
	if n1.Steps[0].Reason != "layer sha256:555555555555 changed" {
		t.Errorf("n1 lvscare.service reason %q", n1.Steps[0].Reason)
	}
	if n1.FromImage != "sha256:aaaa" {
		t.Errorf("n1 FromImage %q", n1.FromImage)
	}
	if got := layersToFetch(n1); !slices.Equal(got, []string{"5"}) {
		t.Errorf("n1 fetches %v, want only the new layer", got)
	}
	if !slices.Equal(n1.Undo, []Undo{{UndoRemoveLayer, lLvscare}}) || !n1.Files[0].Skip {
		t.Errorf("n1 undo %v, file skip %v", n1.Undo, n1.Files[0].Skip)
	}
}

func TestMultiArch(t *testing.T) {
	arm := testImage()
	arm.Layers[0].Digest = lNginx[:len(lNginx)-1] + "9" // the arm64 build of the common layer
	p := mustPlan(t, Input{File: cf(t, threeTwo), Image: testImage(), ImageByArch: map[string]*recipe.Recipe{"arm64": arm}, Agents: agents(3)})
	if m1, n1 := p.Node("m1"), p.Node("n1"); m1.Layers[0].Digest != lBin || n1.Layers[0].Digest != arm.Layers[0].Digest {
		t.Errorf("amd64 m1 gets %s, arm64 n1 gets %s", m1.Layers[0].Digest, n1.Layers[0].Digest)
	}
}

func TestRoleChange(t *testing.T) {
	in := Input{File: cf(t, threeTwo), Image: testImage(), ImageDigest: "sha256:aaaa", Agents: agents(3)}
	in.Applied = applied(mustPlan(t, in))
	in.File = cf(t, "    - {names: [m1, 10.0.0.12, m3], roles: [master]}\n    - {names: [n1], roles: [node], env: {LOG: debug}}\n    - {names: [n2], roles: [ingress], env: {LOG: debug}}\n")
	p := mustPlan(t, in)
	want := []string{
		"master0/m1:noop[]", "master/m2:noop[]", "master/m3:noop[]",
		"node/n1:noop[]", "ingress/n2:update[nginx -t]",
	}
	if got := summary(p); !slices.Equal(got, want) {
		t.Fatalf("\n got %q\nwant %q", got, want)
	}
	n2 := p.Node("n2")
	wantUndo := []Undo{{UndoStopService, "lvscare.service"}, {UndoCleanLvscare, "lvscare.service"}, {UndoRemoveFile, "/etc/lvscare.conf"}, {UndoRemoveLayer, lLvscare}}
	if !slices.Equal(n2.Undo, wantUndo) {
		t.Errorf("n2 undo %v, want %v", n2.Undo, wantUndo)
	}
	if got := layersToFetch(n2); !slices.Equal(got, []string{"4"}) || n2.Steps[0].Timeout.String() != "30s" {
		t.Errorf("n2 fetches %v (want the ingress layer), timeout %v", got, n2.Steps[0].Timeout)
	}
}

func TestTemplateRerenderOnMembership(t *testing.T) {
	in := Input{File: cf(t, threeTwo), Image: testImage(), ImageDigest: "sha256:aaaa", Agents: agents(3)}
	before := mustPlan(t, in)
	in.Applied = applied(before)
	in.File = cf(t, "    - {names: [m1, m2], roles: [master]}\n    - {names: [10.0.1.1-2], roles: [node], env: {LOG: debug}}\n")
	after := mustPlan(t, in)
	for _, name := range []string{"m1", "m2", "n1"} {
		b, a := before.Node(name).Files[0], after.Node(name).Files[0]
		if a.Digest == b.Digest || a.Skip || bytes.Contains(a.Content, []byte("10.0.0.13")) {
			t.Errorf("%s: %s not re-rendered without m3: %q skip=%v", name, a.Path, a.Content, a.Skip)
		}
	}
}

func TestConfigOverride(t *testing.T) {
	override := "apiVersion: flotilla.dev/v1\nkind: Config\nmetadata: {name: tune}\nspec: {path: /etc/etcd/etcd.conf, content: \"name: {{ .Node.Name }}\\n\", role: master, template: true}\n"
	extra := "apiVersion: flotilla.dev/v1\nkind: Config\nmetadata: {name: motd}\nspec: {path: /etc/motd, content: \"{{ hello }}\", mode: \"0640\"}\n"
	p := mustPlan(t, Input{File: cf(t, threeTwo, override, extra), Image: testImage(), Agents: agents(3)})
	m2 := p.Node("m2")
	if len(m2.Files) != 2 {
		t.Fatalf("m2 files: %+v", m2.Files)
	}
	if f := m2.Files[0]; string(f.Content) != "name: m2\n" || f.Source != "config/tune" || f.Seq != 4 || f.Mode != 0o600 {
		t.Errorf("template override: %+v %q", f, f.Content)
	}
	if f := m2.Files[1]; f.Path != "/etc/motd" || string(f.Content) != "{{ hello }}" || f.Seq != 2 || f.Mode != 0o640 {
		t.Errorf("file override (not rendered, after the last layer): %+v %q", f, f.Content)
	}
	if n1 := p.Node("n1"); len(n1.Files) != 2 || n1.Files[1].Seq != 7 || n1.Files[0].Source != "template" {
		t.Errorf("n1 files: %+v", n1.Files)
	}
}

func TestBadInput(t *testing.T) {
	img := testImage()
	badTmpl := testImage()
	badTmpl.Templates[0].Content = "name: x\nmembers: 1\ntoken: {{ .Env.TOKN }}\n"
	twoIPs := agents(3)
	twoIPs[4].IPs, twoIPs[4].VerifiedIPs = twoIPs[0].IPs, twoIPs[0].VerifiedIPs
	// n2 claims m1's address: that selects nothing and changes nothing for m1.
	impostor := agents(3)
	impostor[4].IPs = append(impostor[4].IPs, impostor[0].IPs...)
	// n1 claims 10.0.5.5, which nobody verified.
	claimOnly := agents(3)
	claimOnly[3].IPs = append(claimOnly[3].IPs, netip.MustParseAddr("10.0.5.5"))
	tests := []struct {
		name   string
		hosts  string
		image  *recipe.Recipe
		agents []Agent
		extra  []string
		want   string
	}{
		{name: "unknown role", hosts: "    - {names: [m1], roles: [master]}\n    - {names: [n1], roles: [mastr]}\n",
			want: `Clusterfile:10: spec.hosts[1].roles[0]: unknown role "mastr" (the image declares: master, node, ingress)`},
		{name: "unmatched host", hosts: "    - {names: [m1, m9], roles: [master]}\n",
			want: "Clusterfile:9: spec.hosts[0].names[1]: m9 matches no agent (known agents: m1, m2, m3, n1, n2, n3"},
		{name: "unmatched range", hosts: "    - {names: [m1], roles: [master]}\n    - {names: [10.0.2.1-9], roles: [node]}\n",
			want: "spec.hosts[1].names[0]: range 10.0.2.1-9 matches no agent"},
		{name: "unmatched selector", hosts: "    - {names: [m1], roles: [master]}\n    - {selector: {rack: r9}, roles: [node]}\n",
			want: "spec.hosts[1].selector: matches no agent"},
		{name: "agent matched twice", hosts: "    - {names: [m1, 10.0.1.1], roles: [master]}\n    - {selector: {rack: r1}, roles: [node]}\n",
			want: "spec.hosts[1].selector: agent n1 is already selected by spec.hosts[0].names[1]"},
		{name: "shared IP", hosts: "    - {names: [10.0.0.11], roles: [master]}\n", agents: twoIPs,
			want: "spec.hosts[0].names[0]: 10.0.0.11 is the address of several agents (m1, n2): name the agent instead"},
		{name: "claimed address", hosts: "    - {names: [10.0.5.5], roles: [master]}\n", agents: claimOnly,
			want: "spec.hosts[0].names[0]: 10.0.5.5: agent n1 reports this address but the controller has not verified it"},
		{name: "claimed range", hosts: "    - {names: [10.0.5.1-9], roles: [master]}\n", agents: claimOnly,
			want: "spec.hosts[0].names[0]: range 10.0.5.1-9: agent n1 reports this address but the controller has not verified it"},
		{name: "unverified agents", hosts: threeTwo, agents: claimingAgents(3),
			want: "spec.hosts[0].names[1]: 10.0.0.12: agent m2 reports this address but the controller has not verified it"},
		{name: "unknown template key", hosts: threeTwo, image: badTmpl,
			want: `node m1: /etc/etcd/etcd.conf (line 3): map has no entry for key "TOKN" (at .Env.TOKN)`},
		{name: "bad step timeout", hosts: "    - {names: [m1], roles: [master]}\n    - {names: [n1], roles: [ingress]}\n",
			image: func() *recipe.Recipe { p := testImage(); p.Steps[4].Timeout = "soon"; return p }(),
			want:  `node n1: step RUN nginx -t (Kubefile line 12): timeout "soon" is not a positive duration`},
		{name: "config with unknown role", hosts: threeTwo,
			extra: []string{"apiVersion: flotilla.dev/v1\nkind: Config\nmetadata: {name: x}\nspec: {path: /a, content: b, role: db}\n"},
			want:  `Clusterfile:15: spec.role: Config "x": unknown role "db" (the image declares: master, node, ingress)`},
		{name: "no image plan", hosts: threeTwo, image: &recipe.Recipe{}, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := Input{File: cf(t, tt.hosts, tt.extra...), Image: img, Agents: agents(3)}
			if tt.image != nil {
				in.Image = tt.image
			}
			if tt.agents != nil {
				in.Agents = tt.agents
			}
			if tt.name == "no image plan" {
				in.Image = nil
				tt.want = "image reg/etcd:1 has no plan"
			}
			_, err := Plan(in)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

// TestClaimedAddressSelectsNothing: n2 reports m1's address (and m3's) on
// top of its own. The Clusterfile's masters by address are still exactly m1
// and m3, and n2 gets no master role (nor the masters' env): a node does not
// pick its role by stating an IP.
func TestClaimedAddressSelectsNothing(t *testing.T) {
	ag := agents(3)
	ag[4].IPs = append(ag[4].IPs, ag[0].IPs[0], ag[2].IPs[0])
	p, err := Plan(Input{File: cf(t, "    - {names: [10.0.0.11, m2, 10.0.0.13], roles: [master], env: {MASTER_SECRET: s}}\n    - {names: [n2], roles: [node]}\n"),
		Image: testImage(), Agents: ag})
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string][]string{}
	for _, ph := range p.Phases {
		for _, n := range ph.Nodes {
			roles[n.Node] = append(roles[n.Node], n.Roles...)
		}
	}
	if !slices.Contains(roles["m1"], "master") || !slices.Contains(roles["m3"], "master") || slices.Contains(roles["n2"], "master") {
		t.Errorf("roles = %v; want m1 and m3 masters by their verified addresses, n2 not", roles)
	}
}
