package planner

import (
	"slices"
	"testing"

	"github.com/flotilla-dev/flotilla/bundle/plan"
)

// TestDeleteCleansLvscare: deleting the cluster (no hosts left) stops every
// service and, right after an lvscare unit's stop, cleans lvscare's rules;
// other services get no clean. An lvscare unit is known by its name or by
// its template's ExecStart.
func TestDeleteCleansLvscare(t *testing.T) {
	img := testImage()
	img.Templates = append(img.Templates, plan.Template{Role: plan.RoleNode, Path: "/etc/systemd/system/vip.service",
		Content: "[Service]\nExecStart=/usr/local/bin/flotilla lvscare --config /etc/vip.yaml\n", Seq: 8})
	in := Input{File: cf(t, threeTwo), Image: img, ImageDigest: "sha256:aaaa", Agents: agents(3)}
	in.Applied = applied(mustPlan(t, in))
	n1 := in.Applied["n1"]
	n1.Services = append(n1.Services, "vip.service", "other.service")
	in.Applied["n1"] = n1
	empty := *in.File // what `flotilla delete` plans: the Clusterfile with no hosts
	empty.Cluster.Hosts = nil
	in.File = &empty
	p := mustPlan(t, in)
	var got []Undo
	for _, u := range p.Node("n1").Undo {
		if u.Kind != UndoRemoveFile && u.Kind != UndoRemoveLayer {
			got = append(got, u)
		}
	}
	want := []Undo{
		{UndoStopService, "other.service"},
		{UndoStopService, "vip.service"}, {UndoCleanLvscare, "vip.service"},
		{UndoStopService, "lvscare.service"}, {UndoCleanLvscare, "lvscare.service"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("n1's service undo:\n got %v\nwant %v", got, want)
	}
	for _, u := range p.Node("m1").Undo {
		if u.Kind == UndoCleanLvscare {
			t.Fatalf("m1 ran no lvscare, yet its undo cleans it: %v", p.Node("m1").Undo)
		}
	}
	// The image is gone: the name still tells.
	in.Image = &plan.Plan{}
	if !IsLvscareUnit(in.Image, "flotilla-lvscare.service") || IsLvscareUnit(in.Image, "vip.service") {
		t.Fatal("IsLvscareUnit without the image's templates")
	}
}
