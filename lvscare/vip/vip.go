// Package vip gives the kernel what it needs to accept traffic for a virtual IP:
// a host route over loopback (nftables) or the address on a dummy interface (IPVS).
package vip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultLink is the dummy interface lvscare owns.
const DefaultLink = "lvscare0"

// RouteProtocol marks the routes lvscare adds (see /etc/iproute2/rt_protos), so it
// can find and remove its own routes and no others.
const RouteProtocol = 249

// EnsureRoutes makes lvscare's host routes exactly "VIP/32 dev lo proto 249", one per VIP.
// connect() to a VIP needs some route before the output hook's DNAT can run; a
// unicast route over loopback keeps the node's own address as source (no local
// address, so the node never answers ARP for the VIP), and after DNAT the kernel
// re-routes the packet to the chosen backend. It needs no dummy-link driver.
func EnsureRoutes(vips []netip.Addr) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("look up loopback: %w", err)
	}
	want := map[netip.Addr]bool{}
	for _, a := range vips {
		want[a] = true
	}
	have := map[netip.Addr]bool{}
	routes, err := ownRoutes()
	if err != nil {
		return err
	}
	for _, r := range routes {
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, bits := r.Dst.Mask.Size()
		if want[a.Unmap()] && ones == bits && r.LinkIndex == lo.Attrs().Index {
			have[a.Unmap()] = true
			continue
		}
		if err := netlink.RouteDel(&r); err != nil {
			return fmt.Errorf("remove stale route %s: %w", r.Dst, err)
		}
	}
	for a := range want {
		if have[a] {
			continue
		}
		r := &netlink.Route{LinkIndex: lo.Attrs().Index, Dst: hostNet(a), Scope: netlink.SCOPE_LINK, Protocol: RouteProtocol}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("add route %s dev lo: %w", a, err)
		}
	}
	return nil
}

// RemoveRoutes deletes every route lvscare added.
func RemoveRoutes() error {
	routes, err := ownRoutes()
	if err != nil {
		return err
	}
	for _, r := range routes {
		if err := netlink.RouteDel(&r); err != nil {
			return fmt.Errorf("remove route %s: %w", r.Dst, err)
		}
	}
	return nil
}

func ownRoutes() ([]netlink.Route, error) {
	var out []netlink.Route
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// EnsureAddrs creates the dummy link if needed, brings it up and makes its
// addresses exactly the given VIPs: IPVS only sees traffic to local addresses.
func EnsureAddrs(link string, vips []netip.Addr) error {
	l, err := netlink.LinkByName(link)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("look up link %s: %w", link, err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = link
		if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create dummy link %s (is the dummy driver available?): %w", link, err)
		}
		if l, err = netlink.LinkByName(link); err != nil {
			return fmt.Errorf("look up link %s after creating it: %w", link, err)
		}
	}
	if l.Type() != "dummy" {
		return fmt.Errorf("link %s exists and is a %s, not a dummy link lvscare owns: pick another name", link, l.Type())
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("bring up %s: %w", link, err)
		}
	}
	want := map[netip.Addr]bool{}
	for _, a := range vips {
		want[a] = true
	}
	return ensureAddrs(l, want)
}

func hostNet(a netip.Addr) *net.IPNet {
	bits := 32
	if a.Is6() {
		bits = 128
	}
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}
}

func ensureAddrs(l netlink.Link, want map[netip.Addr]bool) error {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses on %s: %w", l.Attrs().Name, err)
	}
	have := map[netip.Addr]bool{}
	for _, ad := range addrs {
		a, ok := netip.AddrFromSlice(ad.IP)
		if ok && want[a.Unmap()] {
			have[a.Unmap()] = true
			continue
		}
		if err := netlink.AddrDel(l, &ad); err != nil {
			return fmt.Errorf("remove stale address %s from %s: %w", ad.IPNet, l.Attrs().Name, err)
		}
	}
	for a := range want {
		if have[a] {
			continue
		}
		if err := netlink.AddrReplace(l, &netlink.Addr{IPNet: hostNet(a)}); err != nil {
			return fmt.Errorf("add address %s to %s: %w", a, l.Attrs().Name, err)
		}
	}
	return nil
}

// RemoveLink deletes the dummy link, and with it every route and address on it.
// A missing link is not an error.
func RemoveLink(link string) error {
	l, err := netlink.LinkByName(link)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up link %s: %w", link, err)
	}
	if l.Type() != "dummy" {
		return fmt.Errorf("link %s is a %s, not lvscare's dummy link: not removing it", link, l.Type())
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete link %s: %w", link, err)
	}
	return nil
}
