package planner

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/flotilla-dev/flotilla/controller/clusterfile"
)

// BenchmarkPlan1000 plans a no-op re-apply of 3 masters and 997 nodes selected by range.
func BenchmarkPlan1000(b *testing.B) {
	var ag []Agent
	for i := range 1000 {
		ag = append(ag, Agent{Name: fmt.Sprintf("h%d", i), IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(i%250 + 1)})}, Online: true})
	}
	doc := "apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: big}\nspec:\n  image: reg/etcd:1\n  env: {ETCD_TOKEN: t}\n  hosts:\n" +
		"    - {names: [h0, h1, h2], roles: [master]}\n    - {names: [10.1.0.4-10.1.3.250], roles: [node]}\n"
	f, err := clusterfile.Parse("Clusterfile", []byte(doc))
	if err != nil {
		b.Fatal(err)
	}
	in := Input{File: f, Image: testImage(), ImageDigest: "sha256:aaaa", Agents: ag}
	p, err := Plan(in)
	if err != nil {
		b.Fatal(err)
	}
	if n := len(p.Nodes()); n != 1000 {
		b.Fatalf("planned %d nodes, want 1000", n)
	}
	in.Applied = applied(p)
	b.ResetTimer()
	for b.Loop() {
		p, err := Plan(in)
		if err != nil || p.Changed() {
			b.Fatalf("re-plan: changed=%v err=%v", p != nil && p.Changed(), err)
		}
	}
}
