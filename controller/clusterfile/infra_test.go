package clusterfile

import (
	"strings"
	"testing"
)

func TestParseInfra(t *testing.T) {
	doc := head + "  hosts: [{names: [edge-1], roles: [node]}]\n" +
		"  infra:\n    provider: sandbox\n    roles:\n      master: {count: 3}\n      node: {count: 2, cpus: 1, memory: 512Mi}\n      gpu: {count: 0}\n"
	f, err := Parse("Clusterfile", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	c := f.Cluster
	if c.Infra == nil || c.Infra.Provider != "sandbox" || len(c.Infra.Roles) != 3 {
		t.Fatalf("infra: %+v", c.Infra)
	}
	if r := c.Infra.Roles[1]; r.Role != "node" || r.Count != 2 || r.CPUs != 1 || r.Memory != 512<<20 {
		t.Fatalf("node group: %+v", r)
	}
	ms := c.Machines()
	var names []string
	for _, m := range ms {
		names = append(names, m.Name)
	}
	if got := strings.Join(names, ","); got != "c-master-1,c-master-2,c-master-3,c-node-1,c-node-2" {
		t.Fatalf("machines: %s", got)
	}
	// spec.hosts first (master0 stays where the file puts it), then one entry per role with machines.
	if len(c.Hosts) != 3 || c.Hosts[0].Infra || !c.Hosts[1].Infra || c.Hosts[1].Roles[0] != "master" ||
		len(c.Hosts[1].Names) != 3 || c.Hosts[2].Names[1].Raw != "c-node-2" {
		t.Fatalf("hosts: %+v", c.Hosts)
	}
	if err := c.ValidateRoles([]string{"master", "node"}); err != nil {
		t.Fatal(err)
	}
	// Infra-only Clusterfile: no spec.hosts needed.
	if _, err := Parse("Clusterfile", []byte(head+"  infra: {provider: sandbox, roles: {master: {count: 1}}}\n")); err != nil {
		t.Fatal(err)
	}
}

func TestParseInfraErrors(t *testing.T) {
	infra := func(s string) string { return head + "  infra:\n" + s }
	tests := []struct{ name, doc, want string }{
		{"no provider", infra("    roles: {master: {count: 1}}\n"), "Clusterfile:7: spec.infra.provider: missing"},
		{"no roles", infra("    provider: sandbox\n"), "spec.infra.roles: missing"},
		{"unknown field", infra("    provider: sandbox\n    region: x\n    roles: {master: {count: 1}}\n"), "Clusterfile:8: spec.infra.region: unknown field"},
		{"unknown role field", infra("    provider: sandbox\n    roles:\n      master: {count: 1, disk: 10Gi}\n"), "Clusterfile:9: spec.infra.roles.master.disk: unknown field"},
		{"no count", infra("    provider: sandbox\n    roles:\n      master: {cpus: 1}\n"), "spec.infra.roles.master.count: missing"},
		{"negative count", infra("    provider: sandbox\n    roles: {master: {count: -1}}\n"), "spec.infra.roles.master.count: must be at least 0"},
		{"huge count", infra("    provider: sandbox\n    roles: {master: {count: 100000}}\n"), "at most 256 per role"},
		{"bad cpus", infra("    provider: sandbox\n    roles: {node: {count: 1, cpus: lots}}\n"), `spec.infra.roles.node.cpus: "lots" is not a CPU count`},
		{"zero cpus", infra("    provider: sandbox\n    roles: {node: {count: 1, cpus: 0}}\n"), `"0" is not a CPU count`},
		{"bad memory", infra("    provider: sandbox\n    roles: {node: {count: 1, memory: 512}}\n"), `spec.infra.roles.node.memory: "512" is not a memory size`},
		{"tiny memory", infra("    provider: sandbox\n    roles: {node: {count: 1, memory: 1Mi}}\n"), "less than 32Mi"},
		{"bad role", infra("    provider: sandbox\n    roles: {Master: {count: 1}}\n"), `"Master" is not a valid role name`},
		{"master0", infra("    provider: sandbox\n    roles: {master0: {count: 1}}\n"), `role "master0" is not assigned by hand`},
		{"bad provider", infra("    provider: Sandbox!\n    roles: {master: {count: 1}}\n"), "is not a provider name"},
		{"all zero", infra("    provider: sandbox\n    roles: {master: {count: 0}}\n"), "spec.infra.roles: no machines"},
		{"listed too", head + "  hosts: [{names: [c-node-1], roles: [node]}]\n  infra: {provider: sandbox, roles: {node: {count: 1}}}\n",
			"machine c-node-1 is also listed in spec.hosts"},
		{"name not a host name", strings.Replace(head, "name: c}", "name: my_cluster}", 1) + "  infra: {provider: sandbox, roles: {node: {count: 1}}}\n",
			`the cluster name "my_cluster" becomes part of machine host names`},
		{"not a mapping", infra("    [sandbox]\n"), "spec.infra: must be a mapping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("Clusterfile", []byte(tt.doc))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tt.want)
			}
		})
	}
}

func TestValidateRolesNamesInfraField(t *testing.T) {
	f, err := Parse("Clusterfile", []byte(head+"  infra:\n    provider: sandbox\n    roles:\n      ingres: {count: 1}\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = f.Cluster.ValidateRoles([]string{"master", "node", "ingress"})
	if err == nil || !strings.Contains(err.Error(), `Clusterfile:9: spec.infra.roles.ingres: unknown role "ingres"`) {
		t.Fatalf("got %v", err)
	}
}
