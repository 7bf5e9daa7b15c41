// Package natsconn turns flotilla credentials into NATS connection options:
// user and password over TLS with the controller's CA for the embedded
// server, a user JWT and its seed for an existing NATS cluster.
package natsconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Options are the auth and TLS options of cr.
func Options(cr *protocol.Credentials) ([]nats.Option, error) {
	return OptionsRenewed(cr, nil)
}

// OptionsRenewed is Options with the user JWT read from currentJWT at every
// connect and reconnect (nil: cr.JWT), so that an agent that renewed its
// JWT logs in with the new one from its next connection on.
func OptionsRenewed(cr *protocol.Credentials, currentJWT func() string) ([]nats.Option, error) {
	if cr.JWT != "" {
		if cr.NKeySeed == "" {
			return nil, errors.New("credentials: a NATS user JWT without its seed")
		}
		kp, err := nkeys.FromSeed([]byte(cr.NKeySeed))
		if err != nil {
			return nil, fmt.Errorf("credentials: NATS user seed: %w", err)
		}
		if currentJWT == nil {
			currentJWT = func() string { return cr.JWT }
		}
		opts := []nats.Option{nats.UserJWT(func() (string, error) { return currentJWT(), nil }, kp.Sign)}
		if len(cr.NATSCAPEM) > 0 {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(cr.NATSCAPEM) {
				return nil, errors.New("credentials: NATS CA is not a PEM certificate")
			}
			opts = append(opts, nats.Secure(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
		}
		return opts, nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cr.CAPEM) {
		return nil, errors.New("credentials: no CA certificate")
	}
	return []nats.Option{nats.UserInfo(cr.User, cr.Password), nats.Secure(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})}, nil
}
