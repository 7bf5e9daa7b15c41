// Package vip gives the kernel what it needs to accept traffic for a virtual IP:
// a dummy interface carrying a host route (nftables) or the address itself (IPVS).
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

// Mode says how the VIP is attached to the dummy interface.
type Mode int

const (
	// Route adds "VIP/32 dev lvscare0": connect() to the VIP succeeds even on a
	// host with no default route, and the host does not answer ARP for the VIP.
	// The output-hook DNAT then re-routes the packet to the chosen backend.
	Route Mode = iota
	// Address adds VIP/32 as a local address, which IPVS needs to see the traffic.
	Address
)

// Ensure creates the dummy link if needed, brings it up and makes its routes
// (or addresses) exactly the given VIPs, removing any it no longer wants.
func Ensure(link string, mode Mode, vips []netip.Addr) error {
	l, err := netlink.LinkByName(link)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return fmt.Errorf("look up link %s: %w", link, err)
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = link
		if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create dummy link %s: %w", link, err)
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
	switch mode {
	case Route:
		return ensureRoutes(l, want)
	case Address:
		return ensureAddrs(l, want)
	}
	return fmt.Errorf("unknown vip mode %d", mode)
}

func hostNet(a netip.Addr) *net.IPNet {
	bits := 32
	if a.Is6() {
		bits = 128
	}
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}
}

func ensureRoutes(l netlink.Link, want map[netip.Addr]bool) error {
	routes, err := netlink.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list routes on %s: %w", l.Attrs().Name, err)
	}
	have := map[netip.Addr]bool{}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		ones, bits := r.Dst.Mask.Size()
		if ok && ones == bits && want[a.Unmap()] {
			have[a.Unmap()] = true
			continue
		}
		if err := netlink.RouteDel(&r); err != nil {
			return fmt.Errorf("remove stale route %s dev %s: %w", r.Dst, l.Attrs().Name, err)
		}
	}
	for a := range want {
		if have[a] {
			continue
		}
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: hostNet(a), Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("add route %s dev %s: %w", a, l.Attrs().Name, err)
		}
	}
	return nil
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

// Remove deletes the dummy link, and with it every route and address on it.
// A missing link is not an error.
func Remove(link string) error {
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
