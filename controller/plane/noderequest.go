package plane

import (
	"context"
	"fmt"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

// Node messages. A node chooses the reply subject of its requests, and the
// controller's connection may publish anywhere (JetStream KV, other nodes'
// tasks, its own inboxes): every subscription to node subjects goes through
// fromNode and every answer through respondToNode, which answer only inside
// the sending node's own inbox (protocol.ReplyInNodeInbox).

// fromNode wraps a handler of flotilla.v1.from.<node>.… messages: it drops a
// message whose reply subject lies outside that node's inbox before the handler
// sees it, so the request has no effect at all, and logs the node and the subject.
func (c *Controller) fromNode(h nats.MsgHandler) nats.MsgHandler {
	return func(m *nats.Msg) {
		node, ok := protocol.NodeFromSubject(m.Subject)
		if !ok {
			return
		}
		if m.Reply != "" && !protocol.ReplyInNodeInbox(node, m.Reply) {
			c.refuseReply(node, m)
			return
		}
		h(m)
	}
}

func (c *Controller) refuseReply(node string, m *nats.Msg) {
	c.offenses.warn(node, "reply subject", "dropping a node request whose reply subject is outside the node's inbox",
		"subject", m.Subject, "replySubject", m.Reply, "nodeInbox", protocol.InboxPrefix(node)+".>")
}

// respondToNode answers the node request m, only inside the inbox of the node
// its subject names; it reports whether it answered.
func (c *Controller) respondToNode(m *nats.Msg, data []byte) bool {
	node, ok := protocol.NodeFromSubject(m.Subject)
	if !ok || m.Reply == "" {
		return false
	}
	if !protocol.ReplyInNodeInbox(node, m.Reply) {
		c.refuseReply(node, m)
		return false
	}
	if err := m.Respond(data); err != nil {
		c.log.Warn("answer node request", "node", node, "subject", m.Subject, "err", err)
		return false
	}
	return true
}

// NodeRequestHandler answers a request from node (named by the subject it
// arrived on, which NATS permissions tie to the sender); a nil reply sends none.
type NodeRequestHandler func(ctx context.Context, node string, data []byte) (reply []byte)

// HandleNodeRequest answers requests agents send on their own
// protocol.NodeRequestSubject(node, name), only inside the sender's inbox.
// Handlers run on one goroutine per name, in arrival order.
func (c *Controller) HandleNodeRequest(name string, h NodeRequestHandler) error {
	sub, err := c.nc.Subscribe(protocol.AllNodeRequests(name), c.fromNode(func(m *nats.Msg) {
		node, _ := protocol.NodeFromSubject(m.Subject)
		if reply := h(c.ctx, node, m.Data); reply != nil {
			c.respondToNode(m, reply)
		}
	}))
	if err != nil {
		return fmt.Errorf("subscribe to node requests %q: %w", name, err)
	}
	c.closeMu.Lock()
	c.subs = append(c.subs, sub)
	c.closeMu.Unlock()
	return nil
}
