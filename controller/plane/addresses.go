package plane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/flotilla-dev/flotilla/protocol"
)

// A node's addresses come in two kinds. What it reports (Facts.IPs) is a
// claim: shown, rendered into its own templates, never used to select it.
// What the controller verified is what selects it: the source address of its
// join (stored in its record), of its NATS connection to the embedded server
// (kept in memory: it is seen again at every connection), and what an admin
// pinned after checking (a NAT, a second network). See protocol.VerifiedIP.

// connAddrs holds the source address of each node's newest NATS connection.
type connAddrs struct {
	mu sync.Mutex
	m  map[string]string
}

func (a *connAddrs) set(node, ip string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[string]string{}
	}
	a.m[node] = ip
}

func (a *connAddrs) get(node string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m[node]
}

func (a *connAddrs) forget(node string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.m, node)
}

// sourceIP is the IP of a remote address ("host:port" or a net.Addr's
// string), canonical and unmapped, or "" when it is not one a node can be
// selected by.
func sourceIP(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return ""
	}
	s := a.Unmap().WithZone("").String()
	if protocol.ValidateIP(s) != nil {
		return ""
	}
	return s
}

// verifiedIPs lists a node's verified addresses: pinned first, then its
// join's and its connection's source, each address once.
func verifiedIPs(rec *NodeRecord, connIP string) []protocol.VerifiedIP {
	var out []protocol.VerifiedIP
	add := func(ip, by string) {
		if ip == "" || slices.ContainsFunc(out, func(v protocol.VerifiedIP) bool { return v.IP == ip }) {
			return
		}
		out = append(out, protocol.VerifiedIP{IP: ip, By: by})
	}
	for _, ip := range rec.PinnedIPs {
		add(ip, protocol.VerifiedByAdmin)
	}
	add(rec.JoinIP, protocol.VerifiedByJoin)
	add(connIP, protocol.VerifiedByConnection)
	return out
}

// withAddresses adds the connection's source address to what the record
// verified.
func (c *Controller) withAddresses(n protocol.NodeInfo) protocol.NodeInfo {
	if rec, ok := c.inv.get(n.Name); ok {
		n.VerifiedIPs = verifiedIPs(&rec, c.conns.get(n.Name))
	}
	return n
}

// PinAddresses pins (and unpins) addresses an admin verified on a node and
// returns the node as it is now.
func (c *Controller) PinAddresses(ctx context.Context, req protocol.NodesAddress) (protocol.NodeInfo, error) {
	if err := protocol.ValidateNodeName(req.Name); err != nil {
		return protocol.NodeInfo{}, err
	}
	if len(req.Pin) == 0 && len(req.Unpin) == 0 {
		return protocol.NodeInfo{}, errors.New("nodes address: nothing to change (give --pin IP or --unpin IP)")
	}
	for _, ip := range slices.Concat(req.Pin, req.Unpin) {
		if err := protocol.ValidateIP(ip); err != nil {
			return protocol.NodeInfo{}, fmt.Errorf("address %q: %w", ip, err)
		}
	}
	_, err := c.inv.update(ctx, req.Name, func(rec *NodeRecord) error {
		pinned := slices.DeleteFunc(slices.Clone(rec.PinnedIPs), func(ip string) bool { return slices.Contains(req.Unpin, ip) })
		for _, ip := range req.Pin {
			if !slices.Contains(pinned, ip) {
				pinned = append(pinned, ip)
			}
		}
		if len(pinned) > protocol.MaxPinnedIPs {
			return fmt.Errorf("node %s would have %d pinned addresses, at most %d", req.Name, len(pinned), protocol.MaxPinnedIPs)
		}
		if len(pinned) == 0 {
			pinned = nil
		}
		rec.PinnedIPs = pinned
		return nil
	})
	if errors.Is(err, errNoNode) {
		return protocol.NodeInfo{}, fmt.Errorf("no node named %q: see `flotilla nodes`", req.Name)
	}
	if err != nil {
		return protocol.NodeInfo{}, err
	}
	n, _ := c.Node(req.Name)
	c.log.Info("node addresses pinned by the admin", "node", req.Name, "pinned", strings.Join(pinnedOf(n), ","))
	return n, nil
}

func pinnedOf(n protocol.NodeInfo) []string {
	var out []string
	for _, v := range n.VerifiedIPs {
		if v.By == protocol.VerifiedByAdmin {
			out = append(out, v.IP)
		}
	}
	return out
}
