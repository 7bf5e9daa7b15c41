package clusterfile

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/bandwidth"
)

func TestLoadSample(t *testing.T) {
	f, err := Load("testdata/Clusterfile")
	if err != nil {
		t.Fatal(err)
	}
	c := f.Cluster
	if c.Name != "prod-etcd" || c.Image != "registry.local/etcd-cluster:3.4" || c.VIP != "10.103.97.2" {
		t.Fatalf("cluster header: %+v", c)
	}
	if c.Env["PORT"] != "2379" || c.Env["ETCD_TOKEN"] != "prod-1" {
		t.Fatalf("env: %v", c.Env)
	}
	if len(c.Hosts) != 3 || len(c.Hosts[0].Names) != 2 || !c.Hosts[0].Names[0].IsRange() {
		t.Fatalf("hosts: %+v", c.Hosts)
	}
	if !c.Hosts[0].Names[0].Matches("x", []netip.Addr{netip.MustParseAddr("10.0.0.13")}) ||
		c.Hosts[0].Names[0].Matches("x", []netip.Addr{netip.MustParseAddr("10.0.0.14")}) {
		t.Fatal("range 10.0.0.11-13 matches wrongly")
	}
	if !c.Hosts[0].Names[1].Matches("edge-1", nil) {
		t.Fatal("agent name does not match")
	}
	if !c.Hosts[2].MatchesLabels(map[string]string{"rack": "r7", "x": "y"}) || c.Hosts[2].MatchesLabels(map[string]string{"rack": "r8"}) {
		t.Fatal("selector matches wrongly")
	}
	r := c.Rollout
	if r.OnFailure != OnFailureContinue || r.StepTimeout != 90*time.Second || r.Retries != 4 {
		t.Fatalf("rollout: %+v", r)
	}
	if got := r.ParallelismFor("node", 20); got != 3 {
		t.Fatalf("node parallelism = %d, want 3", got)
	}
	if got := r.ParallelismFor("node", 4); got != 1 { // 25% of 4 caps it
		t.Fatalf("node parallelism with 4 hosts = %d, want 1", got)
	}
	if c.Bandwidth.Upload != 12_500_000 || c.Bandwidth.Download != 1_000_000_000 {
		t.Fatalf("bandwidth: %+v", c.Bandwidth)
	}
	if len(f.Configs) != 1 || f.Configs[0].Path != "/etc/etcd/etcd.conf.yml" || f.Configs[0].Mode != 0o600 || f.Configs[0].Role != "master" {
		t.Fatalf("configs: %+v", f.Configs)
	}
}

