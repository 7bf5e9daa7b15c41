// Package sandbox is the infra provider whose machines are systemd-nspawn nodes
// of a sandbox fleet (sandbox/) on the controller's own host: each machine is a
// booted Debian system in its own network namespace on the fleet's bridge, with
// its cluster and role as tags in the fleet's fleet.json, its user data run at
// first boot by a systemd unit, and its cpus/memory as cgroup v1 limits (CFS
// quota, memory.limit_in_bytes) on the node's cgroups.
//
// The fleet itself (bridge and subnet, the "VPC") must be up before the
// controller starts, since the controller listens on the bridge's host address:
//
//	go run ./e2e/cmd/fleet -name flotilla -subnet 10.77.0.0/24 -n 0 up
//	flotilla controller --listen 10.77.0.1:4222 --http-listen 10.77.0.1:9443 \
//	    --advertise 10.77.0.1 --infra-sandbox flotilla
package sandbox

import (
	"context"
	"fmt"
	"strings"

	"github.com/flotilla-dev/flotilla/infra"
	fleet "github.com/flotilla-dev/flotilla/sandbox"
)

// Provider makes machines as nodes of one sandbox fleet.
type Provider struct {
	name  string
	fleet *fleet.Fleet
}

// Open returns the provider for the fleet of that name, which must be up (it
// checks the host too: root, systemd-nspawn, the cached rootfs).
func Open(name string) (*Provider, error) {
	f, err := fleet.Open(name)
	if err != nil {
		return nil, fmt.Errorf("sandbox provider: %w (boot its network first: go run ./e2e/cmd/fleet -name %s -subnet CIDR -n 0 up)", err, name)
	}
	if err := fleet.CheckHost(""); err != nil {
		return nil, fmt.Errorf("sandbox provider: %w", err)
	}
	return &Provider{name: name, fleet: f}, nil
}

// Fleet is the fleet the machines are nodes of.
func (p *Provider) Fleet() *fleet.Fleet { return p.fleet }

// Create launches the machine as a new node of the fleet, or returns the node
// that already has its name and cluster tag (fleet.AddNode is idempotent: it
// completes a node an interrupted call left half-made).
func (p *Provider) Create(ctx context.Context, s infra.MachineSpec) (infra.Machine, error) {
	if cur, err := p.find(s.Name); err != nil {
		return infra.Machine{}, err
	} else if cur != nil && cur.Tags[infra.ClusterTag] != s.Cluster {
		return infra.Machine{}, infra.Permanent(fmt.Errorf("sandbox %s already has a node %s that is not cluster %s's (tags %v)", p.name, s.Name, s.Cluster, cur.Tags))
	}
	// Like a cloud, answer once the machine is launched: the driver's wait for
	// its agent covers the boot, and the next machine's launch need not wait.
	n, err := p.fleet.AddNode(ctx, fleet.NodeSpec{Name: s.Name, UserData: s.UserData, CPUs: s.CPUs, MemoryBytes: s.MemoryBytes,
		Tags: map[string]string{infra.ClusterTag: s.Cluster, infra.RoleTag: s.Role}, NoWait: true})
	if err != nil {
		if strings.Contains(err.Error(), "node name") || strings.Contains(err.Error(), "no free address") {
			return infra.Machine{}, infra.Permanent(err)
		}
		return infra.Machine{}, err
	}
	return p.machine(n), nil
}

// List returns the fleet's nodes tagged with the cluster.
func (p *Provider) List(ctx context.Context, cluster string) ([]infra.Machine, error) {
	f, err := fleet.Open(p.name) // fleet.json as it is now
	if err != nil {
		return nil, err
	}
	var out []infra.Machine
	for _, n := range f.Nodes() {
		if n.Tags[infra.ClusterTag] == cluster {
			out = append(out, p.machine(n))
		}
	}
	return out, nil
}

// Destroy removes the node and everything of it (processes, cgroups, overlay,
// netns, veth, state). A node that is gone, or that is not the cluster's, is
// left alone.
func (p *Provider) Destroy(ctx context.Context, m infra.Machine) error {
	cur, err := p.find(m.Name)
	if err != nil {
		return err
	}
	if cur == nil {
		return nil
	}
	if cur.Tags[infra.ClusterTag] != m.Cluster {
		return infra.Permanent(fmt.Errorf("sandbox %s: node %s is not cluster %s's (tags %v): not destroying it", p.name, m.Name, m.Cluster, cur.Tags))
	}
	return p.fleet.RemoveNode(ctx, m.Name)
}

func (p *Provider) find(name string) (*fleet.Node, error) {
	f, err := fleet.Open(p.name)
	if err != nil {
		return nil, err
	}
	for _, n := range f.Nodes() {
		if n.Name == name {
			return &n, nil
		}
	}
	return nil, nil
}

func (p *Provider) machine(n fleet.Node) infra.Machine {
	return infra.Machine{Name: n.Name, Cluster: n.Tags[infra.ClusterTag], Role: n.Tags[infra.RoleTag],
		ID: p.name + "/" + n.Name, IP: n.IP.String()}
}
