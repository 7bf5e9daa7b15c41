package planner

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestWirePlan: the plan `flotilla plan` gets has the actions and leaks no env
// or rendered content (the text rendering is tested in cmd/flotilla/internal/rolloutview).
func TestWirePlan(t *testing.T) {
	in := Input{File: cf(t, threeTwo), Image: testImage(), ImageDigest: "sha256:abcdef0123456789", Agents: agents(3)}
	in.Agents[4].Online = false
	p := mustPlan(t, in)
	js, err := json.MarshalIndent(p.Wire(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(js), `"action": "create"`) || strings.Contains(string(js), "prod") {
		t.Errorf("JSON plan lacks the action or leaks env/content (token \"prod\"):\n%s", js)
	}
	w := p.Wire()
	if len(w.Phases) != len(p.Phases) || len(w.Nodes()) != len(p.Nodes()) {
		t.Errorf("wire plan has %d phases, %d nodes; the plan %d, %d", len(w.Phases), len(w.Nodes()), len(p.Phases), len(p.Nodes()))
	}
	for i, n := range p.Nodes() {
		wn := w.Nodes()[i]
		if wn.Node != n.Node || wn.Action != n.Action || len(wn.Layers) != len(n.Layers) || len(wn.Files) != len(n.Files) || len(wn.Steps) != len(n.Steps) || len(wn.Undo) != len(n.Undo) {
			t.Errorf("wire node %d = %+v, plan %+v", i, wn, n)
		}
		if len(wn.Ordered()) != len(n.Ordered()) {
			t.Errorf("node %s: %d wire items in order, %d in the plan", n.Node, len(wn.Ordered()), len(n.Ordered()))
		}
	}
}
