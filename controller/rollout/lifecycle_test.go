package rollout

import (
	"context"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/protocol"
)

// TestScaleUpgradeDelete: scale down undoes the removed node and forgets it, scale up
// only works on the new node, an upgrade of the masters' layer re-runs only what
// depends on it, and delete undoes every node and the cluster's state.
func TestScaleUpgradeDelete(t *testing.T) {
	f := newFakeFleet("m1", "n1", "n2", "n3")
	e := newEnv(t, f)
	ctx := context.Background()
	res := e.mustApply(clusterfileFor("c1", "test:1", []string{"m1"}, []string{"n1", "n2"}, ""))
	if !res.OK {
		t.Fatalf("apply: %s", statuses(res))
	}

	// scale down: n2 leaves
	res = e.mustApply(clusterfileFor("c1", "test:1", []string{"m1"}, []string{"n1"}, ""))
	got := outcomes(res)
	if o := got["n2"]; !res.OK || o.Action != "remove" || o.Status != protocol.NodeOK {
		t.Fatalf("scale down: %s", statuses(res))
	}
	for _, step := range []string{"undo remove-file /etc/t/app.conf", "undo remove-layer", "forget"} {
		if f.executed("n2", step) == 0 {
			t.Errorf("removed node n2 did not run %q", step)
		}
	}
	if n := len(f.node("n2").applied); n != 0 {
		t.Errorf("n2 still has %d applied digests after removal", n)
	}
	applied, err := e.eng.state.appliedOf(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := applied["n2"]; ok || len(applied) != 2 {
		t.Errorf("applied state after scale down: %v", keysOf(applied))
	}
	for _, n := range []string{"m1", "n1"} {
		if got[n].Status != protocol.NodeNoop {
			t.Errorf("scale down: kept node %s is %s, want noop", n, got[n].Status)
		}
	}

	// scale up: n3 joins
	tasks := f.taskCount()
	res = e.mustApply(clusterfileFor("c1", "test:1", []string{"m1"}, []string{"n1", "n3"}, ""))
	got = outcomes(res)
	if !res.OK || got["n3"].Action != "create" || got["n3"].Status != protocol.NodeOK || got["n1"].Status != protocol.NodeNoop {
		t.Fatalf("scale up: %s", statuses(res))
	}
	if n := f.taskCount() - tasks; n != 1 {
		t.Errorf("scale up dispatched %d tasks, want 1 (the new node)", n)
	}

	// upgrade: the masters' layer changes
	files := map[string]string{}
	for k, v := range testFiles {
		files[k] = v
	}
	files["master.txt"] = "master v2\n"
	buildImage(t, e.store, "test:2", testKubefile, files)
	tasks = f.taskCount()
	res = e.mustApply(clusterfileFor("c1", "test:2", []string{"m1"}, []string{"n1", "n3"}, ""))
	got = outcomes(res)
	if !res.OK || got["m1"].Status != protocol.NodeOK || got["n1"].Status != protocol.NodeNoop || got["n3"].Status != protocol.NodeNoop {
		t.Fatalf("upgrade: %s", statuses(res))
	}
	if n := f.taskCount() - tasks; n != 1 {
		t.Errorf("upgrade dispatched %d tasks, want 1 (m1 only)", n)
	}
	if f.executed("m1", "run: echo master") != 2 || f.executed("m1", "undo remove-layer") != 1 || f.executedPrefix("m1", "layer ") != 3 {
		t.Errorf("upgrade on m1: echo master %d (want 2), undo remove-layer %d (want 1), layers %d (want 3 in all)",
			f.executed("m1", "run: echo master"), f.executed("m1", "undo remove-layer"), f.executedPrefix("m1", "layer "))
	}
	st, err := e.eng.Status(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st[0].Nodes {
		if n.Drift || n.Applied != st[0].ImageDigest {
			t.Errorf("after upgrade: %s drift %t applied %s want %s", n.Node, n.Drift, n.Applied, st[0].ImageDigest)
		}
	}
	f.set("n1", func(n *fakeNode) { n.online = false })
	st, err = e.eng.Status(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st[0].Nodes {
		if n.Drift != (n.Node == "n1") {
			t.Errorf("with n1 offline: %s drift %t", n.Node, n.Drift)
		}
	}
	f.set("n1", func(n *fakeNode) { n.online = true })

	// delete
	out, err := e.eng.adminDelete(ctx, call(t, protocol.AdminDelete, protocol.ApplyRequest{Clusterfile: []byte(clusterfileFor("c1", "test:2", []string{"m1"}, []string{"n1", "n3"}, "")), Path: "Clusterfile"}))
	if err != nil {
		t.Fatal(err)
	}
	dres := out.(*protocol.ApplyResult)
	if !dres.OK || len(dres.Nodes) != 3 {
		t.Fatalf("delete: %s", statuses(dres))
	}
	for _, n := range []string{"m1", "n1", "n3"} {
		if len(f.node(n).applied) != 0 {
			t.Errorf("%s keeps %d applied digests after delete", n, len(f.node(n).applied))
		}
	}
	if _, err := e.eng.Status(ctx, "c1"); err == nil || !strings.Contains(err.Error(), "not known") {
		t.Errorf("status after delete: %v, want not known", err)
	}
	if applied, _ := e.eng.state.appliedOf(ctx, "c1"); len(applied) != 0 {
		t.Errorf("applied state left after delete: %v", keysOf(applied))
	}
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestBadInputsFailBeforeAnything: every validation error names the file:line or
// field, and nothing is dispatched or stored.
func TestBadInputsFailBeforeAnything(t *testing.T) {
	f := newFakeFleet("m1", "n1")
	e := newEnv(t, f)
	buildImage(t, e.store, "badtmpl:1", "FROM scratch\nCOPY bad.conf.tmpl /etc/t/\nON all RUN true\n",
		map[string]string{"bad.conf.tmpl": "x={{ .Env.MISSING_KEY }}\n"})
	for _, tc := range []struct {
		name, cf string
		want     []string
	}{
		{"unknown role", strings.Replace(clusterfileFor("c1", "test:1", []string{"m1"}, nil, ""), "[master]", "[mastr]", 1),
			[]string{"Clusterfile:", "spec.hosts[0].roles[0]", `unknown role "mastr"`}},
		{"duplicate host", clusterfileFor("c1", "test:1", []string{"m1"}, []string{"m1"}, ""),
			[]string{"Clusterfile:9", "spec.hosts[1].names[0]", "duplicate host"}},
		{"host without agent", clusterfileFor("c1", "test:1", []string{"m1"}, []string{"ghost"}, ""),
			[]string{"Clusterfile:", "spec.hosts[1].names[0]", "ghost matches no agent"}},
		{"image missing", clusterfileFor("c1", "nope:9", []string{"m1"}, nil, ""),
			[]string{"spec.image", "nope:9", "flotilla pull/load it on the controller host"}},
		{"template unknown key", clusterfileFor("c1", "badtmpl:1", []string{"m1"}, nil, ""),
			[]string{"/etc/t/bad.conf", "MISSING_KEY"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.apply(tc.cf)
			if err == nil {
				t.Fatal("apply succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			_, perr := e.eng.adminPlan(context.Background(), call(t, protocol.AdminPlan, protocol.ApplyRequest{Clusterfile: []byte(tc.cf), Path: "Clusterfile"}))
			if perr == nil || perr.Error() != err.Error() {
				t.Errorf("plan error %v, want the apply's", perr)
			}
		})
	}
	if n := f.taskCount(); n != 0 {
		t.Errorf("%d tasks dispatched for bad inputs", n)
	}
	if names, _ := e.eng.state.clusterNames(context.Background()); len(names) != 0 {
		t.Errorf("bad inputs stored clusters %v", names)
	}
}

// TestRemoveUnreachable: a removed node that is offline is reported unreachable after
// the timeout without halting the other removals, and its removal is retried by the
// next apply once it is back.
func TestRemoveUnreachable(t *testing.T) {
	f := newFakeFleet("m1", "n1", "n2", "n3")
	e := newEnv(t, f)
	e.mustApply(clusterfileFor("c1", "test:1", []string{"m1"}, []string{"n1", "n2", "n3"}, "{parallelism: 1}"))
	f.set("n2", func(n *fakeNode) { n.online = false })
	res := e.mustApply(clusterfileFor("c1", "test:1", []string{"m1"}, []string{"n1"}, "{parallelism: 1}"))
	got := outcomes(res)
	if res.OK || res.Halted || got["n2"].Status != protocol.NodeUnreachable || got["n3"].Status != protocol.NodeOK {
		t.Fatalf("scale down with n2 offline: ok %t halted %t: %s", res.OK, res.Halted, statuses(res))
	}
	applied, err := e.eng.state.appliedOf(context.Background(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := applied["n2"]; !ok {
		t.Fatal("the unreachable removed node's applied state was dropped: its removal would never be retried")
	}
	f.set("n2", func(n *fakeNode) { n.online = true })
	res = e.mustApply(clusterfileFor("c1", "test:1", []string{"m1"}, []string{"n1"}, "{parallelism: 1}"))
	if o := outcomes(res)["n2"]; !res.OK || o.Action != "remove" || o.Status != protocol.NodeOK || len(f.node("n2").applied) != 0 {
		t.Errorf("removal retried: %s; n2 keeps %d digests", statuses(res), len(f.node("n2").applied))
	}
}

// TestCleanupOnLeave: CLEANUP commands never run on a node that stays; a node
// that leaves (scale down, delete) runs its roles' ones, rendered for it when
// it was applied, last first and before anything is undone; an upgrade that
// changes them is what a later removal runs.
func TestCleanupOnLeave(t *testing.T) {
	const kf = testKubefile + `ON node CLEANUP echo leaving {{ .Node.Name }} "$CLEANUP_ENV"
CLEANUP echo bye
`
	f := newFakeFleet("m1", "n1", "n2")
	e := newEnv(t, f)
	ctx := context.Background()
	buildImage(t, e.store, "test:c1", kf, testFiles)
	res := e.mustApply(clusterfileFor("c1", "test:c1", []string{"m1"}, []string{"n1", "n2"}, ""))
	if !res.OK {
		t.Fatalf("apply: %s", statuses(res))
	}
	for _, n := range []string{"m1", "n1", "n2"} {
		if c := f.executedPrefix(n, "cleanup:"); c != 0 {
			t.Errorf("%s ran %d cleanup steps while joining", n, c)
		}
	}
	applied, err := e.eng.state.appliedOf(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if got := applied["n1"].Cleanup; len(got) != 2 || !strings.Contains(got[0].Command, "leaving") || !strings.Contains(got[0].Command, "n1") || got[1].Command != "echo bye" {
		t.Errorf("n1's recorded cleanup = %+v, want its leave command rendered for n1, then echo bye", got)
	}
	if got := applied["m1"].Cleanup; len(got) != 1 || got[0].Command != "echo bye" {
		t.Errorf("m1's recorded cleanup = %+v, want only the all-roles one", got)
	}

	// scale down: n2 runs echo bye, then its leave command, then its undo.
	res = e.mustApply(clusterfileFor("c1", "test:c1", []string{"m1"}, []string{"n1"}, ""))
	if o := outcomes(res)["n2"]; !res.OK || o.Status != protocol.NodeOK {
		t.Fatalf("scale down: %s", statuses(res))
	}
	task := f.lastTask("n2")
	if task == nil || len(task.Steps) < 3 {
		t.Fatalf("n2's removal task: %+v", task)
	}
	if s := task.Steps[0]; s.Kind != protocol.KindRun || s.Shell != "echo bye" {
		t.Errorf("n2's first removal step = %s %q, want run echo bye", s.Kind, s.Shell)
	}
	if s := task.Steps[1]; s.Kind != protocol.KindRun || !strings.Contains(s.Shell, "leaving") || !strings.Contains(s.Shell, "n2") || s.Digest != "" {
		t.Errorf("n2's second removal step = %s %q (digest %q), want its leave command, no digest", s.Kind, s.Shell, s.Digest)
	}
	if s := task.Steps[2]; s.Kind != protocol.KindUndo {
		t.Errorf("n2's third removal step = %s %s, want the undo after the cleanup", s.Kind, s.Name)
	}
	for _, n := range []string{"m1", "n1"} {
		if c := f.executedPrefix(n, "cleanup:"); c != 0 {
			t.Errorf("kept node %s ran %d cleanup steps", n, c)
		}
	}

	// upgrade that changes only the cleanup: the nodes record the new one.
	buildImage(t, e.store, "test:c2", strings.Replace(kf, "echo bye", "echo bye2", 1), testFiles)
	res = e.mustApply(clusterfileFor("c1", "test:c2", []string{"m1"}, []string{"n1"}, ""))
	if !res.OK {
		t.Fatalf("upgrade: %s", statuses(res))
	}
	// delete: every node leaves and runs what it recorded.
	out, err := e.eng.adminDelete(ctx, call(t, protocol.AdminDelete, protocol.ApplyRequest{Clusterfile: []byte(clusterfileFor("c1", "test:c2", []string{"m1"}, []string{"n1"}, "")), Path: "Clusterfile"}))
	if err != nil {
		t.Fatal(err)
	}
	if dres := out.(*protocol.ApplyResult); !dres.OK {
		t.Fatalf("delete: %s", statuses(dres))
	}
	if s := f.lastTask("m1").Steps[0]; s.Shell != "echo bye2" {
		t.Errorf("m1's first delete step runs %q, want echo bye2 (the upgraded image's)", s.Shell)
	}
	if c := f.executedPrefix("m1", "cleanup: echo leaving"); c != 0 {
		t.Errorf("master m1 ran the node role's cleanup %d times", c)
	}
	if s := f.lastTask("n1").Steps; len(s) < 2 || s[0].Shell != "echo bye2" || !strings.Contains(s[1].Shell, "n1") {
		t.Errorf("n1's delete task starts with %v, want echo bye2 then its leave command", s[:min(2, len(s))])
	}
}
