// Command flotilla is the one binary: controller, agent, image tools and CLI.
//
// newRootCmd lists every command; each is built by a constructor in its own
// file. Commands parse flags, call packages (the controller, the agent, the
// client, bundle) and print, nothing more. No init() and no package-level
// state: main builds everything.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at link time: -ldflags "-X main.version=…".
var version = "dev"

// exitError carries a specific process exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "flotilla",
		Short: "Deliver a whole distributed application to a fleet as one cluster image",
		Long: `flotilla builds a multi-node application into one OCI cluster image and rolls it
onto a fleet of hosts through agents that take orders from a controller over NATS.`,
		Example: `  flotilla build -t registry.local/etcd-cluster:3.4 examples/etcd
  flotilla controller --with-local-agent
  flotilla token create --ttl 2h
  flotilla apply -f Clusterfile`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return setupLoggingFrom(cmd)
		},
	}
	root.PersistentFlags().String("log-level", envOr("FLOTILLA_LOG_LEVEL", "info"), "log level: debug, info, warn, error")
	root.PersistentFlags().String("log-format", envOr("FLOTILLA_LOG_FORMAT", "text"), "log format: text or json")
	root.AddCommand(
		// the fleet: controller and agent
		newControllerCmd(), newAgentCmd(), newLvscareCmd(), newBlobCmd(), newNATSAuthCmd(),
		// admin actions, through the client package
		newNodesCmd(), newExecCmd(), newTokenCmd(), newPlanCmd(), newApplyCmd(),
		newStatusCmd(), newDeleteCmd(), newLogsCmd(), newBackupCmd(), newBackupsCmd(), newRestoreCmd(),
		// cluster images
		newBuildCmd(), newImagesCmd(), newInspectCmd(), newTagCmd(), newRmiCmd(),
		newPushCmd(), newPullCmd(), newLoginCmd(), newLogoutCmd(), newSaveCmd(), newLoadCmd(),
		newVersionCmd(),
	)
	return root
}

// setupLoggingFrom sets the default logger from the root's --log-level and
// --log-format as cmd sees them.
func setupLoggingFrom(cmd *cobra.Command) error {
	level, _ := cmd.Flags().GetString("log-level")
	format, _ := cmd.Flags().GetString("log-format")
	return setupLogging(level, format)
}

func setupLogging(level, format string) error {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, opts)))
	case "json":
		slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, opts)))
	default:
		return fmt.Errorf("--log-format %q: want text or json", format)
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func main() {
	os.Exit(run())
}

// run is main without os.Exit, so deferred work (the CPU profile) finishes.
func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	prof := os.Getenv(cpuProfileEnv)
	os.Unsetenv(cpuProfileEnv) // a child process (lvscare --clean) must not write over it
	stopProfile, err := startCPUProfile(prof)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	defer stopProfile()
	err = newRootCmd().ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(os.Stderr, "error:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(os.Stderr, "error:", err)
	return 1
}

// cpuProfileEnv names a file to write a Go CPU profile of the whole process
// to, from start to exit (SIGTERM included): for benchmarks
// (FLOTILLA_BENCH_PROFILE in bench/) and performance work, never set in
// production. The file is created with mode 0600.
const cpuProfileEnv = "FLOTILLA_CPU_PROFILE"

// startCPUProfile starts a CPU profile into path, if path is not empty, and
// returns the function that stops it and closes the file.
func startCPUProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cpuProfileEnv, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s %s: %w", cpuProfileEnv, path, err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "error: %s %s: %v\n", cpuProfileEnv, path, err)
		}
	}, nil
}
