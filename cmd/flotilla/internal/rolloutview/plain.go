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
	// held is each node's last step.done line, printed at that node's next event: the
	// event does not say whether the step failed, but a node.done that follows it does.
	held map[string]heldLine
}

// heldLine is a step.done line waiting for the node's next event.
type heldLine struct {
	ev           protocol.RolloutEvent
	done, failed string
}

// skippedLine is the engine's step.done line for a step the agent had applied already.
const skippedLine = "already applied"

// NewPlain returns a plain-line renderer writing to w.
func NewPlain(w io.Writer, opts Options) *Plain {
	return &Plain{w: w, opts: opts, t: newTracker(), held: map[string]heldLine{}}
}

// Close prints the lines still held.
func (p *Plain) Close() { p.releaseAll() }

// release prints node's held step.done line, as failed when failed is set.
func (p *Plain) release(node string, failed bool) {
	h, ok := p.held[node]
	if !ok {
		return
	}
	delete(p.held, node)
	if failed {
		p.line(h.ev, h.failed)
	} else {
		p.line(h.ev, h.done)
	}
}

func (p *Plain) releaseAll() {
	for _, name := range p.t.order {
		p.release(name, false)
	}
}

// Event prints what ev says, if it is worth a line.
func (p *Plain) Event(ev protocol.RolloutEvent) {
	ev = safeEvent(ev)
	n := p.t.apply(ev)
	if ev.Node == "" {
		p.releaseAll()
	} else if ev.Type == protocol.RolloutEventNodeDone && ev.Outcome != nil && ev.Outcome.Status == protocol.NodeFailed {
		// The held step is the one the node failed at: its line, then its output.
		p.release(ev.Node, true)
		p.flushOutput(ev, n)
	} else {
		p.release(ev.Node, false)
	}
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
		for _, l := range healthLines(ev.Line) {
			p.line(ev, l)
		}
	case protocol.RolloutEventInfra:
		p.line(ev, "infra: "+ev.Line)
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
		took := Duration(ev.Time.Sub(n.started))
		head := n.name + ": " + stepIndex(n.step, n.steps)
		if ev.Line != "" { // the step's error
			p.flushOutput(ev, n)
			p.line(ev, head+" failed after "+took+suffix(ev.Line))
			break
		}
		done := head + " done in " + took
		if n.done > 0 {
			done += fmt.Sprintf(" (%s", Size(n.done))
			if n.rate > 0 {
				done += fmt.Sprintf(" at %s/s", Size(int64(n.rate)))
			}
			done += ")"
		}
		p.held[n.name] = heldLine{ev: ev, done: done, failed: head + " failed after " + took}
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
	return msg + suffix(errorText(o))
}

// errorText is the outcome's error unless it only repeats the exit code.
func errorText(o *protocol.NodeOutcome) string {
	switch o.Error {
	case fmt.Sprintf("exit code %d", o.ExitCode), fmt.Sprintf("exit status %d", o.ExitCode):
		return ""
	}
	return o.Error
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
