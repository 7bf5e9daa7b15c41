package main

import (
	"fmt"
	"time"

	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/spf13/cobra"
)

func newLogsCmd() *cobra.Command {
	var (
		conn   cliConnFlags
		output string
		limit  int
	)
	cmd := &cobra.Command{
		Use:   "logs NODE",
		Short: "Show a node's newest task events (output lines, step results) from the controller's history",
		Example: `  flotilla logs web-1
  flotilla logs web-1 -n 500 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: want text or json", output)
			}
			c, err := conn.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			evs, err := c.Logs(cmd.Context(), protocol.LogsRequest{Node: args[0], Limit: limit})
			if err != nil {
				return err
			}
			if output == "json" {
				if evs == nil {
					evs = []protocol.Event{}
				}
				return cliWriteJSON(cmd, evs)
			}
			w := cmd.OutOrStdout()
			for _, ev := range evs {
				fmt.Fprintf(w, "%s %s %s\n", ev.Time.UTC().Format(time.RFC3339), ev.Task, describeEvent(ev))
			}
			return nil
		},
	}
	conn.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output: text or json")
	cmd.Flags().IntVarP(&limit, "lines", "n", 100, "how many of the newest events (0: all kept)")
	return cmd
}

// describeEvent renders one event on one line, node text made terminal-safe.
func describeEvent(ev protocol.Event) string {
	clean := human.TermSafe
	step := fmt.Sprintf("step %d", ev.Step)
	if ev.StepName != "" {
		step += " (" + clean(ev.StepName) + ")"
	}
	switch {
	case ev.Type == protocol.EventOutput:
		return fmt.Sprintf("%s %s | %s", step, ev.Stream, clean(ev.Line))
	case ev.Type == protocol.EventStepResult && ev.Result != nil:
		r := ev.Result
		return fmt.Sprintf("%s done: exit %d%s", step, r.ExitCode, suffix(r.Error))
	case ev.Type == protocol.EventTaskResult && ev.Final != nil:
		f := ev.Final
		return fmt.Sprintf("task done: ok=%t exit %d%s", f.OK, f.ExitCode, suffix(f.Error))
	case ev.Type == protocol.EventProgress && ev.Progress != nil:
		return fmt.Sprintf("%s progress %d/%d %s", step, ev.Progress.Done, ev.Progress.Total, clean(ev.Progress.Message))
	}
	return step + " " + string(ev.Type)
}

func suffix(s string) string {
	if s == "" {
		return ""
	}
	return fmt.Sprintf(" (%q)", s)
}
