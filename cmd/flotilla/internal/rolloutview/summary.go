package rolloutview

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Problems returns the outcomes of the nodes whose part did not finish: failed,
// unreachable or not started.
func Problems(res *protocol.ApplyResult) []protocol.NodeOutcome {
	var out []protocol.NodeOutcome
	for _, o := range res.Nodes {
		// A member evicted while offline left its membership as asked (its own cleanup
		// waits for the machine): reported in the table, not a failure.
		evicted := o.Phase == protocol.PhaseEvict && o.Status == protocol.NodeUnreachable
		if Problem(o.Status) && !evicted {
			out = append(out, o)
		}
	}
	return out
}

// Err says which nodes did not finish, or nil when the rollout went well; the CLI exits
// non-zero when it is set.
func Err(res *protocol.ApplyResult) error {
	probs := Problems(res)
	if len(probs) == 0 {
		if !res.OK {
			return fmt.Errorf("rollout %s of cluster %s did not succeed%s", res.Rollout, res.Cluster, suffix(res.Health))
		}
		return nil
	}
	names := make([]string, 0, len(probs))
	for _, o := range probs {
		names = append(names, o.Node+" ("+o.Status+")")
	}
	return fmt.Errorf("%d of %d nodes of cluster %s did not finish: %s", len(probs), len(res.Nodes), res.Cluster, strings.Join(names, ", "))
}

// WriteSummary writes the table of node outcomes, a count line and, for each failed
// node, its failing step, exit code and last output lines.
func WriteSummary(w io.Writer, res *protocol.ApplyResult) error {
	safe := *res
	safe.Health = human.TermSafeLines(res.Health)
	safe.Nodes = make([]protocol.NodeOutcome, len(res.Nodes))
	for i, o := range res.Nodes {
		safe.Nodes[i] = safeOutcome(o)
	}
	res = &safe
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPHASE\tACTION\tSTATUS\tRAN\tSKIPPED\tDURATION\tFAILED STEP")
	counts := map[string]int{}
	for _, o := range res.Nodes {
		counts[o.Status]++
		failed := "-"
		if o.FailedStep != "" {
			failed = o.FailedStep
		}
		dur := "-"
		if o.Duration > 0 {
			dur = Duration(o.Duration)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", o.Node, dash(o.Phase), dash(o.Action), o.Status, o.Ran, o.Skipped, dur, failed)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}

	var parts []string
	for _, st := range []string{protocol.NodeOK, protocol.NodeNoop, protocol.NodeFailed, protocol.NodeUnreachable, protocol.NodeNotStarted} {
		if counts[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[st], st))
			delete(counts, st)
		}
	}
	for st, c := range counts { // statuses this build does not know
		parts = append(parts, fmt.Sprintf("%d %s", c, st))
	}
	line := plural(len(res.Nodes), "node")
	if len(parts) > 0 {
		line += ": " + strings.Join(parts, ", ")
	}
	if res.Duration > 0 {
		line += " in " + Duration(res.Duration)
	}
	if res.Cluster != "" {
		line += "; cluster " + res.Cluster
	}
	if res.Image != "" {
		line += ", image " + res.Image
		if res.ImageDigest != "" {
			line += " (" + protocol.ShortDigest(res.ImageDigest) + ")"
		}
	}
	if res.Resumed {
		line += " (resumed)"
	}
	fmt.Fprintln(w, line)
	if res.Halted {
		fmt.Fprintln(w, "the rollout halted after a failure (onFailure: halt): nodes not started were left as they were")
	}
	if res.Health != "" {
		for _, l := range healthLines(res.Health) {
			fmt.Fprintln(w, l)
		}
	}

	for _, o := range res.Nodes {
		switch o.Status {
		case protocol.NodeFailed:
			fmt.Fprintf(w, "\n%s failed", o.Node)
			if o.FailedStep != "" {
				fmt.Fprintf(w, " at step %q", o.FailedStep)
			}
			if o.ExitCode != 0 {
				fmt.Fprintf(w, " with exit code %d", o.ExitCode)
			}
			if e := errorText(&o); e != "" {
				fmt.Fprintf(w, ": %s", e)
			}
			fmt.Fprintln(w)
			if len(o.LastOutput) > 0 {
				fmt.Fprintf(w, "last %s of its output:\n", plural(len(o.LastOutput), "line"))
				for _, l := range o.LastOutput {
					fmt.Fprintf(w, "  | %s\n", l)
				}
			}
		case protocol.NodeUnreachable:
			fmt.Fprintf(w, "\n%s unreachable%s\n", o.Node, suffix(o.Error))
			if o.Ran > 0 {
				fmt.Fprintf(w, "  %d of its %d steps had run; apply again once it is back to finish it\n", o.Ran, o.Steps)
			}
		}
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
