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
	agentrollout "github.com/flotilla-dev/flotilla/agent/rollout"
	"github.com/flotilla-dev/flotilla/controller"
	"github.com/flotilla-dev/flotilla/packaging"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
)

func newControllerCmd() *cobra.Command {
	var (
		opts        controller.Options
		localAgent  bool
		agentName   string
		agentLabel  string
		agentMirror string
		hbInterval  time.Duration
		infraF      infraFlags
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
			opts.Handlers = packagingHandlers()
			opts.Version = version
			var err error
			if opts.Infra, err = infraF.options(); err != nil {
				return err
			}
			c, err := controller.New(opts)
			if err != nil {
				return withFlag(err, controllerFlag)
			}
			if err := c.Start(ctx); err != nil {
				return withFlag(err, controllerFlag)
			}
			defer c.Close()
			fmt.Fprintf(cmd.ErrOrStderr(), "flotilla controller ready\n  NATS   %s\n  HTTPS  %s\n  CA     %s\n  admin  %s\nCreate a join token with: flotilla token create --ttl 24h\n",
				c.NATSURL(), c.HTTPURL(), c.CAHash(), c.AdminCredsPath())
			if !localAgent {
				select {
				case <-ctx.Done():
					return nil
				case <-c.Lost():
					return controller.ErrLeaseLost
				}
			}
			return runLocalAgent(ctx, c, opts.DataDir, agentName, agentLabel, agentMirror, hbInterval)
		},
	}
	f := cmd.Flags()
	f.DurationVar(&opts.UnreachableTimeout, "unreachable-timeout", 2*time.Minute,
		"how long a rollout retries a node that is offline before it reports it unreachable and goes on")
	f.Int64Var(&opts.MaxBackupBytes, "max-backup-bytes", protocol.DefaultMaxBackupBytes,
		"the largest backup (flotilla backup) an agent may upload, in bytes")
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
	f.StringVar(&opts.MetricsListen, "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics, plain HTTP (e.g. 127.0.0.1:9446; \"\": off)")
	f.BoolVar(&opts.MetricsPprof, "metrics-pprof", false, "also serve Go's /debug/pprof/ on --metrics-listen (heap and CPU profiles)")
	f.StringSliceVar(&opts.NATSURLs, "nats-url", nil, "use this existing NATS cluster (JetStream, JWT auth) instead of the embedded server: nats://a:4222,nats://b:4222,... (see `flotilla nats-auth init`)")
	f.StringVar(&opts.NATSCreds, "nats-creds", "", "with --nats-url: the controller's NATS user (.creds file)")
	f.StringVar(&opts.NATSAccountKey, "nats-account-key", "", "with --nats-url: the account signing key (seed file) node and admin users are issued with")
	f.StringVar(&opts.NATSCA, "nats-ca", "", "with --nats-url: CA (PEM) of the cluster's TLS certificates for tls:// URLs (default: system roots)")
	f.StringVar(&opts.NATSOperatorKey, "nats-operator-key", "", "with --nats-url: an operator signing key (seed file) to re-sign flotilla's account JWT with, so that a removed or re-joined node's NATS user is revoked on every server at once (with --nats-account-jwt and --nats-sys-creds; without them it works until its JWT expires)")
	f.StringVar(&opts.NATSAccountJWT, "nats-account-jwt", "", "with --nats-operator-key: flotilla's account JWT as the servers preload it (its claims are kept; the controller adds the revoked users)")
	f.StringVar(&opts.NATSSysCreds, "nats-sys-creds", "", "with --nats-operator-key: a system account user (.creds) that may publish $SYS.REQ.ACCOUNT.<account>.CLAIMS.UPDATE and read $SYS.SERVER.*.STATSZ and the account's CONNECT events")
	f.DurationVar(&opts.NATSUserTTL, "nats-user-ttl", 0, "with --nats-url: lifetime of node user JWTs, renewed by agents at half-life (default 1h)")
	f.DurationVar(&opts.NATSAdminTTL, "nats-admin-ttl", 0, "with --nats-url: lifetime of admin.creds' user JWT, renewed in the data dir at half-life (default 168h: refresh copies elsewhere within a week)")
	f.IntVar(&opts.Replicas, "replicas", 0, "JetStream replicas of every stream and KV bucket (0: 3 when the cluster has 3+ servers, else 1)")
	f.BoolVar(&opts.HA, "ha", false, "with --nats-url: one of several controllers; lead while holding the lease in JetStream KV, stand by otherwise")
	f.DurationVar(&opts.LeaseTTL, "lease-ttl", controller.DefaultLeaseTTL, "with --ha: how long the leader lease outlives the leader's last renewal (a standby takes over after it)")
	infraF.register(f)
	cmd.AddCommand(newControllerStatusCmd())
	f.DurationVar(&opts.HTTPReadHeaderTimeout, "http-read-header-timeout", 10*time.Second, "time an HTTPS client has for the TLS handshake and its request headers")
	return cmd
}

// packagingHandlers serve the bootstrap script and the agent binaries it
// installs: $FLOTILLA_AGENT_DIR holds flotilla-linux-{amd64,arm64} (make
// build-all); without it the controller serves itself for its own arch.
func packagingHandlers() map[string]http.Handler {
	h := packaging.Handler(packaging.Options{BinDir: os.Getenv("FLOTILLA_AGENT_DIR")})
	m := map[string]http.Handler{}
	for _, p := range packaging.Paths {
		m[p] = h
	}
	return m
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
		Logger: slog.Default().With("component", "agent"), Executors: agentrollout.Executors(agentrollout.Options{}),
	})
	if err != nil {
		return fmt.Errorf("local agent: %w", withFlag(err, localAgentFlag))
	}
	return a.Run(ctx)
}
