package plane

import (
	"context"
	"errors"
	"strings"

	"github.com/flotilla-dev/flotilla/protocol"
)

// CreateToken creates a join token as `flotilla token create` does and returns
// it with the CA hash, the join URL and the bootstrap one-liner. Callers in the
// controller's process (the infrastructure driver) use it to give machines they
// create a token of their own.
func (c *Controller) CreateToken(ctx context.Context, req protocol.TokenCreate) (protocol.TokenInfo, error) {
	ti, err := c.tokens.create(ctx, req)
	if err != nil {
		return protocol.TokenInfo{}, err
	}
	ti.CAHash, ti.JoinURL = c.CAHash(), c.HTTPURL()
	ti.Bootstrap = BootstrapOneLiner(c.HTTPURL(), ti.Token, ti.CAHash)
	return ti, nil
}

// RevokeToken deletes a join token by its ID (or the whole token); revoking
// one that is gone already is not an error.
func (c *Controller) RevokeToken(ctx context.Context, id string) error {
	tid, _, _ := strings.Cut(strings.TrimSpace(id), ".")
	if _, _, err := c.tokens.get(ctx, tid); errors.Is(err, ErrTokenUnknown) {
		return nil // revoked or never created
	}
	return c.tokens.revoke(ctx, tid)
}
