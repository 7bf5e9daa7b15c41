package rollout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/flotilla-dev/flotilla/internal/testbin"
	"github.com/flotilla-dev/flotilla/protocol"
)

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// newNetns creates an empty network namespace for one test (root, ip, nft).
func newNetns(t *testing.T) string {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, b := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("needs %v", missing)
		}
		t.Skipf("needs %v", missing)
	}
	rnd := make([]byte, 2)
	rand.Read(rnd)
	name := "lvs" + hex.EncodeToString(rnd) + "u"
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return name
}

// inNetns runs fn on a thread inside the namespace; processes it starts are in it too.
func inNetns(t *testing.T, ns string, fn func() error) error {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err)
		}
	}()
	return fn()
}

// TestUndoCleanLvscareRemovesItsRules: the undo planned after an lvscare
// unit's stop runs `flotilla lvscare --clean` and the lvscare table is gone
// (in a namespace of its own; the host's tables are not touched); an agent
// under another --root cleans nothing.
func TestUndoCleanLvscareRemovesItsRules(t *testing.T) {
	ns := newNetns(t)
	bin, err := testbin.Path()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FLOTILLA_BIN", bin)
	hostBefore := sh(t, "nft", "list", "tables")
	addTable := func() {
		sh(t, "ip", "netns", "exec", ns, "nft", "add", "table", "ip", "flotilla-lvscare")
		sh(t, "ip", "netns", "exec", ns, "nft", "add", "chain", "ip", "flotilla-lvscare", "prerouting",
			"{ type nat hook prerouting priority dstnat; }")
	}
	tables := func() string { return sh(t, "ip", "netns", "exec", ns, "nft", "list", "tables") }
	undo := protocol.UndoPayload{Cluster: "c1", Kind: protocol.UndoCleanLvscare, Target: "flotilla-lvscare.service"}

	addTable()
	elsewhere := newNode(t, nil) // files under a temporary --root
	if err := inNetns(t, ns, func() error { _, err := elsewhere.run(protocol.KindUndo, undo); return err }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tables(), "flotilla-lvscare") {
		t.Fatal("an agent under another --root cleaned the host's lvscare rules")
	}

	host := newNode(t, nil)
	host.root = "/"
	var ev *events
	if err := inNetns(t, ns, func() error { ev, err = host.run(protocol.KindUndo, undo); return err }); err != nil {
		t.Fatalf("undo clean-lvscare: %v", err)
	}
	if got := tables(); strings.Contains(got, "flotilla-lvscare") {
		t.Fatalf("lvscare's table is still there after the undo:\n%s", got)
	}
	if out := strings.Join(ev.lines("stdout"), "\n"); !strings.Contains(out, "removed lvscare's rules") {
		t.Errorf("undo output: %s", out)
	}
	if hostAfter := sh(t, "nft", "list", "tables"); hostAfter != hostBefore {
		t.Fatalf("the host's nftables tables changed:\nbefore %s\nafter %s", hostBefore, hostAfter)
	}
	// Cleaning twice (a retried step) is fine.
	if err := inNetns(t, ns, func() error { _, err := host.run(protocol.KindUndo, undo); return err }); err != nil {
		t.Fatalf("second undo clean-lvscare: %v", err)
	}
}