const head = "apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: c}\nspec:\n  image: img\n"

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, doc string
		want      []string // substrings of the error
	}{
		{"unknown top field", head + "  hosts: [{names: [a], roles: [master]}]\nstatus: {}\n", []string{"Clusterfile:7: status: unknown field"}},
		{"unknown spec field", head + "  hosts: [{names: [a], roles: [master]}]\n  imgae: x\n", []string{"Clusterfile:7: spec.imgae: unknown field"}},
		{"unknown host field", head + "  hosts:\n    - names: [a]\n      roles: [master]\n      role: x\n", []string{"spec.hosts[0].role: unknown field"}},
		{"bad apiVersion", "apiVersion: v2\nkind: Cluster\n", []string{`unsupported apiVersion "v2"`}},
		{"unknown kind", "apiVersion: flotilla.dev/v1\nkind: Clustr\n", []string{`kind: unknown kind "Clustr"`}},
		{"no hosts", head, []string{"spec.hosts: missing"}},
		{"no roles", head + "  hosts: [{names: [a]}]\n", []string{"spec.hosts[0].roles: missing"}},
		{"bad role syntax", head + "  hosts: [{names: [a], roles: [Master]}]\n", []string{`spec.hosts[0].roles[0]: "Master" is not a valid role`}},
		{"duplicate host", head + "  hosts:\n    - {names: [a, 10.0.0.1], roles: [master]}\n    - {names: [10.0.0.1], roles: [node]}\n",
			[]string{"Clusterfile:8: spec.hosts[1].names[0]: duplicate host: 10.0.0.1 is already listed at spec.hosts[0].names[1] (line 7)"}},
		{"duplicate in range", head + "  hosts:\n    - {names: [10.0.0.1-5], roles: [master]}\n    - {names: [10.0.0.3], roles: [node]}\n",
			[]string{"spec.hosts[1].names[0]: duplicate host: 10.0.0.3 is already in range 10.0.0.1-5 at spec.hosts[0].names[0]"}},
		{"overlapping ranges", head + "  hosts:\n    - {names: [10.0.0.1-5], roles: [master]}\n    - {names: [10.0.0.5-10.0.0.9], roles: [node]}\n",
			[]string{"spec.hosts[1].names[0]: duplicate host: range 10.0.0.5-10.0.0.9 overlaps 10.0.0.1-5"}},
		{"backwards range", head + "  hosts: [{names: [10.0.0.9-3], roles: [node]}]\n", []string{"ends before it starts"}},
		{"huge range", head + "  hosts: [{names: [10.0.0.0-10.9.0.0], roles: [node]}]\n", []string{"more than 65536"}},
		{"names and selector", head + "  hosts: [{names: [a], selector: {x: y}, roles: [node]}]\n", []string{"exclusive"}},
		{"empty selector", head + "  hosts: [{selector: {}, roles: [node]}]\n", []string{"spec.hosts[0].selector: is empty"}},
		{"bad env key", head + "  hosts: [{names: [a], roles: [node]}]\n  env: {A-B: 1}\n", []string{`spec.env.A-B: "A-B" is not a valid environment variable name`}},
		{"bad vip", head + "  hosts: [{names: [a], roles: [node]}]\n  vip: 10.0.0\n", []string{"spec.vip: \"10.0.0\" is not an IP address"}},
		{"bad onFailure", head + "  hosts: [{names: [a], roles: [node]}]\n  rollout: {onFailure: stop}\n", []string{"spec.rollout.onFailure: \"stop\" is not halt or continue"}},
		{"bad timeout", head + "  hosts: [{names: [a], roles: [node]}]\n  rollout: {stepTimeout: 10}\n", []string{"spec.rollout.stepTimeout"}},
		{"bad parallelism", head + "  hosts: [{names: [a], roles: [node]}]\n  rollout: {parallelism: {node: 0}}\n", []string{"spec.rollout.parallelism.node: must be at least 1"}},
		{"bad bandwidth", head + "  hosts: [{names: [a], roles: [node]}]\n  bandwidth: {upload: fast}\n", []string{"spec.bandwidth.upload"}},
		{"two clusters", head + "  hosts: [{names: [a], roles: [node]}]\n---\n" + head + "  hosts: [{names: [b], roles: [node]}]\n", []string{"a second kind: Cluster"}},
		{"no cluster", "apiVersion: flotilla.dev/v1\nkind: Config\nmetadata: {name: x}\nspec: {path: /a, content: b}\n", []string{"no kind: Cluster document"}},
		{"config relative path", head + "  hosts: [{names: [a], roles: [node]}]\n---\napiVersion: flotilla.dev/v1\nkind: Config\nmetadata: {name: x}\nspec: {path: etc/a, content: b}\n",
			[]string{`spec.path: "etc/a" must be an absolute path`}},
		{"config bad mode", head + "  hosts: [{names: [a], roles: [node]}]\n---\napiVersion: flotilla.dev/v1\nkind: Config\nmetadata: {name: x}\nspec: {path: /a, content: b, mode: \"0999\"}\n",
			[]string{"spec.mode"}},
		{"config twice", head + "  hosts: [{names: [a], roles: [node]}]\n---\napiVersion: flotilla.dev/v1\nkind: Config\nmetadata: {name: x}\nspec: {path: /a, content: b}\n---\napiVersion: flotilla.dev/v1\nkind: Config\nmetadata: {name: y}\nspec: {path: /a, content: c}\n",
			[]string{`Config "y" overrides /a again (already overridden by Config "x")`}},
		{"not yaml", "a: [", []string{"Clusterfile: yaml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("Clusterfile", []byte(tt.doc))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestValidateRoles(t *testing.T) {
	f, err := Parse("Clusterfile", []byte(head+"  hosts:\n    - {names: [a], roles: [master]}\n    - {names: [b], roles: [node, mastr, master0]}\n  rollout: {parallelism: {ingres: 2}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = f.Cluster.ValidateRoles([]string{"all", "master", "master0", "node", "ingress"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{
		`Clusterfile:8: spec.hosts[1].roles[1]: unknown role "mastr" (the image declares: master, node, ingress)`,
		`spec.hosts[1].roles[2]: role "master0" is not assigned by hand`,
		`spec.rollout.parallelism.ingres: unknown phase`,
	} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q\ndoes not contain %q", err, w)
		}
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "spec.hosts[1].roles[1]" {
		t.Errorf("errors.As FieldError: %+v", fe)
	}
	if err := f.Cluster.ValidateRoles([]string{"master", "node", "mastr"}); err == nil || strings.Contains(err.Error(), `unknown role "mastr"`) {
		t.Errorf("with mastr declared: %v", err)
	}
}

// Every rate the agent's --max-download accepts, a Clusterfile's
// spec.bandwidth accepts too (one parser, internal/bandwidth).
func TestBandwidthFormsMatchTheAgentFlag(t *testing.T) {
	for _, form := range []string{"100mbit", "100Mbit", "1Gbit", "1gbit", "50MB/s", "50MB", "12MiB", "2.5 GB/s", "8kbit", "512B"} {
		want, err := bandwidth.Parse(form)
		if err != nil {
			t.Fatalf("bandwidth.Parse(%q): %v", form, err)
		}
		doc := "apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: c}\nspec:\n  image: x:1\n  hosts:\n    - {names: [a], roles: [master]}\n  bandwidth: {download: " + form + ", upload: " + form + "}\n"
		cf, err := Parse("Clusterfile", []byte(doc))
		if err != nil {
			t.Errorf("spec.bandwidth %q: %v", form, err)
			continue
		}
		if cf.Cluster.Bandwidth.Download != int64(want) || cf.Cluster.Bandwidth.Upload != int64(want) {
			t.Errorf("spec.bandwidth %q = %+v, want %d", form, cf.Cluster.Bandwidth, want)
		}
	}
}

func TestValidateRolesOneParallelismForAll(t *testing.T) {
	f, err := Parse("Clusterfile", []byte(head+"  hosts:\n    - {names: [a], roles: [master]}\n    - {names: [b], roles: [node]}\n  rollout: {parallelism: 4}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Cluster.ValidateRoles([]string{"all", "master", "node"}); err != nil {
		t.Fatalf("parallelism: 4 (one number for every phase) refused: %v", err)
	}
	if got := f.Cluster.Rollout.ParallelismFor("node", 2); got != 4 {
		t.Errorf("node parallelism = %d, want the single number 4", got)
	}
}
