package nftables

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/flotilla-dev/flotilla/lvscare/dataplane"
)

// BenchmarkReconcile measures one full table rewrite (the atomic batch) and one
// drift check (read back, nothing to write) for 1, 10 and 100 VIPs of 3 backends.
func BenchmarkReconcile(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	for _, n := range []int{1, 10, 100} {
		states := [2][]dataplane.Service{}
		for v := range n {
			vip := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 77, 70, byte(100 + v)}), 80)
			all := []netip.AddrPort{
				netip.MustParseAddrPort("10.77.70.11:8080"), netip.MustParseAddrPort("10.77.70.12:8080"), netip.MustParseAddrPort("10.77.70.13:8080"),
			}
			states[0] = append(states[0], dataplane.Service{VIP: vip, Backends: all})
			states[1] = append(states[1], dataplane.Service{VIP: vip, Backends: all[:2]})
		}
		ns := "lvsbench" + fmt.Sprint(n)
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			b.Fatalf("ip netns add: %v %s", err, out)
		}
		b.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
			b.Fatalf("lo up: %v %s", err, out)
		}
		d := New(Options{})
		b.Run(fmt.Sprintf("rewrite/vips=%d", n), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				if err := in(b, ns, func() error { _, err := d.Reconcile(context.Background(), states[i%2]); return err }); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("check/vips=%d", n), func(b *testing.B) {
			for b.Loop() {
				if err := in(b, ns, func() error {
					changed, err := d.Reconcile(context.Background(), states[1])
					if err == nil && changed {
						err = fmt.Errorf("drift check rewrote an intact table")
					}
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
