package nftables

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/flotilla-dev/flotilla/lvscare/dataplane"
)

// newNetns creates an empty named network namespace (name starts with lvs) for one test.
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
	name := "lvs" + hex.EncodeToString(rnd) + "n"
	sh(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	sh(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

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

// in runs fn on a thread inside the namespace.
func in(t testing.TB, ns string, fn func() error) error {
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

func TestReconcileNoticesEveryKindOfDrift(t *testing.T) {
	ns := newNetns(t)
	d := New(Options{})
	svcs := []dataplane.Service{{
		VIP:      netip.MustParseAddrPort("10.77.70.250:80"),
		Backends: []netip.AddrPort{netip.MustParseAddrPort("10.77.70.11:8080"), netip.MustParseAddrPort("10.77.70.12:8080")},
	}}
	reconcile := func() bool {
		t.Helper()
		var changed bool
		if err := in(t, ns, func() (err error) {
			changed, err = d.Reconcile(context.Background(), svcs)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return changed
	}
	nft := func(args ...string) string {
		return sh(t, "ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
	}
	if !reconcile() {
		t.Fatal("first reconcile changed nothing")
	}
	if reconcile() {
		t.Fatal("second reconcile of the same state rewrote the table")
	}
	drifts := []struct {
		name string
		nft  []string
	}{
		{"map element deleted", []string{"delete", "element", "ip", DefaultTable, serviceMap, "{ 10.77.70.250 . tcp . 80 }"}},
		{"endpoint chain flushed", []string{"flush", "chain", "ip", DefaultTable, endpointChain(svcs[0].VIP, svcs[0].Backends[1])}},
		{"hook chain flushed", []string{"flush", "chain", "ip", DefaultTable, outputName}},
		{"foreign chain added", []string{"add", "chain", "ip", DefaultTable, "intruder"}},
		{"table deleted", []string{"delete", "table", "ip", DefaultTable}},
	}
	for _, dr := range drifts {
		nft(dr.nft...)
		if !reconcile() {
			t.Errorf("%s: not noticed", dr.name)
		}
		if out := nft("list", "table", "ip", DefaultTable); !strings.Contains(out, "dnat to 10.77.70.12:8080") || strings.Contains(out, "intruder") {
			t.Errorf("%s: table not restored:\n%s", dr.name, out)
		}
	}
	if routes := sh(t, "ip", "-n", ns, "route", "show", "10.77.70.250"); !strings.Contains(routes, "dev lo proto 249") {
		t.Errorf("VIP route missing: %q", routes)
	}
	// A new VIP replaces the old route; Clean removes table and route.
	svcs[0].VIP = netip.MustParseAddrPort("10.77.70.251:80")
	reconcile()
	if routes := sh(t, "ip", "-n", ns, "route", "show", "proto", "249"); strings.Contains(routes, "10.77.70.250") || !strings.Contains(routes, "10.77.70.251") {
		t.Errorf("routes after VIP change: %q", routes)
	}
	if err := in(t, ns, func() error { return d.Clean(context.Background()) }); err != nil {
		t.Fatal(err)
	}
	if rs := nft("list", "ruleset"); strings.TrimSpace(rs) != "" {
		t.Errorf("ruleset after Clean:\n%s", rs)
	}
	if routes := sh(t, "ip", "-n", ns, "route", "show", "proto", "249"); strings.TrimSpace(routes) != "" {
		t.Errorf("routes after Clean: %q", routes)
	}
}

func TestMasqueradeTable(t *testing.T) {
	ns := newNetns(t)
	m := NewMasquerade("")
	vips := []netip.Addr{netip.MustParseAddr("10.77.70.250"), netip.MustParseAddr("10.77.70.251")}
	ensure := func() {
		t.Helper()
		if err := in(t, ns, func() error { return m.Ensure(vips) }); err != nil {
			t.Fatal(err)
		}
	}
	list := func() string {
		return sh(t, "ip", "netns", "exec", ns, "nft", "list", "ruleset")
	}
	ensure()
	out := list()
	for _, want := range []string{"table ip " + DefaultMasqueradeTable, "10.77.70.250", "ip daddr @vips meta mark set meta mark | " + fmt.Sprintf("0x%08x", MasqueradeMark), "masquerade"} {
		if !strings.Contains(out, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}
	sh(t, "ip", "netns", "exec", ns, "nft", "flush", "table", "ip", DefaultMasqueradeTable)
	ensure()
	if out := list(); !strings.Contains(out, "masquerade") {
		t.Errorf("flushed table not restored:\n%s", out)
	}
	if err := in(t, ns, m.Remove); err != nil {
		t.Fatal(err)
	}
	if out := list(); strings.TrimSpace(out) != "" {
		t.Errorf("ruleset after Remove:\n%s", out)
	}
	if err := NewMasquerade("").Ensure([]netip.Addr{netip.MustParseAddr("fd00::1")}); err == nil {
		t.Error("IPv6 VIP: want an error")
	}
}

// TestReconcileLargeTable: 250 VIPs of 3 backends go out in one batch of about 2,500
// messages, past the kernel's default netlink buffers (EMSGSIZE before socketBuffer).
func TestReconcileLargeTable(t *testing.T) {
	ns := newNetns(t)
	var svcs []dataplane.Service
	for v := range 250 {
		svcs = append(svcs, dataplane.Service{
			VIP: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 77, 70, 1}), uint16(10000+v)),
			Backends: []netip.AddrPort{
				netip.MustParseAddrPort("10.77.70.11:8080"), netip.MustParseAddrPort("10.77.70.12:8080"), netip.MustParseAddrPort("10.77.70.13:8080"),
			},
		})
	}
	d := New(Options{})
	if err := in(t, ns, func() error { _, err := d.Reconcile(context.Background(), svcs); return err }); err != nil {
		t.Fatal(err)
	}
	var changed bool
	if err := in(t, ns, func() (err error) { changed, err = d.Reconcile(context.Background(), svcs); return err }); err != nil || changed {
		t.Fatalf("second reconcile: changed=%v err=%v; want an intact table", changed, err)
	}
	out := sh(t, "ip", "netns", "exec", ns, "nft", "list", "map", "ip", DefaultTable, serviceMap)
	if n := strings.Count(out, "goto svc-"); n != 250 {
		t.Errorf("service map has %d elements, want 250", n)
	}
}
