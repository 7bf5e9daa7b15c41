package rolloutview

import (
	"bytes"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/protocol"
)

// TestWritePlan: the text plan has the header, one row per node (offline ones
// marked), and each changed node's work in run order with its marks.
func TestWritePlan(t *testing.T) {
	p := &protocol.ClusterPlan{Cluster: "demo", Image: "reg/etcd:1", ImageDigest: "sha256:abcdef0123456789",
		Phases: []protocol.PlanPhase{
			{Name: "master0", Parallelism: 1, Nodes: []protocol.NodePlan{{Node: "m1", IP: "10.0.0.1", Online: true, Roles: []string{"master"}, Master0: true, Action: protocol.ActionCreate,
				Layers: []protocol.PlannedLayer{{Digest: "sha256:1111111111111111", Size: 2048, Role: "all", Seq: 1}},
				Files:  []protocol.PlannedFile{{Path: "/etc/etcd/etcd.conf", Mode: 0o600, Digest: "sha256:2222222222222222", Seq: 2, Source: "template"}},
				Steps:  []protocol.PlannedStep{{Kind: protocol.KindService, Command: "etcd.service", Role: "master", Seq: 3, Reason: "new"}}}}},
			{Name: "node", Parallelism: 1, Nodes: []protocol.NodePlan{{Node: "n1", IP: "10.0.1.2", Roles: []string{"node"}, Action: protocol.ActionNoop}}},
			{Name: protocol.PhaseRemove, Parallelism: 1, Nodes: []protocol.NodePlan{{Node: "old", Action: protocol.ActionRemove,
				Undo: []protocol.PlannedUndo{{Kind: protocol.UndoStopService, Target: "etcd.service"}, {Kind: protocol.UndoRemoveLayer, Target: "sha256:3333333333333333"}}}}},
		}}
	var text, js bytes.Buffer
	if err := WritePlan(&text, p); err != nil {
		t.Fatal(err)
	}
	if err := WritePlanJSON(&js, p); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"cluster demo: image reg/etcd:1 (sha256:abcdef012345)", "master0  m1", "10.0.1.2 (offline)",
		"+ layer sha256:111111111111", "+ file /etc/etcd/etcd.conf 0600", "> service etcd.service",
		"- stop-service etcd.service", "- remove-layer sha256:333333333333"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text plan lacks %q:\n%s", want, text.String())
		}
	}
	if strings.Contains(text.String(), "n1 (noop)") {
		t.Errorf("text plan details a noop node:\n%s", text.String())
	}
	if !strings.Contains(js.String(), `"action": "create"`) {
		t.Errorf("JSON plan lacks the action:\n%s", js.String())
	}
}

// TestWritePlanImages: a node's images step shows in the table (count, "="
// when imported already) and in its work (platform, blobs, each image with its
// roles), and images it drops are listed.
func TestWritePlanImages(t *testing.T) {
	tool := "sha256:b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1"
	images := func(skip bool) *protocol.PlannedImages {
		return &protocol.PlannedImages{Platform: "linux/arm64", Skip: skip, Seq: 2, Size: 7500,
			Blobs: make([]protocol.PlannedBlob, 5),
			Images: []protocol.PlannedContainerImage{
				{Name: "registry.test/app:1", Digest: "sha256:a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1", Roles: []string{"all"}},
				{Name: "registry.test/tool@" + tool, Digest: tool, Roles: []string{"node"}},
			}}
	}
	plan := func(skip bool, drop ...string) *protocol.ClusterPlan {
		return &protocol.ClusterPlan{Cluster: "demo", Image: "reg/app:2", Phases: []protocol.PlanPhase{{Name: "node", Nodes: []protocol.NodePlan{{
			Node: "n1", Online: true, Action: protocol.ActionUpdate, Images: images(skip), DropImages: drop,
			Steps: []protocol.PlannedStep{{Kind: protocol.KindRun, Command: "app --check", Seq: 3, Reason: "new"}}}}}}}
	}
	var text bytes.Buffer
	if err := WritePlan(&text, plan(false, "registry.test/old:1")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"IMAGES", "+ images for linux/arm64: fetch what the node's cache lacks of 5 blobs",
		"+ image registry.test/app:1 sha256:a1a1a1a1a1a1 (roles all)", "+ image registry.test/tool@" + tool + " (roles node)",
		"- image registry.test/old:1 (no longer carried"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("plan text lacks %q:\n%s", want, text.String())
		}
	}
	text.Reset()
	if err := WritePlan(&text, plan(true)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "=2") || !strings.Contains(text.String(), "= images for linux/arm64: imported already:") {
		t.Errorf("re-apply plan does not show n1's 2 images as present:\n%s", text.String())
	}
}

// TestWritePlanMembership: a joining member's JOIN shows before its work with
// the member it runs on, a leaving one's LEAVE after its undo, in their order.
func TestWritePlanMembership(t *testing.T) {
	join := &protocol.PlannedMembership{Role: "master", Quorum: true, State: "existing", Peers: []string{"10.0.0.1", "10.0.0.4"}, Via: []string{"m1", "m2"},
		Join: []protocol.PlannedStep{{Kind: protocol.KindRun, Command: "member add 10.0.0.4", Line: 7}}}
	leave := &protocol.PlannedMembership{Role: "master", Quorum: true, Via: []string{"m1"},
		Leave: []protocol.PlannedStep{{Kind: protocol.KindRun, Command: "member remove 10.0.0.3", Line: 8}}}
	p := &protocol.ClusterPlan{Cluster: "demo", Image: "reg/etcd:1", HealthCheck: &protocol.PlannedStep{Command: "health"},
		Phases: []protocol.PlanPhase{
			{Name: protocol.PhaseEvict, Parallelism: 1, Quorum: true, Nodes: []protocol.NodePlan{{Node: "m3", Action: protocol.ActionRemove, Membership: leave}}},
			{Name: "master", Parallelism: 1, Quorum: true, Nodes: []protocol.NodePlan{{Node: "m4", IP: "10.0.0.4", Online: true, Roles: []string{"master"}, Action: protocol.ActionCreate, Membership: join,
				Steps: []protocol.PlannedStep{{Kind: protocol.KindService, Command: "etcd.service", Role: "master", Seq: 3, Reason: "new node"}}}}},
		}}
	var text bytes.Buffer
	if err := WritePlan(&text, p); err != nil {
		t.Fatal(err)
	}
	assertInOrder(t, text.String(), []string{"evict", "m3", "master", "m4",
		"m3 (remove):", "offline: its cleanup and undo wait until it is back", "then it leaves the master membership, on member m1:", "> leave member remove 10.0.0.3 (Kubefile line 8)",
		"m4 (create):", "joins the master membership (existing, peers 10.0.0.1 10.0.0.4); first, on member m1 (else m2):", "> join member add 10.0.0.4 (Kubefile line 7)",
		"> service etcd.service", "then the health check (quorum role master: one member at a time)"})
}
