package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"

	mobyipvs "github.com/moby/ipvs"

	"github.com/flotilla-dev/flotilla/lvscare/dataplane"
)

// fakeHandle is an in-memory IPVS table keyed like the kernel: address, protocol, port.
type fakeHandle struct {
	svcs  map[string]*mobyipvs.Service
	dests map[string][]*mobyipvs.Destination
	fail  error
	calls int // mutating calls
}

func newFakeHandle() *fakeHandle {
	return &fakeHandle{svcs: map[string]*mobyipvs.Service{}, dests: map[string][]*mobyipvs.Destination{}}
}

func skey(s *mobyipvs.Service) string {
	return fmt.Sprintf("%s/%d/%d", net.IP(s.Address), s.Protocol, s.Port)
}

func (f *fakeHandle) GetServices() ([]*mobyipvs.Service, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	var out []*mobyipvs.Service
	for _, s := range f.svcs {
		c := *s
		out = append(out, &c)
	}
	return out, nil
}

func (f *fakeHandle) NewService(s *mobyipvs.Service) error {
	f.calls++
	if _, ok := f.svcs[skey(s)]; ok {
		return syscall.EEXIST
	}
	c := *s
	f.svcs[skey(s)] = &c
	return nil
}

func (f *fakeHandle) DelService(s *mobyipvs.Service) error {
	f.calls++
	if _, ok := f.svcs[skey(s)]; !ok {
		return syscall.ESRCH
	}
	delete(f.svcs, skey(s))
	delete(f.dests, skey(s))
	return nil
}

func (f *fakeHandle) GetDestinations(s *mobyipvs.Service) ([]*mobyipvs.Destination, error) {
	if _, ok := f.svcs[skey(s)]; !ok {
		return nil, syscall.ESRCH
	}
	return slices.Clone(f.dests[skey(s)]), nil
}

func (f *fakeHandle) NewDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	f.calls++
	if _, ok := f.svcs[skey(s)]; !ok {
		return syscall.ESRCH
	}
	c := *d
	f.dests[skey(s)] = append(f.dests[skey(s)], &c)
	return nil
}

func (f *fakeHandle) DelDestination(s *mobyipvs.Service, d *mobyipvs.Destination) error {
	f.calls++
	k := skey(s)
	i := slices.IndexFunc(f.dests[k], func(x *mobyipvs.Destination) bool { return x.Address.Equal(d.Address) && x.Port == d.Port })
	if i < 0 {
		return syscall.ENOENT
	}
	f.dests[k] = slices.Delete(f.dests[k], i, i+1)
	return nil
}

// backends lists the real servers of a VIP as "ip:port" strings, sorted.
func (f *fakeHandle) backends(t *testing.T, vip string) []string {
	t.Helper()
	ap := netip.MustParseAddrPort(vip)
	k := skey(ipvsService(ap))
	if _, ok := f.svcs[k]; !ok {
		t.Fatalf("no IPVS service %s; have %v", vip, f.svcs)
	}
	var out []string
	for _, d := range f.dests[k] {
		a, _ := netip.AddrFromSlice(d.Address)
		if d.ConnectionFlags&mobyipvs.ConnFwdMask != mobyipvs.ConnectionFlagMasq {
			t.Errorf("%s -> %s: forwarding %#x, want masquerade", vip, a, d.ConnectionFlags)
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), d.Port).String())
	}
	slices.Sort(out)
	return out
}

type fakeMasq struct {
	vips    []netip.Addr
	removed bool
}

func (m *fakeMasq) Ensure(v []netip.Addr) error { m.vips = slices.Clone(v); return nil }
func (m *fakeMasq) Remove() error               { m.vips, m.removed = nil, true; return nil }

type fakeLink struct {
	addrs   []netip.Addr
	removed bool
}

func (l *fakeLink) Addrs() ([]netip.Addr, error) { return slices.Clone(l.addrs), nil }
func (l *fakeLink) Ensure(v []netip.Addr) error  { l.addrs = slices.Clone(v); return nil }
func (l *fakeLink) Remove() error                { l.addrs, l.removed = nil, true; return nil }

func svc(vip string, backends ...string) dataplane.Service {
	s := dataplane.Service{VIP: netip.MustParseAddrPort(vip), Backends: []netip.AddrPort{}}
	for _, b := range backends {
		s.Backends = append(s.Backends, netip.MustParseAddrPort(b))
	}
	return s
}

