package rolloutview

import (
	"fmt"
	"io"
	"strings"

	"github.com/flotilla-dev/flotilla/protocol"
)

// Plain prints one line per thing that happened, for logs and pipes: phase starts, each
// step's start and end, retries, node results, and the output of steps that failed
// (every output line with Options.Verbose). Lines start with the time since the rollout
// started.
type Plain struct {
	w    io.Writer
	opts Options
	t    tracker
}

// skippedLine is the engine's step.done line for a step the agent had applied already.
const skippedLine = "already applied"

// NewPlain returns a plain-line renderer writing to w.
func NewPlain(w io.Writer, opts Options) *Plain {
	return &Plain{w: w, opts: opts, t: newTracker()}
}

// Close does nothing: every line is written as its event arrives.
func (p *Plain) Close() {}

// Event prints what ev says, if it is worth a line.
func (p *Plain) Event(ev protocol.RolloutEvent) {
	n := p.t.apply(ev)
	switch ev.Type {
	case protocol.RolloutEventStart:
		msg := "rollout " + ev.Rollout
		if ev.Cluster != "" {
			msg += " of cluster " + ev.Cluster
		}
		p.line(ev, msg+" started"+suffix(ev.Line))
	case protocol.RolloutEventPhase:
		p.line(ev, "phase "+ev.Phase+suffix(ev.Line))
	case protocol.RolloutEventPhaseDone:
		p.line(ev, "phase "+ev.Phase+" done"+suffix(ev.Line))
	case protocol.RolloutEventHealth:
		p.line(ev, "health check: "+ev.Line)
	case protocol.RolloutEventDone:
		// The engine puts the rollout's end state (done, failed, halted) in Line.
		msg := "rollout done"
		if st := strings.TrimSpace(ev.Line); st != "" {
			msg = "rollout " + st
		}
		p.line(ev, msg)
	case protocol.RolloutEventNodeStart:
		msg := n.name + ": start"
		if n.steps > 0 {
			msg += ", " + plural(n.steps, "step")
		}
		if n.phase != "" {
			msg += " (phase " + n.phase + ")"
		}
		p.line(ev, msg+suffix(ev.Line))
	case protocol.RolloutEventStep:
		p.line(ev, fmt.Sprintf("%s: %s %s", n.name, stepIndex(n.step, n.steps), n.stepName))
	case protocol.RolloutEventOutput:
		if p.opts.Verbose && n != nil {
			p.line(ev, n.name+" | "+ev.Line)
		}
	case protocol.RolloutEventStepDone:
		// Line is empty for a step that ran, "already applied" for one the agent
		// skipped, and the error for one that failed.
		if ev.Line == skippedLine {
			p.line(ev, fmt.Sprintf("%s: %s %s", n.name, stepIndex(n.step, n.steps), skippedLine))
			break
		}
		verb := "done"
		if ev.Line != "" {
			verb = "ended"
		}
		msg := fmt.Sprintf("%s: %s %s in %s", n.name, stepIndex(n.step, n.steps), verb, Duration(ev.Time.Sub(n.started)))
		if n.done > 0 {
			msg += fmt.Sprintf(" (%s", Size(n.done))
			if n.rate > 0 {
				msg += fmt.Sprintf(" at %s/s", Size(int64(n.rate)))
			}
			msg += ")"
		}
		p.line(ev, msg+suffix(ev.Line))
	case protocol.RolloutEventRetry:
		p.flushOutput(ev, n)
		msg := n.name + ": retry"
		if ev.Line != "" {
			msg += ": " + ev.Line
		}
		p.line(ev, msg)
	case protocol.RolloutEventNodeDone:
		if o := ev.Outcome; o != nil && Problem(o.Status) {
			p.flushOutput(ev, n)
		}
		p.line(ev, n.name+": "+outcomeText(ev.Outcome, n))
	}
}

// flushOutput prints the buffered output of a node's failing step, once.
func (p *Plain) flushOutput(ev protocol.RolloutEvent, n *nodeState) {
	if n == nil || p.opts.Verbose {
		return
	}
	for _, l := range n.output {
		p.line(ev, n.name+" | "+l)
	}
	n.output = nil
}

func (p *Plain) line(ev protocol.RolloutEvent, msg string) {
	fmt.Fprintf(p.w, "[%6.1fs] %s\n", p.t.elapsed(ev.Time).Seconds(), strings.TrimRight(msg, "\n"))
}

// outcomeText says in a few words how a node ended.
func outcomeText(o *protocol.NodeOutcome, n *nodeState) string {
	if o == nil {
		return "done"
	}
	switch o.Status {
	case protocol.NodeOK:
		return fmt.Sprintf("ok, %d ran, %d skipped in %s", o.Ran, o.Skipped, Duration(o.Duration))
	case protocol.NodeNoop:
		return "nothing to do"
	case protocol.NodeNotStarted:
		return "not started (the rollout halted)"
	case protocol.NodeUnreachable:
		return "UNREACHABLE" + suffix(o.Error)
	}
	msg := strings.ToUpper(o.Status)
	if o.FailedStep != "" {
		msg += " at " + o.FailedStep
	} else if n != nil && n.stepName != "" {
		msg += " at " + n.stepName
	}
	if o.ExitCode != 0 {
		msg += fmt.Sprintf(" (exit code %d)", o.ExitCode)
	}
	return msg + suffix(o.Error)
}

func stepIndex(i, n int) string {
	if n > 0 {
		return fmt.Sprintf("[%d/%d]", i, n)
	}
	return fmt.Sprintf("[%d]", i)
}

func suffix(s string) string {
	if s = strings.TrimSpace(s); s != "" {
		return ": " + s
	}
	return ""
}
