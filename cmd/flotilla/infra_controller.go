package main

import (
	"fmt"
	"log/slog"

	"github.com/flotilla-dev/flotilla/infra"
	"github.com/flotilla-dev/flotilla/infra/sandbox"
	"github.com/spf13/pflag"
)

// Machines from a count (spec.infra) in `flotilla controller`: the providers it
// has and the driver's bounds. The rollout engine calls the driver before it
// plans and after a rollout.

// infraFlags are `flotilla controller --infra-…`.
type infraFlags struct {
	sandbox string
	opts    infra.Options
}

func (f *infraFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.sandbox, "infra-sandbox", "",
		"make the machines of spec.infra {provider: sandbox} as systemd-nspawn nodes of this sandbox fleet (sandbox/; its network must be up, e.g. `go run ./e2e/cmd/fleet -name NAME -subnet CIDR -n 0 up`)")
	fs.IntVar(&f.opts.MaxConcurrent, "infra-max-concurrent", infra.DefaultMaxConcurrent, "provider calls (create, destroy) in flight at most")
	fs.DurationVar(&f.opts.JoinTimeout, "infra-join-timeout", infra.DefaultJoinTimeout, "how long an apply waits for new machines' agents to come online")
	fs.DurationVar(&f.opts.TokenTTL, "infra-token-ttl", infra.DefaultTokenTTL, "life of a new machine's join token (one use, for its name only)")
}

// options returns the driver's options with the providers the flags name
// (none: spec.infra is refused).
func (f *infraFlags) options() (infra.Options, error) {
	o := f.opts
	if f.sandbox == "" {
		return o, nil
	}
	p, err := sandbox.Open(f.sandbox)
	if err != nil {
		return o, fmt.Errorf("--infra-sandbox %s: %w", f.sandbox, err)
	}
	o.Providers = map[string]infra.Provider{"sandbox": p}
	slog.Info("infrastructure provider ready", "component", "infra", "provider", "sandbox", "fleet", f.sandbox, "subnet", p.Fleet().Subnet())
	return o, nil
}
