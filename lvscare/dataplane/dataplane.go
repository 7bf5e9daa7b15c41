// Package dataplane defines the desired state lvscare asks a kernel dataplane (nftables or IPVS) to enforce.
package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Service is one virtual address and the backends that currently deserve new connections.
// An empty Backends list means every backend is down: new connections must be refused at once.
type Service struct {
	VIP      netip.AddrPort
	Backends []netip.AddrPort
}

// Dataplane makes the kernel forward each VIP to its backends.
type Dataplane interface {
	// Name is "nftables" or "ipvs".
	Name() string
	// Reconcile brings the kernel to exactly the given services, removing anything
	// else the dataplane owns. It reports whether it had to change anything.
	Reconcile(ctx context.Context, services []Service) (changed bool, err error)
	// Clean removes everything the dataplane ever created.
	Clean(ctx context.Context) error
}

// Normalize returns a sorted copy of services with sorted, de-duplicated backends,
// so two descriptions of the same state compare equal.
func Normalize(services []Service) []Service {
	out := make([]Service, 0, len(services))
	for _, s := range services {
		b := slices.Clone(s.Backends)
		slices.SortFunc(b, func(x, y netip.AddrPort) int { return x.Compare(y) })
		b = slices.Compact(b)
		out = append(out, Service{VIP: s.VIP, Backends: b})
	}
	slices.SortFunc(out, func(x, y Service) int { return x.VIP.Compare(y.VIP) })
	return out
}

// Equal reports whether two normalized service lists are the same.
func Equal(a, b []Service) bool {
	return slices.EqualFunc(a, b, func(x, y Service) bool {
		return x.VIP == y.VIP && slices.Equal(x.Backends, y.Backends)
	})
}

// String renders services for logs: "10.0.0.1:80 -> [10.0.0.2:80 10.0.0.3:80]".
func String(services []Service) string {
	var sb strings.Builder
	for i, s := range services {
		if i > 0 {
			sb.WriteString("; ")
		}
		fmt.Fprintf(&sb, "%s -> %v", s.VIP, s.Backends)
	}
	return sb.String()
}
