package rollout

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/protocol"
)

// fakeInfra makes machines by adding them to the fake fleet, and records
// what the engine asked.
type fakeInfra struct {
	f        *fakeFleet
	mu       sync.Mutex
	provided int
	machines map[string]bool
	released [][]string // machines destroyed per Release call
	next     int
}

func (i *fakeInfra) Provide(ctx context.Context, c *clusterfile.Cluster, progress func(string)) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.provided++
	for _, m := range c.Machines() {
		if !i.machines[m.Name] {
			i.next++
			i.f.add(m.Name, fmt.Sprintf("10.9.1.%d", i.next))
			i.machines[m.Name] = true
			progress("machine " + m.Name + " created")
		}
	}
	return nil
}

func (i *fakeInfra) Release(ctx context.Context, cluster string, keep func(string) bool, progress func(string)) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	var gone []string
	for name := range i.machines {
		if keep == nil || !keep(name) {
			gone = append(gone, name)
			delete(i.machines, name)
			i.f.set(name, func(n *fakeNode) { n.online = false })
		}
	}
	slices.Sort(gone)
	i.released = append(i.released, gone)
	return nil
}

func (i *fakeInfra) MachineNames(ctx context.Context, cluster string) ([]string, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	var out []string
	for n := range i.machines {
		out = append(out, n)
	}
	return out, nil
}

func infraClusterfile(image string, masters, nodes int) string {
	return fmt.Sprintf("apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: c1}\nspec:\n  image: %s\n  infra:\n    provider: fake\n    roles: {master: {count: %d}, node: {count: %d}}\n",
		image, masters, nodes)
}

// The engine makes the machines before planning, undoes the image on the
// machines a lower count drops before it has them destroyed, destroys them
// all after a delete, and none with KeepInfra.
func TestInfraHook(t *testing.T) {
	f := newFakeFleet()
	inf := &fakeInfra{f: f, machines: map[string]bool{}}
	e := newEnv(t, f)
	e.opts.Infra = inf
	e.eng = e.newEngine()

	res := e.mustApply(infraClusterfile("test:1", 1, 2))
	if !res.OK || len(res.Nodes) != 3 || outcomes(res)["c1-master-1"].Phase != "master0" {
		t.Fatalf("apply: %s", statuses(res))
	}
	if inf.provided != 1 || len(inf.released) != 1 || len(inf.released[0]) != 0 {
		t.Fatalf("provided %d, released %v", inf.provided, inf.released)
	}

	res = e.mustApply(infraClusterfile("test:1", 1, 1))
	if o := outcomes(res)["c1-node-2"]; o.Action != "remove" || o.Status != protocol.NodeOK {
		t.Fatalf("c1-node-2: %+v, want removed (undone) before it is destroyed", o)
	}
	if got := inf.released[len(inf.released)-1]; !slices.Equal(got, []string{"c1-node-2"}) {
		t.Fatalf("destroyed %v, want [c1-node-2]", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	del := func(keep bool) {
		t.Helper()
		out, err := e.eng.adminDelete(ctx, call(t, protocol.AdminDelete, protocol.ApplyRequest{
			Clusterfile: []byte(infraClusterfile("test:1", 1, 1)), Path: "Clusterfile", KeepInfra: keep}))
		if err != nil || !out.(*protocol.ApplyResult).OK {
			t.Fatalf("delete: %v %+v", err, out)
		}
	}
	n := len(inf.released)
	del(true)
	if len(inf.released) != n || len(inf.machines) != 2 {
		t.Fatalf("delete --keep-infra destroyed machines: %v", inf.released[n:])
	}
	// Applied again and deleted: every machine goes.
	e.mustApply(infraClusterfile("test:1", 1, 1))
	del(false)
	if got := inf.released[len(inf.released)-1]; !slices.Equal(got, []string{"c1-master-1", "c1-node-1"}) || len(inf.machines) != 0 {
		t.Fatalf("delete destroyed %v, left %v", got, inf.machines)
	}
}

func TestInfraRefusedBeforeAnyMachine(t *testing.T) {
	f := newFakeFleet()
	e := newEnv(t, f)
	_, err := e.apply(infraClusterfile("test:1", 1, 0))
	if err == nil || !strings.Contains(err.Error(), "Clusterfile:7: spec.infra: this controller creates no machines") {
		t.Fatalf("no provider: %v", err)
	}
	inf := &fakeInfra{f: f, machines: map[string]bool{}}
	e.opts.Infra = inf
	e.eng = e.newEngine()
	if _, err := e.apply(infraClusterfile("missing:9", 1, 0)); err == nil || !strings.Contains(err.Error(), "spec.image") {
		t.Fatalf("missing image: %v", err)
	}
	bad := strings.Replace(infraClusterfile("test:1", 1, 0), "master: {count: 1}", "gpu: {count: 1}", 1)
	if _, err := e.apply(bad); err == nil || !strings.Contains(err.Error(), `spec.infra.roles.gpu: unknown role "gpu"`) {
		t.Fatalf("unknown role: %v", err)
	}
	if inf.provided != 0 || len(f.nodes) != 0 {
		t.Fatalf("machines made for a Clusterfile that cannot be planned: %d calls, %d nodes", inf.provided, len(f.nodes))
	}
}
