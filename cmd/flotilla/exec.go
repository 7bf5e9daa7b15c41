package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
)

// execNodeOutput is one node's result with its output, for -o json.
type execNodeOutput struct {
	protocol.ExecNodeResult
	Stdout []string `json:"stdout"`
	Stderr []string `json:"stderr"`
}

func newExecCmd() *cobra.Command {
	var (
		conn     cliConnFlags
		all      bool
		nodes    []string
		role     string
		selector string
		timeout  time.Duration
		output   string
	)
	cmd := &cobra.Command{
		Use:   "exec (--all | --node NAME… | --role R | --selector k=v) [--timeout 30s] -- CMD ARGS…",
		Short: "Run a command on the selected nodes at once and report each node's output and exit code",
		Long: `Run one command on many nodes in parallel, through the agents (no SSH). Each output
line is printed with the node's name; a summary follows. The exit code is 1 if any
node failed, timed out or was offline. --role R selects nodes labelled role=R.`,
		Example: `  flotilla exec --all -- uptime
  flotilla exec --node web-1 --node web-2 -- systemctl is-active nginx
  flotilla exec --role master --timeout 2m -- sh -c 'df -h /var | tail -1'
  flotilla exec --selector rack=r7 -o json -- cat /etc/machine-id`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 0 {
				return errors.New("put the command after --: flotilla exec --all -- CMD ARGS…")
			}
			sel := protocol.Selector{All: all, Names: nodes}
			n := 0
			for _, set := range []bool{all, len(nodes) > 0, role != "", selector != ""} {
				if set {
					n++
				}
			}
			if n != 1 {
				return errors.New("choose the nodes with exactly one of --all, --node, --role or --selector")
			}
			if role != "" {
				sel.Labels = map[string]string{"role": role}
			}
			if selector != "" {
				l, err := parseLabels(selector)
				if err != nil {
					return fmt.Errorf("--selector: %w", err)
				}
				sel.Labels = l
			}
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			var (
				mu   sync.Mutex
				outs = map[string]*execNodeOutput{}
			)
			stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			onOutput := func(ev protocol.Event) {
				mu.Lock()
				defer mu.Unlock()
				o := outs[ev.Node]
				if o == nil {
					o = &execNodeOutput{}
					outs[ev.Node] = o
				}
				if ev.Stream == "stderr" {
					o.Stderr = append(o.Stderr, ev.Line)
				} else {
					o.Stdout = append(o.Stdout, ev.Line)
				}
				if output == "json" {
					return
				}
				w := stdout
				if ev.Stream == "stderr" {
					w = stderr
				}
				fmt.Fprintf(w, "%s | %s\n", ev.Node, human.TermSafe(ev.Line))
			}
			reply, err := c.Exec(cmd.Context(), protocol.ExecRequest{Selector: sel, Command: args, Timeout: timeout}, onOutput)
			if err != nil {
				return err
			}
			failed := 0
			for _, r := range reply.Results {
				if !r.OK {
					failed++
				}
			}
			if output == "json" {
				list := make([]execNodeOutput, 0, len(reply.Results))
				for _, r := range reply.Results {
					o := execNodeOutput{ExecNodeResult: r, Stdout: []string{}, Stderr: []string{}}
					if got := outs[r.Node]; got != nil {
						o.Stdout, o.Stderr = append(o.Stdout, got.Stdout...), append(o.Stderr, got.Stderr...)
					}
					list = append(list, o)
				}
				if err := cliWriteJSON(cmd, list); err != nil {
					return err
				}
			} else {
				printExecSummary(stdout, reply.Results, failed)
			}
			if failed > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d of %d nodes failed: %s", failed, len(reply.Results), failedNames(reply.Results))}
			}
			return nil
		},
	}
	conn.register(cmd)
	f := cmd.Flags()
	f.BoolVar(&all, "all", false, "every node in the inventory")
	f.StringArrayVar(&nodes, "node", nil, "a node by name (repeat for more)")
	f.StringVar(&role, "role", "", "nodes labelled role=R")
	f.StringVar(&selector, "selector", "", "nodes whose labels match k=v[,k2=v2]")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "per-node time limit; the command is killed after it")
	f.StringVarP(&output, "output", "o", "text", "output: text or json")
	_ = cmd.RegisterFlagCompletionFunc("node", func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		return completeNodeNames(cmd, &conn), cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

// completeNodeNames asks the controller for node names; no controller, no suggestions.
func completeNodeNames(cmd *cobra.Command, conn *cliConnFlags) []string {
	c, err := conn.connect()
	if err != nil {
		return nil
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Second)
	defer cancel()
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(nodes))
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	return names
}

func printExecSummary(w io.Writer, results []protocol.ExecNodeResult, failed int) {
	fmt.Fprintln(w, "---")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range results {
		state := "ok"
		switch {
		case r.TimedOut:
			state = "TIMEOUT"
		case !r.OK:
			state = "FAILED"
		}
		detail := ""
		if r.Error != "" {
			detail = r.Error
		}
		code := fmt.Sprintf("exit %d", r.ExitCode)
		if r.ExitCode < 0 {
			code = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Node, state, code, r.Duration.Round(time.Millisecond), detail)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d nodes: %d ok, %d failed\n", len(results), len(results)-failed, failed)
}

func failedNames(results []protocol.ExecNodeResult) string {
	var names []string
	for _, r := range results {
		if !r.OK {
			names = append(names, r.Node)
		}
	}
	return strings.Join(names, ", ")
}
