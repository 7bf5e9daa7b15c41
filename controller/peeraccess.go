package controller

import (
	"context"
	"net/http"
)

// IsMember says whether node is in the inventory now. Agent endpoints
// (Options.AgentHandlers) and the tracker's peer lists ask it on every
// request, so a node removed from the inventory loses them at once, even
// with a peer certificate that has not expired yet.
func (c *Controller) IsMember(node string) bool {
	if c.inv == nil {
		return false
	}
	_, ok := c.inv.get(node)
	return ok
}

// RequireMember serves h only to clients that present a valid peer
// certificate of this cluster (RequireAgentCert) whose node is in the
// inventory now; others get 403, and the refusal is logged naming the node.
// Options.AgentHandlers are mounted behind it.
func (c *Controller) RequireMember(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		node, ok := agentFromTLS(r.TLS)
		if !ok {
			c.log.Warn("agent endpoint refused: no peer certificate of this cluster", "remote", r.RemoteAddr, "path", r.URL.Path)
			http.Error(w, "this endpoint needs an agent's peer certificate (mutual TLS with the cluster CA)", http.StatusForbidden)
			return
		}
		if !c.IsMember(node) {
			c.log.Warn("agent endpoint refused: node not in the inventory", "node", node, "remote", r.RemoteAddr, "path", r.URL.Path)
			http.Error(w, "node "+node+" is not in the inventory: join again with a token", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), agentCtxKey{}, node)))
	})
}
