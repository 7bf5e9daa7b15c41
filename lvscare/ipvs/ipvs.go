// Package ipvs is lvscare's IPVS dataplane: one virtual service per VIP with
// masquerading real servers, and the VIP as a local address on a dummy link.
package ipvs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"github.com/flotilla-dev/flotilla/lvscare/dataplane"
	"github.com/flotilla-dev/flotilla/lvscare/nftables"
	"github.com/flotilla-dev/flotilla/lvscare/vip"
)

// Handle is the part of *ipvs.Handle the dataplane uses; tests give a fake.
type Handle interface {
	GetServices() ([]*mobyipvs.Service, error)
	NewService(*mobyipvs.Service) error
	DelService(*mobyipvs.Service) error
	GetDestinations(*mobyipvs.Service) ([]*mobyipvs.Destination, error)
	NewDestination(*mobyipvs.Service, *mobyipvs.Destination) error
	DelDestination(*mobyipvs.Service, *mobyipvs.Destination) error
}

// Link holds the VIPs as local addresses; tests give a fake.
type Link interface {
	// Addrs lists the VIPs currently on the link: lvscare owns the IPVS services on them.
	Addrs() ([]netip.Addr, error)
	Ensure(vips []netip.Addr) error
	Remove() error
}

// Masquerader marks connections to the VIPs and masquerades them on the way out
// (nftables.Masquerade); tests give a fake.
type Masquerader interface {
	Ensure(vips []netip.Addr) error
	Remove() error
}

// Supported reports whether this kernel has IPVS. moby/ipvs.New succeeds even
// without it, so ask the generic netlink controller for the IPVS family instead.
func Supported() error {
	if _, err := os.Stat("/proc/net/ip_vs"); err == nil {
		return nil
	}
	if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
		return fmt.Errorf("kernel has no IPVS (no /proc/net/ip_vs, no IPVS generic netlink family: %w); load ip_vs or use --dataplane nftables", err)
	}
	return nil
}

// Dataplane programs IPVS.
type Dataplane struct {
	h    Handle
	link Link
	masq Masquerader
	log  *slog.Logger
	mu   sync.Mutex
}

var _ dataplane.Dataplane = (*Dataplane)(nil)

// conntrackSysctl makes IPVS keep conntrack entries, which masquerading needs.
const conntrackSysctl = "/proc/sys/net/ipv4/vs/conntrack"

// New opens IPVS in the current network namespace, after checking that the kernel has it.
// Like kube-proxy's IPVS mode, the VIPs are local addresses on a dummy link (so
// IPVS sees forwarded traffic too) and an nftables table masquerades VIP traffic.
func New(log *slog.Logger) (*Dataplane, error) {
	if err := Supported(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(conntrackSysctl, []byte("1"), 0o644); err != nil {
		return nil, fmt.Errorf("enable IPVS conntrack for masquerading: %w", err)
	}
	h, err := mobyipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("open IPVS netlink: %w", err)
	}
	return NewWith(h, dummyLink{name: vip.DefaultLink}, nftables.NewMasquerade(""), log), nil
}

// NewWith builds a dataplane over any Handle, Link and Masquerader.
func NewWith(h Handle, link Link, masq Masquerader, log *slog.Logger) *Dataplane {
	if log == nil {
		log = slog.Default()
	}
	return &Dataplane{h: h, link: link, masq: masq, log: log}
}

// Name implements dataplane.Dataplane.
func (d *Dataplane) Name() string { return "ipvs" }

type svcKey struct {
	addr netip.Addr
	port uint16
}

func keyOf(s *mobyipvs.Service) (svcKey, bool) {
	a, ok := netip.AddrFromSlice(s.Address)
	return svcKey{a.Unmap(), s.Port}, ok && s.FWMark == 0 && s.Protocol == syscall.IPPROTO_TCP
}

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return syscall.AF_INET
	}
	return syscall.AF_INET6
}

func ipvsService(v netip.AddrPort) *mobyipvs.Service {
	mask := uint32(0xffffffff)
	if v.Addr().Is6() {
		mask = 128
	}
	return &mobyipvs.Service{
		Address: v.Addr().AsSlice(), Port: v.Port(), Protocol: syscall.IPPROTO_TCP,
		AddressFamily: family(v.Addr()), SchedName: mobyipvs.RoundRobin, Netmask: mask,
	}
}

