package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/mirror"
	"github.com/flotilla-dev/flotilla/agent/rollout"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
)

func newAgentCmd() *cobra.Command {
	var (
		opts   agent.Options
		labels string
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent: join the controller, heartbeat, run signed tasks",
		Long: `Run the node agent. The first start joins the controller over HTTPS with a token,
trusting it by --ca-hash (sha256 of the PEM at https://HOST:9443/v1/ca.crt) or --ca-file,
and keeps the credentials it receives in --data-dir; later starts need no token.
Steps place files under --root (exported to steps as FLOTILLA_ROOT).`,
		Example: `  flotilla agent --controller https://10.0.0.1:9443 --token 1a2b3c4d.… --ca-hash sha256:…
  flotilla agent --controller 10.0.0.1 --token T --ca-hash sha256:H --name web-1 --labels role=web,rack=r7

  # several agents on one host for testing
  flotilla agent --name n2 --root /tmp/n2/root --data-dir /tmp/n2/state --controller … --token …

  flotilla agent status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := parseLabels(labels)
			if err != nil {
				return fmt.Errorf("--labels: %w", err)
			}
			opts.Labels = l
			opts.Version = version
			opts.Logger = slog.Default().With("component", "agent")
			opts.Executors = rollout.Executors(rollout.Options{})
			a, err := agent.New(cmd.Context(), opts)
			if err != nil {
				return withFlag(err, agentFlag)
			}
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Controller, "controller", os.Getenv("FLOTILLA_CONTROLLER"), "controller join address: https://HOST:9443, HOST:PORT or HOST ($FLOTILLA_CONTROLLER)")
	f.StringVar(&opts.Token, "token", os.Getenv("FLOTILLA_TOKEN"), "join token from `flotilla token create` (first start only; $FLOTILLA_TOKEN)")
	f.StringVar(&opts.CAHash, "ca-hash", "", "sha256:<hex> of the controller's CA PEM (printed by `flotilla token create`)")
	f.StringVar(&opts.CAFile, "ca-file", "", "the controller's CA certificate file, instead of --ca-hash")
	f.StringVar(&opts.Name, "name", "", "node name (default: host name)")
	f.StringSliceVar(&opts.NATSURLs, "nats-url", nil, "connect to these NATS URLs instead of the controller's (a site's leaf node: nats://leaf:4222)")
	f.StringVar(&labels, "labels", "", "node labels, k=v,k2=v2")
	f.StringVar(&opts.Root, "root", "/", "where steps place files (FLOTILLA_ROOT)")
	f.StringVar(&opts.DataDir, "data-dir", "/var/lib/flotilla-agent", "the agent's own state: credentials, applied steps, status.json")
	f.DurationVar(&opts.HeartbeatInterval, "heartbeat-interval", 5*time.Second, "how often to tell the controller this node is alive")
	f.DurationVar(&opts.MaxClockSkew, "max-clock-skew", protocol.DefaultMaxClockSkew, "how far this host's clock may be from the controller's before signed tasks are refused")
	f.StringVar(&opts.PeerListen, "peer-listen", agent.DefaultPeerListen, "address of the piece server other agents fetch layers from (mutual TLS); \"\" fetches only")
	f.StringVar(&opts.PeerAdvertise, "peer-advertise", "", "host other agents reach the piece server at (default: the address this host reaches the controller from)")
	f.Var(newRateValue(&opts.MaxUpload), "max-upload", "cap on layer bytes sent to other agents, e.g. 100mbit or 20MB/s (default none; a Clusterfile's spec.bandwidth can only lower it)")
	f.Var(newRateValue(&opts.MaxDownload), "max-download", "cap on layer bytes fetched, e.g. 1gbit or 50MB/s (default none; a Clusterfile's spec.bandwidth can only lower it)")
	f.StringVar(&opts.RegistryListen, "registry-listen", mirror.DefaultListen, "address of the node-local registry mirror serving the carried container images (read-only OCI pull API over HTTPS with the agent's own CA, see `flotilla agent containerd-mirror`; keep it on loopback and below port 1024, which only root can bind); \"\" disables it")
	f.StringVar(&opts.MetricsListen, "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics, plain HTTP (e.g. "+agent.DefaultMetricsListen+"; \"\": off)")
	cmd.AddCommand(newAgentStatusCmd(), newAgentUninstallCmd(), newAgentContainerdMirrorCmd())
	return cmd
}

func newAgentStatusCmd() *cobra.Command {
	var dataDir, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Print the local agent's status; exit 0 only when registered, connected and its registry mirror serves",
		Example: `  flotilla agent status
  flotilla agent status --data-dir /var/lib/flotilla-agent -o json
  until flotilla agent status >/dev/null 2>&1; do sleep 1; done   # wait until joined`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := agent.ReadStatus(dataDir)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			// A killed agent leaves its last status behind: trust it only while fresh.
			stale := st.Stale(time.Now())
			mirrorProblem := st.MirrorProblem()
			switch output {
			case "json":
				if err := cliWriteJSON(cmd, st); err != nil {
					return err
				}
			case "", "text", "table":
				hb := "never"
				if !st.LastHeartbeat.IsZero() {
					hb = time.Since(st.LastHeartbeat).Round(time.Second).String() + " ago"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "name:           %s\nregistered:     %t\nconnected:      %t\ncontroller:     %s\nlast heartbeat: %s\nrunning tasks:  %d\n",
					st.Name, st.Registered, st.Connected, st.Controller, hb, st.Running)
				if st.LastError != "" && !st.Connected {
					fmt.Fprintf(cmd.OutOrStdout(), "last error:     %s (%s ago)\n", st.LastError, time.Since(st.LastErrorAt).Round(time.Second))
				}
				switch {
				case mirrorProblem != "":
					fmt.Fprintf(cmd.OutOrStdout(), "registry mirror: NOT SERVING: %s\n", mirrorProblem)
				case st.Registry != "":
					fmt.Fprintf(cmd.OutOrStdout(), "registry mirror: https://%s (CA %s)\n", st.Registry, st.RegistryCA)
				}
			default:
				return fmt.Errorf("-o %q: want table or json", output)
			}
			if mirrorProblem != "" && !stale {
				// Said loudly: containerd pulls from upstream meanwhile, and
				// images steps fail.
				fmt.Fprintf(cmd.ErrOrStderr(), "flotilla agent status: %s\n", mirrorProblem)
			}
			if !st.Registered || !st.Connected || stale || mirrorProblem != "" {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "/var/lib/flotilla-agent", "the agent's data dir")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output: table or json")
	return cmd
}
