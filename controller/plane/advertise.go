package plane

import (
	"fmt"
	"net"
	"net/netip"
)

// advertiseFor checks and defaults the address agents are told to reach the
// controller at. When both listeners name one specific IP, that IP is the
// default, and an --advertise IP other than it is refused: agents given it would
// join over HTTPS and then never reach NATS. With a wildcard listener the
// default is the first global IPv4 address (else 127.0.0.1).
func advertiseFor(listen, httpListen, advertise string) (string, error) {
	natsHost, _, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("listen address %q: %w", listen, err)
	}
	httpHost, _, err := net.SplitHostPort(httpListen)
	if err != nil {
		return "", fmt.Errorf("HTTPS listen address %q: %w", httpListen, err)
	}
	specific := func(h string) (netip.Addr, bool) {
		a, err := netip.ParseAddr(h)
		return a, err == nil && !a.IsUnspecified()
	}
	natsIP, natsOK := specific(natsHost)
	httpIP, httpOK := specific(httpHost)
	if advertise == "" {
		switch {
		case natsOK:
			return natsIP.String(), nil
		case httpOK:
			return httpIP.String(), nil
		}
		return defaultAdvertise(), nil
	}
	advIP, err := netip.ParseAddr(advertise)
	if err != nil {
		return advertise, nil // a host name: DNS decides, nothing to check here
	}
	for _, l := range []struct {
		what string
		ip   netip.Addr
		ok   bool
	}{{"NATS listen address", natsIP, natsOK}, {"HTTPS listen address", httpIP, httpOK}} {
		if l.ok && l.ip != advIP {
			return "", fmt.Errorf("advertised address %s is not the %s %s: agents would be told to connect where nothing listens (advertise %s, or listen on 0.0.0.0)", advIP, l.what, l.ip, l.ip)
		}
	}
	return advIP.String(), nil
}
