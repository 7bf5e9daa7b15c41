package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/flotilla-dev/flotilla/controller"
	"github.com/flotilla-dev/flotilla/controller/rollout"
	"github.com/flotilla-dev/flotilla/infra"
	"github.com/flotilla-dev/flotilla/infra/sandbox"
	"github.com/spf13/pflag"
)

// Machines from a count (spec.infra) in `flotilla controller`: the providers it
// has and the driver's bounds. The rollout engine calls the driver before it
// plans and after a rollout.

// infraFlags are `flotilla controller --infra-…`.
type infraFlags struct {
	sandbox       string
	maxConcurrent int
	joinTimeout   time.Duration
	tokenTTL      time.Duration
}

var infraOpts infraFlags

func init() {
	controllerFlags = append(controllerFlags, func(f *pflag.FlagSet) {
		f.StringVar(&infraOpts.sandbox, "infra-sandbox", "",
			"make the machines of spec.infra {provider: sandbox} as systemd-nspawn nodes of this sandbox fleet (e2e/fleet; its network must be up, e.g. `go run ./e2e/cmd/fleet -name NAME -subnet CIDR -n 0 up`)")
		f.IntVar(&infraOpts.maxConcurrent, "infra-max-concurrent", infra.DefaultMaxConcurrent, "provider calls (create, destroy) in flight at most")
		f.DurationVar(&infraOpts.joinTimeout, "infra-join-timeout", infra.DefaultJoinTimeout, "how long an apply waits for new machines' agents to come online")
		f.DurationVar(&infraOpts.tokenTTL, "infra-token-ttl", infra.DefaultTokenTTL, "life of a new machine's join token (one use, for its name only)")
	})
}

// newInfra returns the engine's Infra, or nil when no provider is configured.
func newInfra(ctx context.Context, c *controller.Controller) (rollout.Infra, error) {
	if infraOpts.sandbox == "" {
		return nil, nil
	}
	p, err := sandbox.Open(infraOpts.sandbox)
	if err != nil {
		return nil, err
	}
	d, err := infra.New(ctx, c.JetStream(), c, infra.Options{
		Providers:     map[string]infra.Provider{"sandbox": p},
		MaxConcurrent: infraOpts.maxConcurrent,
		JoinTimeout:   infraOpts.joinTimeout,
		TokenTTL:      infraOpts.tokenTTL,
		Logger:        slog.Default(),
	})
	if err != nil {
		return nil, err
	}
	slog.Info("infrastructure provider ready", "component", "infra", "provider", "sandbox", "fleet", infraOpts.sandbox,
		"subnet", p.Fleet().Subnet())
	return d, nil
}