func TestReconcile(t *testing.T) {
	const vip = "10.103.97.2:2379"
	tests := []struct {
		name        string
		prepare     func(h *fakeHandle, l *fakeLink)
		want        []dataplane.Service
		wantChanged bool
		check       func(t *testing.T, h *fakeHandle, l *fakeLink)
	}{
		{
			name:        "empty kernel gets service and real servers",
			want:        []dataplane.Service{svc(vip, "10.0.0.11:2379", "10.0.0.12:2379")},
			wantChanged: true,
			check: func(t *testing.T, h *fakeHandle, l *fakeLink) {
				if got := h.backends(t, vip); !slices.Equal(got, []string{"10.0.0.11:2379", "10.0.0.12:2379"}) {
					t.Errorf("real servers %v", got)
				}
				if !slices.Equal(l.addrs, []netip.Addr{netip.MustParseAddr("10.103.97.2")}) {
					t.Errorf("link addresses %v, want the VIP", l.addrs)
				}
			},
		},
		{
			name: "stale real server of a removed master is deleted (sealos issues 222, 498)",
			prepare: func(h *fakeHandle, l *fakeLink) {
				s := ipvsService(netip.MustParseAddrPort(vip))
				_ = h.NewService(s)
				for _, b := range []string{"10.0.0.11", "10.0.0.99"} {
					_ = h.NewDestination(s, &mobyipvs.Destination{Address: net.ParseIP(b).To4(), Port: 2379, Weight: 1})
				}
				l.addrs = []netip.Addr{netip.MustParseAddr("10.103.97.2")}
			},
			want:        []dataplane.Service{svc(vip, "10.0.0.11:2379", "10.0.0.12:2379")},
			wantChanged: true,
			check: func(t *testing.T, h *fakeHandle, _ *fakeLink) {
				if got := h.backends(t, vip); !slices.Equal(got, []string{"10.0.0.11:2379", "10.0.0.12:2379"}) {
					t.Errorf("real servers %v, want the stale 10.0.0.99 gone", got)
				}
			},
		},
		{
			name: "all backends down keeps an empty service so IPVS refuses connections",
			prepare: func(h *fakeHandle, l *fakeLink) {
				s := ipvsService(netip.MustParseAddrPort(vip))
				_ = h.NewService(s)
				_ = h.NewDestination(s, &mobyipvs.Destination{Address: net.ParseIP("10.0.0.11").To4(), Port: 2379, Weight: 1})
			},
			want:        []dataplane.Service{svc(vip)},
			wantChanged: true,
			check: func(t *testing.T, h *fakeHandle, _ *fakeLink) {
				if got := h.backends(t, vip); len(got) != 0 {
					t.Errorf("real servers %v, want none", got)
				}
			},
		},
		{
			name: "owned stale service deleted, foreign service untouched",
			prepare: func(h *fakeHandle, l *fakeLink) {
				_ = h.NewService(ipvsService(netip.MustParseAddrPort("10.103.97.3:6443"))) // ours: on the link
				_ = h.NewService(ipvsService(netip.MustParseAddrPort("10.96.0.1:443")))    // kube-proxy's
				l.addrs = []netip.Addr{netip.MustParseAddr("10.103.97.3")}
			},
			want:        []dataplane.Service{svc(vip, "10.0.0.11:2379")},
			wantChanged: true,
			check: func(t *testing.T, h *fakeHandle, l *fakeLink) {
				if _, ok := h.svcs[skey(ipvsService(netip.MustParseAddrPort("10.103.97.3:6443")))]; ok {
					t.Error("stale service on lvscare's old VIP survived")
				}
				if _, ok := h.svcs[skey(ipvsService(netip.MustParseAddrPort("10.96.0.1:443")))]; !ok {
					t.Error("a service lvscare does not own was deleted")
				}
				if len(l.addrs) != 1 || l.addrs[0] != netip.MustParseAddr("10.103.97.2") {
					t.Errorf("link addresses %v, want only the current VIP", l.addrs)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, l := newFakeHandle(), &fakeLink{}
			if tt.prepare != nil {
				tt.prepare(h, l)
			}
			m := &fakeMasq{}
			d := NewWith(h, l, m, nil)
			changed, err := d.Reconcile(context.Background(), tt.want)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(m.vips, l.addrs) {
				t.Errorf("masqueraded VIPs %v, want the link's %v", m.vips, l.addrs)
			}
			if changed != tt.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tt.wantChanged)
			}
			tt.check(t, h, l)
			calls := h.calls
			changed, err = d.Reconcile(context.Background(), tt.want)
			if err != nil || changed || h.calls != calls {
				t.Errorf("second reconcile: changed=%v err=%v, %d mutating calls; want a no-op", changed, err, h.calls-calls)
			}
		})
	}
}

func TestReconcileErrorsAndClean(t *testing.T) {
	h, l, m := newFakeHandle(), &fakeLink{}, &fakeMasq{}
	d := NewWith(h, l, m, nil)
	h.fail = errors.New("netlink gone")
	if _, err := d.Reconcile(context.Background(), []dataplane.Service{svc("10.103.97.2:2379", "10.0.0.11:2379")}); err == nil {
		t.Fatal("want the handle's error")
	}
	h.fail = nil
	if _, err := d.Reconcile(context.Background(), []dataplane.Service{svc("10.103.97.2:2379", "10.0.0.11:2379")}); err != nil {
		t.Fatal(err)
	}
	_ = h.NewService(ipvsService(netip.MustParseAddrPort("10.96.0.1:443")))
	if err := d.Clean(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(h.svcs) != 1 || !l.removed || !m.removed {
		t.Errorf("after Clean: services %v, link removed %v, masquerade removed %v; want only the foreign service left", h.svcs, l.removed, m.removed)
	}
}

// TestSupportedIsHonest checks detection against the kernel: this build machine has no IP_VS.
func TestSupportedIsHonest(t *testing.T) {
	err := Supported()
	_, statErr := netlinkFamilyOrProc()
	if (err == nil) != (statErr == nil) {
		t.Fatalf("Supported() = %v but direct probe says %v", err, statErr)
	}
	t.Logf("IPVS on this kernel: %v", err)
}

func netlinkFamilyOrProc() (bool, error) {
	if _, err := os.Stat("/proc/net/ip_vs"); err == nil {
		return true, nil
	}
	return false, errors.New("no /proc/net/ip_vs")
}
