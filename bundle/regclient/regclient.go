// Package regclient is how flotilla talks to OCI registries, for every command
// that does (push, pull, login, and the container images a build carries): the
// credentials, the transport, plain HTTP when asked, its user agent.
package regclient

import (
	"context"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// NameOptions parses references for plain HTTP when insecure (registries not on loopback).
func NameOptions(insecure bool) []name.Option {
	if insecure {
		return []name.Option{name.Insecure}
	}
	return nil
}

// RemoteOptions is how flotilla talks to registries: credentials from kc (nil:
// Docker's config), transport tr (nil: the default), its user agent.
func RemoteOptions(ctx context.Context, kc authn.Keychain, tr http.RoundTripper) []remote.Option {
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(kc), remote.WithUserAgent("flotilla")}
	if tr != nil {
		opts = append(opts, remote.WithTransport(tr))
	}
	return opts
}
