package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/mirror"
	"github.com/flotilla-dev/flotilla/controller"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// controllerHandlers lets other files mount HTTPS handlers (bootstrap script,
// agent binaries) on the controller: append from init().
var controllerHandlers []func(dataDir string) map[string]http.Handler

// controllerAgentHandlers are like controllerHandlers, for agents only: the
// controller serves them to a peer certificate of a node in its inventory.
var controllerAgentHandlers []func(dataDir string) map[string]http.Handler

// controllerHooks run after the controller started (e.g. the rollout engine
// registering admin handlers); append from init().
var controllerHooks []func(ctx context.Context, c *controller.Controller) error

// controllerFlags lets other files add flags to `flotilla controller` (the values
// their hooks read); append from init().
var controllerFlags []func(f *pflag.FlagSet)

func init() { addCommand(newControllerCmd) }

func newControllerCmd() *cobra.Command {
	var (
		opts        controller.Options
		localAgent  bool
		agentName   string
		agentLabel  string
		agentMirror string
		hbInterval  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Run the controller: embedded NATS + JetStream, inventory, join tokens, task dispatch",
		Long: `Run the controller. At first start it creates, in --data-dir, a CA, a TLS
certificate, the task-signing key and admin.creds (the CLI's credentials, mode 0600).
Agents join over HTTPS (--http-listen) with a token and then talk NATS over TLS (--listen).`,
		Example: `  # one machine is enough to try everything
  flotilla controller --with-local-agent
  flotilla nodes
  flotilla exec --all -- uname -a

  # a real controller that nodes reach at 10.0.0.1
  flotilla controller --advertise 10.0.0.1
  flotilla token create --ttl 2h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			opts.Logger = slog.Default().With("component", "controller")
			opts.Handlers = map[string]http.Handler{}
			// Before the handlers below create their dirs inside it (0755 would
			// otherwise be inherited by a data dir they create).
			if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
				return fmt.Errorf("--data-dir %s: %w", opts.DataDir, err)
			}
			for _, f := range controllerHandlers {
				for p, h := range f(opts.DataDir) {
					opts.Handlers[p] = h
				}
			}
			opts.AgentHandlers = map[string]http.Handler{}
			for _, f := range controllerAgentHandlers {
				for p, h := range f(opts.DataDir) {
					opts.AgentHandlers[p] = h
				}
			}
			c, err := controller.New(opts)
			if err != nil {
				return err
			}
			if err := c.Start(ctx); err != nil {
				return err
			}
			defer c.Close()
			for _, h := range controllerHooks {
				if err := h(ctx, c); err != nil {
					return err
				}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "flotilla controller ready\n  NATS   %s\n  HTTPS  %s\n  CA     %s\n  admin  %s\nCreate a join token with: flotilla token create --ttl 24h\n",
				c.NATSURL(), c.HTTPURL(), c.CAHash(), c.AdminCredsPath())
			if !localAgent {
				<-ctx.Done()
				return nil
			}
			return runLocalAgent(ctx, c, opts.DataDir, agentName, agentLabel, agentMirror, hbInterval)
		},
	}
	f := cmd.Flags()
	for _, add := range controllerFlags {
		add(f)
	}
	f.StringVar(&opts.DataDir, "data-dir", envOr("FLOTILLA_DATA_DIR", "/var/lib/flotilla"), "state: CA, keys, admin.creds, JetStream")
	f.StringVar(&opts.Listen, "listen", "0.0.0.0:4222", "NATS (TLS) listen address")
	f.StringVar(&opts.HTTPListen, "http-listen", "0.0.0.0:9443", "HTTPS listen address (join, CA, bootstrap)")
	f.StringVar(&opts.Advertise, "advertise", "", "host or IP nodes use to reach this controller (default: first global IPv4)")
	f.BoolVar(&localAgent, "with-local-agent", false, "also run an agent for this host in this process")
	f.StringVar(&agentName, "agent-name", "", "name of the local agent (default: host name)")
	f.StringVar(&agentLabel, "agent-labels", "", "labels of the local agent, k=v,…")
	f.DurationVar(&hbInterval, "heartbeat-interval", 5*time.Second, "heartbeat interval of the local agent")
	f.StringVar(&agentMirror, "agent-registry-listen", mirror.DefaultListen, "registry mirror address of the local agent (see flotilla agent --registry-listen); \"\" disables it")
	f.IntVar(&opts.NodeEventRate, "node-event-rate", controller.DefaultNodeEventRate, "task events per second and node kept in the event history (more are dropped, and logged naming the node)")
	f.IntVar(&opts.NodeEventBurst, "node-event-burst", controller.DefaultNodeEventBurst, "burst allowed above --node-event-rate")
	f.IntVar(&opts.NodeEventHistory, "node-event-history", controller.DefaultNodeEventHistory, "newest task events kept per node (see `flotilla logs NODE`)")
	f.Float64Var(&opts.JoinRate, "join-rate", 5, "joins per second one source address may make (IPv6: per /64); more get HTTP 429 and agents retry")
	f.IntVar(&opts.JoinBurst, "join-burst", 20, "joins one source address may make at once before --join-rate applies")
	f.IntVar(&opts.MaxConcurrentJoins, "max-concurrent-joins", 32, "joins handled at once; more get HTTP 503 and agents retry")
	f.DurationVar(&opts.HTTPReadHeaderTimeout, "http-read-header-timeout", 10*time.Second, "time an HTTPS client has for the TLS handshake and its request headers")
	return cmd
}

func runLocalAgent(ctx context.Context, c *controller.Controller, dataDir, name, labelStr, registryListen string, hb time.Duration) error {
	labels, err := parseLabels(labelStr)
	if err != nil {
		return fmt.Errorf("--agent-labels: %w", err)
	}
	if name == "" {
		if name, err = os.Hostname(); err != nil {
			return err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	creds, err := c.LocalAgentCredentials(cctx, name, agent.CollectFacts(version, labels))
	if err != nil {
		return fmt.Errorf("local agent: %w", err)
	}
	a, err := agent.New(ctx, agent.Options{
		Credentials: creds, Name: name, Labels: labels, Root: "/", DataDir: filepath.Join(dataDir, "local-agent"),
		HeartbeatInterval: hb, Version: version, RegistryListen: registryListen,
		Logger: slog.Default().With("component", "agent"),
	})
	if err != nil {
		return fmt.Errorf("local agent: %w", err)
	}
	return a.Run(ctx)
}