// Reconcile implements dataplane.Dataplane: services on VIPs lvscare owns (the
// addresses on its link) that are not wanted are deleted, unknown real servers are
// removed and missing ones added. A service with no real server makes IPVS refuse
// new connections (ICMP port unreachable) instead of letting them hang.
func (d *Dataplane) Reconcile(ctx context.Context, services []dataplane.Service) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	services = dataplane.Normalize(services)
	owned := map[netip.Addr]bool{}
	linkAddrs, err := d.link.Addrs()
	if err != nil {
		return false, err
	}
	for _, a := range linkAddrs {
		owned[a] = true
	}
	want := map[svcKey]dataplane.Service{}
	var vips []netip.Addr
	for _, s := range services {
		owned[s.VIP.Addr()] = true
		want[svcKey{s.VIP.Addr(), s.VIP.Port()}] = s
		vips = append(vips, s.VIP.Addr())
	}
	if err := d.link.Ensure(vips); err != nil {
		return false, err
	}
	if err := d.masq.Ensure(vips); err != nil {
		return false, err
	}
	have, err := d.h.GetServices()
	if err != nil {
		return false, fmt.Errorf("list IPVS services: %w", err)
	}
	changed := false
	present := map[svcKey]*mobyipvs.Service{}
	for _, s := range have {
		k, ok := keyOf(s)
		if !ok || !owned[k.addr] {
			continue
		}
		if _, wanted := want[k]; !wanted {
			if err := d.h.DelService(s); err != nil {
				return changed, fmt.Errorf("delete stale IPVS service %s: %w", netip.AddrPortFrom(k.addr, k.port), err)
			}
			changed = true
			continue
		}
		present[k] = s
	}
	for k, s := range want {
		svc := present[k]
		if svc == nil {
			svc = ipvsService(s.VIP)
			if err := d.h.NewService(svc); err != nil {
				return changed, fmt.Errorf("create IPVS service %s: %w", s.VIP, err)
			}
			changed = true
		}
		c, err := d.reconcileDests(svc, s)
		changed = changed || c
		if err != nil {
			return changed, err
		}
	}
	return changed, nil
}

func (d *Dataplane) reconcileDests(svc *mobyipvs.Service, s dataplane.Service) (bool, error) {
	dests, err := d.h.GetDestinations(svc)
	if err != nil {
		return false, fmt.Errorf("list real servers of %s: %w", s.VIP, err)
	}
	wantB := map[netip.AddrPort]bool{}
	for _, b := range s.Backends {
		wantB[b] = true
	}
	changed := false
	haveB := map[netip.AddrPort]bool{}
	for _, dst := range dests {
		a, _ := netip.AddrFromSlice(dst.Address)
		b := netip.AddrPortFrom(a.Unmap(), dst.Port)
		if wantB[b] && dst.ConnectionFlags&mobyipvs.ConnFwdMask == mobyipvs.ConnectionFlagMasq {
			haveB[b] = true
			continue
		}
		if err := d.h.DelDestination(svc, dst); err != nil {
			return changed, fmt.Errorf("remove real server %s from %s: %w", b, s.VIP, err)
		}
		changed = true
	}
	for _, b := range s.Backends {
		if haveB[b] {
			continue
		}
		dst := &mobyipvs.Destination{Address: b.Addr().AsSlice(), Port: b.Port(), Weight: 1,
			ConnectionFlags: mobyipvs.ConnectionFlagMasq, AddressFamily: family(b.Addr())}
		if err := d.h.NewDestination(svc, dst); err != nil {
			return changed, fmt.Errorf("add real server %s to %s: %w", b, s.VIP, err)
		}
		changed = true
	}
	return changed, nil
}

// Clean implements dataplane.Dataplane: it deletes the services on the link's VIPs, then the link.
func (d *Dataplane) Clean(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	addrs, err := d.link.Addrs()
	if err != nil {
		return err
	}
	owned := map[netip.Addr]bool{}
	for _, a := range addrs {
		owned[a] = true
	}
	have, err := d.h.GetServices()
	if err != nil {
		return fmt.Errorf("list IPVS services: %w", err)
	}
	var errs []error
	for _, s := range have {
		if k, ok := keyOf(s); ok && owned[k.addr] {
			if err := d.h.DelService(s); err != nil {
				errs = append(errs, fmt.Errorf("delete IPVS service %s: %w", netip.AddrPortFrom(k.addr, k.port), err))
			}
		}
	}
	if err := d.link.Remove(); err != nil {
		errs = append(errs, err)
	}
	if err := d.masq.Remove(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// dummyLink is the real Link: lvscare's dummy interface with the VIPs as addresses.
type dummyLink struct{ name string }

func (l dummyLink) Addrs() ([]netip.Addr, error) {
	lk, err := netlink.LinkByName(l.name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up link %s: %w", l.name, err)
	}
	addrs, err := netlink.AddrList(lk, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses on %s: %w", l.name, err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.IsLinkLocalUnicast() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

func (l dummyLink) Ensure(vips []netip.Addr) error { return vip.EnsureAddrs(l.name, vips) }
func (l dummyLink) Remove() error                  { return vip.RemoveLink(l.name) }
