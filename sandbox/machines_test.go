package sandbox_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/sandbox"
	"github.com/vishvananda/netlink"
)

// Nodes added one by one to a fleet booted with none: user data runs at first
// boot, limits are on the node's cgroups, AddNode is idempotent, RemoveNode
// leaves nothing of the node, and another process sees the same nodes.
func TestAddAndRemoveNodes(t *testing.T) {
	f := fleettest.New(t, sandbox.Options{Name: "flti2", Subnet: "10.77.12.64/28", N: 0})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	spec := sandbox.NodeSpec{Name: "web-1", UserData: []byte("#!/bin/sh\necho ran > /root/user-data-ran\n"),
		Tags: map[string]string{"cluster": "c1"}, CPUs: 0.5, MemoryBytes: 256 << 20}
	n, err := f.AddNode(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if n.IP.String() != "10.77.12.66" {
		t.Errorf("first node's IP %s, want 10.77.12.66", n.IP)
	}
	again, err := f.AddNode(ctx, sandbox.NodeSpec{Name: "web-1", Tags: map[string]string{"cluster": "other"}})
	if err != nil || again.IP != n.IP || again.Tags["cluster"] != "c1" {
		t.Fatalf("AddNode again: %+v %v (want the same node, first spec kept)", again, err)
	}
	if _, err := f.AddNode(ctx, sandbox.NodeSpec{Name: "web-2", NoWait: true}); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitRunning(ctx, "web-2"); err != nil {
		t.Fatal(err)
	}
	// User data: ran once, then deleted.
	if err := poll.Until(ctx, 60*time.Second, 200*time.Millisecond, func() bool {
		out, err := f.Exec(ctx, "web-1", "cat", "/root/user-data-ran")
		return err == nil && strings.TrimSpace(string(out)) == "ran"
	}); err != nil {
		t.Fatalf("user data did not run: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.Root("web-1"), "var/lib/flotilla-sandbox/user-data")); err == nil {
		t.Error("user data still on the node after it ran")
	}
	cpus, mem, err := f.Limits("web-1")
	if err != nil || cpus != 0.5 || mem != 256<<20 {
		t.Errorf("limits: %v %d %v", cpus, mem, err)
	}
	// Another process (Open) sees both nodes with their tags.
	g, err := sandbox.Open("flti2")
	if err != nil || len(g.Nodes()) != 2 || g.Nodes()[0].Tags["cluster"] != "c1" {
		t.Fatalf("Open: %+v %v", g.Nodes(), err)
	}
	if err := g.RemoveNode(ctx, "web-1"); err != nil {
		t.Fatal(err)
	}
	if err := g.RemoveNode(ctx, "web-1"); err != nil {
		t.Fatalf("RemoveNode again: %v", err)
	}
	if _, err := os.Stat(f.Root("web-1")); err == nil {
		t.Error("web-1's root is still there")
	}
	if _, err := os.Stat(f.NetnsPath("web-1")); err == nil {
		t.Error("web-1's netns file is still there")
	}
	if _, err := netlink.LinkByName("flti2v1"); err == nil {
		t.Error("web-1's veth is still there")
	}
	if m, _ := filepath.Glob("/sys/fs/cgroup/*/flti2-web-1"); len(m) > 0 {
		t.Errorf("cgroups left: %v", m)
	}
	// Its index and address are free again.
	n3, err := f.AddNode(ctx, sandbox.NodeSpec{Name: "web-3"})
	if err != nil || n3.IP.String() != "10.77.12.66" {
		t.Fatalf("web-3: %+v %v (want web-1's freed address)", n3, err)
	}
	if _, err := f.AddNode(ctx, sandbox.NodeSpec{Name: "Bad_Name"}); err == nil {
		t.Error("a bad node name was accepted")
	}
}
