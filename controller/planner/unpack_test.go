package planner

import (
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/bundle/plan"
)

// TestUnpackPolicyReachesEveryLayer: the image's dev.flotilla.unpack.*
// labels go with every layer of every node; an image without them leaves the
// agent's defaults; a bad value is a planning error naming the label.
func TestUnpackPolicyReachesEveryLayer(t *testing.T) {
	img := testImage()
	p := mustPlan(t, Input{File: cf(t, threeTwo), Image: img, Agents: agents(3)})
	for _, n := range p.Nodes() {
		for _, l := range n.Layers {
			if l.Unpack != nil {
				t.Fatalf("%s: layer %s has an unpack policy %+v from an image that sets none", n.Node, l.Digest, *l.Unpack)
			}
		}
	}
	img = testImage()
	img.Labels = map[string]string{plan.LabelUnpackMaxBytes: "8GiB", plan.LabelUnpackSetuid: "keep"}
	p = mustPlan(t, Input{File: cf(t, threeTwo), Image: img, Agents: agents(3)})
	want := plan.UnpackPolicy{MaxBytes: 8 << 30, KeepSetuid: true}
	layers := 0
	for _, n := range p.Nodes() {
		for _, l := range n.Layers {
			layers++
			if l.Unpack == nil || *l.Unpack != want {
				t.Fatalf("%s: layer %s unpack policy %v, want %+v", n.Node, l.Digest, l.Unpack, want)
			}
		}
	}
	if layers == 0 {
		t.Fatal("no layers planned: the test proves nothing")
	}
	img.Labels[plan.LabelUnpackSetuid] = "sometimes"
	if _, err := Plan(Input{File: cf(t, threeTwo), Image: img, Agents: agents(3)}); err == nil || !strings.Contains(err.Error(), plan.LabelUnpackSetuid) {
		t.Fatalf("bad label: %v", err)
	}
}
