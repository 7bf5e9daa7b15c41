package plane

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/flotilla-dev/flotilla/protocol"
)

// registerNodeAdmin adds the admin requests that change the inventory:
// `flotilla nodes remove` and `flotilla nodes label`.
func (c *Controller) registerNodeAdmin() {
	c.HandleAdmin(protocol.AdminNodesRemove, func(ctx context.Context, a *AdminCall) (any, error) {
		var req protocol.NodesRemove
		if err := a.Decode(&req); err != nil {
			return nil, err
		}
		return nil, c.RemoveNode(ctx, req.Name)
	})
	c.HandleAdmin(protocol.AdminNodesLabel, func(ctx context.Context, a *AdminCall) (any, error) {
		var req protocol.NodesLabel
		if err := a.Decode(&req); err != nil {
			return nil, err
		}
		return c.LabelNode(ctx, req)
	})
	c.HandleAdmin(protocol.AdminNodesAddr, func(ctx context.Context, a *AdminCall) (any, error) {
		var req protocol.NodesAddress
		if err := a.Decode(&req); err != nil {
			return nil, err
		}
		return c.PinAddresses(ctx, req)
	})
}

// RemoveNode deletes a node from the inventory, revokes its NATS credentials
// and closes its connections; its name may then join again with a new token.
func (c *Controller) RemoveNode(ctx context.Context, name string) error {
	if err := protocol.ValidateNodeName(name); err != nil {
		return err
	}
	c.joinMu.Lock()
	defer c.joinMu.Unlock()
	if _, ok := c.inv.get(name); !ok {
		return fmt.Errorf("no node named %q: see `flotilla nodes`", name)
	}
	// Credentials first: from here on the node cannot reconnect or register.
	c.auth.removeAgent(name)
	if c.nu != nil {
		if err := c.nu.revokeNode(ctx, name); err != nil {
			return err
		}
	}
	if err := c.inv.remove(ctx, name); err != nil {
		return err
	}
	c.disconnectNode(name)
	c.conns.forget(name)
	c.log.Info("node removed by the admin: its credentials no longer work", "node", name)
	return nil
}

// LabelNode sets and removes a node's labels (the admin-approved ones that
// selectors match) and returns the node as it is now.
func (c *Controller) LabelNode(ctx context.Context, req protocol.NodesLabel) (protocol.NodeInfo, error) {
	if err := protocol.ValidateNodeName(req.Name); err != nil {
		return protocol.NodeInfo{}, err
	}
	if len(req.Set) == 0 && len(req.Remove) == 0 {
		return protocol.NodeInfo{}, errors.New("nodes label: nothing to change (give KEY=VALUE to set, KEY- to remove)")
	}
	if err := protocol.ValidateLabels("label", req.Set); err != nil {
		return protocol.NodeInfo{}, err
	}
	for _, k := range req.Remove {
		if err := protocol.ValidateLabelKey(k); err != nil {
			return protocol.NodeInfo{}, fmt.Errorf("label key %q: %w", k, err)
		}
	}
	_, err := c.inv.update(ctx, req.Name, func(rec *NodeRecord) error {
		labels := maps.Clone(rec.Labels)
		if labels == nil {
			labels = map[string]string{}
		}
		maps.Copy(labels, req.Set)
		for _, k := range req.Remove {
			delete(labels, k)
		}
		if len(labels) > protocol.MaxLabels {
			return fmt.Errorf("node %s would have %d labels, at most %d", req.Name, len(labels), protocol.MaxLabels)
		}
		if len(labels) == 0 {
			labels = nil
		}
		rec.Labels = labels
		return nil
	})
	if errors.Is(err, errNoNode) {
		return protocol.NodeInfo{}, fmt.Errorf("no node named %q: see `flotilla nodes`", req.Name)
	}
	if err != nil {
		return protocol.NodeInfo{}, err
	}
	n, _ := c.Node(req.Name)
	c.log.Info("node labels changed by the admin", "node", req.Name, "labels", formatLabels(n.Labels))
	return n, nil
}

// removeAgent forgets a node's credentials: its next connection is refused.
func (a *authenticator) removeAgent(node string) {
	a.mu.Lock()
	delete(a.agents, node)
	a.mu.Unlock()
}
