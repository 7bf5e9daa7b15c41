package dataplane

import (
	"net/netip"
	"testing"
)

func TestNormalizeEqual(t *testing.T) {
	ap := netip.MustParseAddrPort
	a := []Service{
		{VIP: ap("10.0.0.2:80"), Backends: []netip.AddrPort{ap("10.0.1.2:80"), ap("10.0.1.1:80"), ap("10.0.1.2:80")}},
		{VIP: ap("10.0.0.1:80"), Backends: nil},
	}
	b := []Service{
		{VIP: ap("10.0.0.1:80"), Backends: []netip.AddrPort{}},
		{VIP: ap("10.0.0.2:80"), Backends: []netip.AddrPort{ap("10.0.1.1:80"), ap("10.0.1.2:80")}},
	}
	tests := []struct {
		name string
		x, y []Service
		want bool
	}{
		{"same state in another order, with a duplicate", a, b, true},
		{"a backend less", a, []Service{b[0], {VIP: b[1].VIP, Backends: b[1].Backends[:1]}}, false},
		{"a service less", a, b[:1], false},
		{"empty", nil, []Service{}, true},
	}
	for _, tt := range tests {
		if got := Equal(Normalize(tt.x), Normalize(tt.y)); got != tt.want {
			t.Errorf("%s: Equal = %v, want %v", tt.name, got, tt.want)
		}
	}
	if s := String(Normalize(a)); s != "10.0.0.1:80 -> []; 10.0.0.2:80 -> [10.0.1.1:80 10.0.1.2:80]" {
		t.Errorf("String = %q", s)
	}
}
