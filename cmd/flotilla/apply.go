package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/flotilla-dev/flotilla/client"
	"github.com/flotilla-dev/flotilla/cmd/flotilla/internal/rolloutview"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// rolloutFlags are the flags apply and delete share.
type rolloutFlags struct {
	conn    cliConnFlags
	file    string
	output  string
	verbose bool
	timeout time.Duration
}

func (f *rolloutFlags) register(cmd *cobra.Command) {
	f.conn.register(cmd)
	fl := cmd.Flags()
	fl.StringVarP(&f.file, "file", "f", "", "the Clusterfile (required)")
	fl.StringVarP(&f.output, "output", "o", "text", "output: text (live progress and a summary) or json (the result; progress goes to stderr)")
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "show every output line of every step (default: only the output of failing steps)")
	fl.DurationVar(&f.timeout, "timeout", 2*time.Hour, "stop waiting for the result after this long (the rollout goes on in the controller)")
	_ = cmd.MarkFlagFilename("file", "yaml", "yml")
}

func (f *rolloutFlags) check() error {
	switch f.output {
	case "text", "json":
		return nil
	}
	return fmt.Errorf("-o %q: want text or json", f.output)
}

func newApplyCmd() *cobra.Command {
	var (
		f      rolloutFlags
		dryRun bool
		detach bool
		attach string
	)
	cmd := &cobra.Command{
		Use:   "apply -f Clusterfile [--dry-run] [--detach] [-o text|json] | apply --attach CLUSTER",
		Short: "Roll a Clusterfile out to its hosts, showing each node's progress, and end with a summary",
		Long: `Send the Clusterfile to the controller, which plans each node's work and runs it phase
by phase: master0, the other masters, nodes, then custom roles. On a terminal each node
gets a progress bar (phase, step i/n, the step, bytes and rate while a layer is fetched);
otherwise one line is printed per step start and end, retry and phase, with the output
of failing steps (-v: every output line). A summary table follows, with the failing
step, exit code and last output lines of each failed node.

Edit the Clusterfile and apply it again to scale up or down or to upgrade: only what
changed runs. The exit code is 0 when every node is ok, 1 when any node failed, was
unreachable or was not started. Ctrl-C stops watching, not the rollout: it goes on in
the controller (see flotilla status). A controller that stops in the middle of a
rollout resumes it when it starts again; --attach CLUSTER follows a running or
resuming rollout with the same live progress and exit code (it waits for a
restarting controller for up to a minute).`,
		Example: `  flotilla apply -f Clusterfile
  flotilla apply -f Clusterfile --dry-run          # same as flotilla plan
  flotilla apply -f Clusterfile -v                 # every output line of every step
  flotilla apply -f Clusterfile --detach && flotilla status prod-etcd
  flotilla apply --attach prod-etcd                # follow it again after Ctrl-C or a controller restart
  flotilla apply -f Clusterfile -o json | jq '.nodes[] | select(.status != "ok")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dryRun {
				out := f.output
				if out == "" {
					out = "text"
				}
				return runPlan(cmd, &f.conn, f.file, out)
			}
			if err := f.check(); err != nil {
				return err
			}
			if attach != "" {
				if f.file != "" || detach {
					return errors.New("--attach CLUSTER follows a running rollout: it takes no -f and no --detach")
				}
				return runAttach(cmd, &f, attach)
			}
			req, cluster, err := readClusterfile(f.file)
			if err != nil {
				return err
			}
			req.Detach = detach
			return runRollout(cmd, &f, applyCall(req), detach, cluster)
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing (flotilla plan)")
	cmd.Flags().BoolVar(&detach, "detach", false, "return once the rollout started; it goes on in the controller")
	cmd.Flags().StringVar(&attach, "attach", "", "follow the running or resuming rollout of this cluster instead of starting one")
	return cmd
}

// readClusterfile reads the Clusterfile at path into a request, and the cluster's name
// if the file parses here (the controller validates it again and reports errors).
func readClusterfile(path string) (protocol.ApplyRequest, string, error) {
	if path == "" {
		return protocol.ApplyRequest{}, "", errors.New("no Clusterfile: pass it with -f PATH")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return protocol.ApplyRequest{}, "", fmt.Errorf("read Clusterfile: %w (check the path given with -f)", err)
	}
	name := ""
	if cf, err := clusterfile.Parse(path, data); err == nil {
		name = cf.Cluster.Name
	}
	return protocol.ApplyRequest{Clusterfile: data, Path: path}, name, nil
}

// rolloutCall is one of the client's rollout calls (Apply, Delete, Attach).
type rolloutCall func(ctx context.Context, c *client.Client, onEvent func(protocol.RolloutEvent)) (*protocol.ApplyResult, error)

// applyCall and deleteCall send the Clusterfile; attachCall names the cluster.
func applyCall(req protocol.ApplyRequest) rolloutCall {
	return func(ctx context.Context, c *client.Client, on func(protocol.RolloutEvent)) (*protocol.ApplyResult, error) {
		return c.Apply(ctx, req, on)
	}
}

func deleteCall(req protocol.ApplyRequest) rolloutCall {
	return func(ctx context.Context, c *client.Client, on func(protocol.RolloutEvent)) (*protocol.ApplyResult, error) {
		return c.Delete(ctx, req, on)
	}
}

func attachCall(cluster string) rolloutCall {
	return func(ctx context.Context, c *client.Client, on func(protocol.RolloutEvent)) (*protocol.ApplyResult, error) {
		return c.Attach(ctx, cluster, on)
	}
}

// runRollout sends an apply or delete request, shows the streamed events and the
// summary, and turns failed nodes into a non-zero exit code.
func runRollout(cmd *cobra.Command, f *rolloutFlags, call rolloutCall, detach bool, cluster string) error {
	c, err := f.conn.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	return followRollout(cmd, f, c, call, detach, cluster)
}

// runAttach follows the rollout of cluster that runs (or is about to resume) in
// the controller, waiting up to a minute for a controller that is restarting.
func runAttach(cmd *cobra.Command, f *rolloutFlags, cluster string) error {
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := f.conn.connect()
		if err == nil {
			defer c.Close()
			return followRollout(cmd, f, c, attachCall(cluster), false, cluster)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("attach to %s: %w", cluster, err)
		}
		slog.Info("waiting for the controller", "err", err)
		select {
		case <-cmd.Context().Done():
			return &exitError{code: 130}
		case <-time.After(time.Second):
		}
	}
}

// followRollout makes the rollout call, shows the streamed events and the
// summary, and turns failed nodes into a non-zero exit code.
func followRollout(cmd *cobra.Command, f *rolloutFlags, c *client.Client, call rolloutCall, detach bool, cluster string) error {
	view := newRolloutRenderer(cmd, f.output, f.verbose)
	onEvent := func(ev protocol.RolloutEvent) {
		if cluster == "" {
			cluster = ev.Cluster
		}
		view.Event(ev)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	defer cancel()
	res, err := call(ctx, c, onEvent)
	view.Close()
	follow := "flotilla status"
	attach := "flotilla apply --attach CLUSTER"
	if cluster != "" {
		follow += " " + cluster
		attach = "flotilla apply --attach " + cluster
	}
	switch {
	case errors.Is(err, client.ErrControllerLost):
		return fmt.Errorf("%w\nthe controller stopped during the rollout; it resumes the rollout when it starts again: follow it with %s", err, attach)
	case err != nil && cmd.Context().Err() != nil:
		fmt.Fprintf(cmd.ErrOrStderr(), "\ninterrupted: the rollout goes on in the controller; follow it with: %s\n", follow)
		return &exitError{code: 130}
	case err != nil && errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("no result within --timeout %s: the rollout goes on in the controller; follow it with: %s", f.timeout, follow)
	case err != nil:
		return err
	}
	if res.Cluster != "" {
		follow = "flotilla status " + res.Cluster
	}
	if f.output == "json" {
		if res.Nodes == nil {
			res.Nodes = []protocol.NodeOutcome{}
		}
		if err := cliWriteJSON(cmd, res); err != nil {
			return err
		}
	} else if detach {
		fmt.Fprintf(cmd.OutOrStdout(), "rollout %s of cluster %s started in the controller; follow it with: %s\n", res.Rollout, res.Cluster, follow)
		return nil
	} else if err := rolloutview.WriteSummary(cmd.OutOrStdout(), res); err != nil {
		return err
	}
	if detach {
		return nil
	}
	if err := rolloutview.Err(res); err != nil {
		return &exitError{code: 1, err: err}
	}
	return nil
}

// newRolloutRenderer shows progress on stdout (stderr with -o json): bars on a
// terminal, plain lines otherwise.
func newRolloutRenderer(cmd *cobra.Command, output string, verbose bool) rolloutview.Renderer {
	w := cmd.OutOrStdout()
	if output == "json" {
		w = cmd.ErrOrStderr()
	}
	opts := rolloutview.Options{Verbose: verbose}
	if terminalWidth(w) >= 60 && os.Getenv("TERM") != "dumb" {
		return rolloutview.NewBars(w, opts)
	}
	return rolloutview.NewPlain(w, opts)
}

// terminalWidth is w's width in columns if it is a terminal, else 0.
func terminalWidth(w io.Writer) int {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return 0
	}
	cols, _, err := term.GetSize(int(f.Fd()))
	if err != nil {
		return 0
	}
	return cols
}
