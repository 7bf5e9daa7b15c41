package main

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-dev/flotilla/lvscare"
)

func newLvscareCmd() *cobra.Command {
	var (
		configPath string
		vip        string
		backends   []string
		clean      bool
		fl         lvscare.Config
		interval   time.Duration
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "lvscare",
		Short: "Keep a virtual IP load-balanced to the healthy backends (nftables or IPVS)",
		Long: `lvscare gives this node a virtual IP (VIP) that always points at healthy backends.

It checks every backend concurrently each interval; a backend leaves the VIP after
--fall failed checks in a row and comes back after --rise good ones. The kernel rules
are reconciled every interval: unknown backends are removed and rules flushed by hand
come back. With every backend down, new connections are refused at once.

SIGTERM leaves the rules in place so traffic keeps flowing across a restart;
--clean removes everything lvscare created. Flags override the config file.`,
		Example: `  # etcd's client port behind a VIP, checked over HTTP
  flotilla lvscare --vip 10.103.97.2:2379 --rs 10.0.0.11:2379 --rs 10.0.0.12:2379 --rs 10.0.0.13:2379 \
      --health http --health-path /health

  # what the cluster image's unit runs
  flotilla lvscare --config /etc/flotilla/lvscare.yaml --metrics-listen 127.0.0.1:9273

  # remove the nftables table (or IPVS services) and the VIP routes or addresses
  flotilla lvscare --clean`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := lvscare.Config{}
			if configPath != "" {
				c, err := lvscare.LoadConfig(configPath)
				if err != nil {
					return &exitError{2, fmt.Errorf("%w (fix the file or drop --config)", err)}
				}
				cfg = c
			}
			f := cmd.Flags()
			if f.Changed("vip") || f.Changed("rs") {
				cfg.Services = []lvscare.ServiceConfig{{VIP: vip, Backends: backends, FromFlags: true}}
			}
			if f.Changed("health") {
				cfg.Health.Protocol = fl.Health.Protocol
			}
			if f.Changed("health-path") {
				cfg.Health.Path = fl.Health.Path
			}
			if f.Changed("interval") {
				cfg.Health.Interval.Duration = interval
			}
			if f.Changed("timeout") {
				cfg.Health.Timeout.Duration = timeout
			}
			if f.Changed("fall") {
				cfg.Health.Fall = fl.Health.Fall
			}
			if f.Changed("rise") {
				cfg.Health.Rise = fl.Health.Rise
			}
			if f.Changed("dataplane") {
				cfg.Dataplane = fl.Dataplane
			}
			if f.Changed("metrics-listen") {
				cfg.MetricsListen = fl.MetricsListen
			}
			cfg = cfg.WithDefaults()
			log := slog.Default().With("component", "lvscare")
			if clean {
				switch cfg.Dataplane {
				case "auto", "nftables", "ipvs":
				default:
					return &exitError{2, fmt.Errorf("--dataplane %q: want auto, nftables or ipvs", cfg.Dataplane)}
				}
				if err := lvscare.Clean(cmd.Context(), cfg.Dataplane, log); err != nil {
					return err
				}
				log.Info("removed lvscare's rules and VIP routes", "dataplane", cfg.Dataplane)
				return nil
			}
			// Validate everything before the dataplane is opened: bad input changes nothing.
			if _, err := cfg.Validate(); err != nil {
				return &exitError{2, fmt.Errorf("%w (see flotilla lvscare --help)", err)}
			}
			dp, err := lvscare.OpenDataplane(cfg.Dataplane, log)
			if err != nil {
				return err
			}
			r, err := lvscare.NewRunner(cfg, dp, log)
			if err != nil {
				return &exitError{2, err}
			}
			return r.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&configPath, "config", "c", "", "YAML config file (see lvscare/README.md); flags override it")
	f.StringVar(&vip, "vip", "", "virtual IP:PORT, e.g. 10.103.97.2:2379")
	f.StringArrayVar(&backends, "rs", nil, "backend (real server) IP:PORT; repeat for each backend")
	f.StringVar(&fl.Health.Protocol, "health", lvscare.Defaults.Protocol, "health check: http, https or tcp")
	f.StringVar(&fl.Health.Path, "health-path", lvscare.Defaults.Path, "HTTP path for http and https checks (2xx or 3xx is healthy)")
	f.DurationVar(&interval, "interval", lvscare.Defaults.Interval.Duration, "time between check rounds and reconciliations")
	f.DurationVar(&timeout, "timeout", lvscare.Defaults.Timeout.Duration, "timeout of one check")
	f.IntVar(&fl.Health.Fall, "fall", lvscare.Defaults.Fall, "failed checks in a row that remove a backend")
	f.IntVar(&fl.Health.Rise, "rise", lvscare.Defaults.Rise, "good checks in a row that add a backend back")
	f.StringVar(&fl.Dataplane, "dataplane", "auto", "auto (IPVS if the kernel has it, else nftables), nftables or ipvs")
	f.BoolVar(&clean, "clean", false, "remove everything lvscare created, then exit")
	f.StringVar(&fl.MetricsListen, "metrics-listen", "", "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9273")
	return cmd
}
