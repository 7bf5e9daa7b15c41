package controller

import (
	"context"
	"fmt"

	"github.com/flotilla-dev/flotilla/protocol"
)

// RemoveNode deletes a node from the inventory, revokes its NATS credentials
// and closes its connections. Its peer certificate stops working at once on
// the tracker and the seed (RequireMember) and, within seconds, on the other
// agents (they serve the tracker's peers only).
//
// A stand-in with the signature of the trust-join branch's RemoveNode
// (`flotilla nodes remove`): when both are merged, keep that one and delete
// this file.
func (c *Controller) RemoveNode(ctx context.Context, name string) error {
	if _, ok := c.inv.get(name); !ok {
		return fmt.Errorf("no node named %q: see `flotilla nodes`", name)
	}
	c.auth.mu.Lock()
	delete(c.auth.agents, name) // no reconnecting from here on
	c.auth.mu.Unlock()
	if err := c.inv.kv.Purge(ctx, protocol.NodeToken(name)); err != nil {
		return fmt.Errorf("remove node %s: %w", name, err)
	}
	c.inv.mu.Lock()
	delete(c.inv.nodes, name)
	delete(c.inv.lastSeen, name)
	delete(c.inv.saved, name)
	c.inv.mu.Unlock()
	c.disconnectNode(name)
	c.log.Info("node removed: its credentials no longer work", "node", name)
	return nil
}
