// Package rolloutview shows a rollout to a person: live per-node progress from the
// controller's event stream (plain lines or a multi-bar), the summary at the end, and
// the status of clusters.
package rolloutview

import (
	"fmt"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Renderer shows a rollout's events as they arrive. Event is called from one goroutine
// at a time; Close ends the display (it is safe to call more than once).
type Renderer interface {
	Event(ev protocol.RolloutEvent)
	Close()
}

// Options tune what a renderer shows.
type Options struct {
	// Verbose prints every output line of every step; otherwise only the output of a
	// step that failed (or made its node retry) is shown.
	Verbose bool
}

// maxBuffered is how many output lines of a step are kept to show if it fails.
const maxBuffered = 40

// nodeState is what the renderers remember of one node while the rollout runs.
type nodeState struct {
	name     string
	phase    string
	step     int // 1-based index of the current (or last) step
	steps    int
	stepName string
	started  time.Time // of the current step
	output   []string  // the current step's output lines, the last maxBuffered
	done     int64     // bytes fetched by the current step
	total    int64
	rate     float64 // bytes/s of the current step's fetch
	finished bool
	outcome  *protocol.NodeOutcome
	attempt  int
	note     string // the last retry message, shown until the next step
}

// tracker follows the event stream: the state shared by both renderers.
type tracker struct {
	start time.Time
	nodes map[string]*nodeState
	order []string
}

func newTracker() tracker { return tracker{nodes: map[string]*nodeState{}} }

// node returns the state of name, creating it on first sight.
func (t *tracker) node(name string) *nodeState {
	n := t.nodes[name]
	if n == nil {
		n = &nodeState{name: name}
		t.nodes[name] = n
		t.order = append(t.order, name)
	}
	return n
}

// apply updates the state from one event and returns the node it concerns (nil for
// rollout-wide events).
func (t *tracker) apply(ev protocol.RolloutEvent) *nodeState {
	if t.start.IsZero() && !ev.Time.IsZero() {
		t.start = ev.Time
	}
	if ev.Node == "" {
		return nil
	}
	n := t.node(ev.Node)
	if ev.Phase != "" {
		n.phase = ev.Phase
	}
	if ev.Steps > 0 {
		n.steps = ev.Steps
	}
	switch ev.Type {
	case protocol.RolloutEventNodeStart:
		n.finished, n.outcome = false, nil
	case protocol.RolloutEventStep:
		n.step, n.stepName, n.started = ev.Step, ev.StepName, ev.Time
		n.output, n.done, n.total, n.rate, n.note = nil, 0, 0, 0, ""
	case protocol.RolloutEventOutput:
		n.output = append(n.output, ev.Line)
		if len(n.output) > maxBuffered {
			n.output = n.output[len(n.output)-maxBuffered:]
		}
	case protocol.RolloutEventProgress:
		if el := ev.Time.Sub(n.started).Seconds(); el > 0 && ev.Done > 0 {
			n.rate = float64(ev.Done) / el
		}
		n.done, n.total = ev.Done, ev.Total
	case protocol.RolloutEventStepDone:
		if ev.Step > 0 {
			n.step = ev.Step
		}
	case protocol.RolloutEventRetry:
		n.attempt++
		n.note = ev.Line
	case protocol.RolloutEventNodeDone:
		n.finished = true
		n.outcome = ev.Outcome
	}
	return n
}

// elapsed is the time since the rollout started, for the plain lines.
func (t *tracker) elapsed(at time.Time) time.Duration {
	if t.start.IsZero() || at.IsZero() || at.Before(t.start) {
		return 0
	}
	return at.Sub(t.start)
}

// Problem reports whether an outcome status means the node's part did not finish.
func Problem(status string) bool {
	return status != protocol.NodeOK && status != protocol.NodeNoop
}

// Size formats a byte count with a binary unit.
func Size(n int64) string { return human.Bytes(n) }

// Duration rounds d for people: ms under a second, 0.1 s under a minute, else seconds.
func Duration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// plural returns "1 node" or "2 nodes".
func plural(n int, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// healthLines is a health check's output as printed: its first line after the
// label, the others indented under it.
func healthLines(out string) []string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := range lines {
		if i == 0 {
			lines[i] = "health check: " + lines[i]
		} else {
			lines[i] = "  " + lines[i]
		}
	}
	return lines
}

// safeEvent makes the text a node put into ev terminal-safe (human.TermSafe):
// output lines, step names and the outcome's error and last lines.
func safeEvent(ev protocol.RolloutEvent) protocol.RolloutEvent {
	line := human.TermSafe(ev.Line)
	if ev.Type == protocol.RolloutEventHealth {
		line = human.TermSafeLines(ev.Line) // several lines: each printed as one
	}
	ev.Line, ev.StepName, ev.Node = line, human.TermSafe(ev.StepName), human.TermSafe(ev.Node)
	if ev.Outcome != nil {
		o := safeOutcome(*ev.Outcome)
		ev.Outcome = &o
	}
	return ev
}

func safeOutcome(o protocol.NodeOutcome) protocol.NodeOutcome {
	o.Error, o.FailedStep = human.TermSafe(o.Error), human.TermSafe(o.FailedStep)
	lines := make([]string, len(o.LastOutput))
	for i, l := range o.LastOutput {
		lines[i] = human.TermSafe(l)
	}
	o.LastOutput = lines
	return o
}
