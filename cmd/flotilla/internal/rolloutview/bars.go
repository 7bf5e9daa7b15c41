package rolloutview

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// Bars shows one progress bar per node on a terminal: its phase, step i/n and the
// step's name, and bytes and rate while a layer is fetched. Phase starts, retries and
// the output of failing steps are printed above the bars.
type Bars struct {
	// mu guards t and bars. Decorators never take it: mpb calls them from a bar's own
	// goroutine, which a SetCurrent made under mu may be waiting for; they read the
	// texts each event stores in the nodeBar instead.
	mu     sync.Mutex
	p      *mpb.Progress
	opts   Options
	t      tracker
	bars   map[string]*nodeBar
	closed bool
}

// nodeBar is one node's bar and the texts its decorators show.
type nodeBar struct {
	bar    *mpb.Bar
	phase  atomic.Pointer[string]
	status atomic.Pointer[string]
}

func (nb *nodeBar) show(n *nodeState) {
	phase, status := n.phase, statusText(n)
	nb.phase.Store(&phase)
	nb.status.Store(&status)
}

func load(p *atomic.Pointer[string]) decor.DecorFunc {
	return func(decor.Statistics) string {
		if s := p.Load(); s != nil {
			return *s
		}
		return ""
	}
}

// NewBars returns a multi-bar renderer writing to w, which should be a terminal.
func NewBars(w io.Writer, opts Options) *Bars {
	return newBars(opts, mpb.WithOutput(w), mpb.WithWidth(100), mpb.WithRefreshRate(150*time.Millisecond))
}

func newBars(opts Options, copts ...mpb.ContainerOption) *Bars {
	return &Bars{p: mpb.New(copts...), opts: opts, t: newTracker(), bars: map[string]*nodeBar{}}
}

// Event updates the bars from ev.
func (b *Bars) Event(ev protocol.RolloutEvent) {
	ev = safeEvent(ev)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	n := b.t.apply(ev)
	var above []string
	switch ev.Type {
	case protocol.RolloutEventStart:
		above = append(above, "rollout "+ev.Rollout+" of cluster "+ev.Cluster+suffix(ev.Line))
	case protocol.RolloutEventPhase:
		above = append(above, "phase "+ev.Phase+suffix(ev.Line))
	case protocol.RolloutEventHealth:
		above = append(above, healthLines(ev.Line)...)
	case protocol.RolloutEventInfra:
		above = append(above, "infra: "+ev.Line)
	case protocol.RolloutEventOutput:
		if b.opts.Verbose {
			above = append(above, n.name+" | "+ev.Line)
		}
	case protocol.RolloutEventRetry:
		above = append(above, b.takeOutput(n)...)
		above = append(above, n.name+": retry"+suffix(ev.Line))
	case protocol.RolloutEventNodeDone:
		if ev.Outcome != nil && Problem(ev.Outcome.Status) {
			above = append(above, b.takeOutput(n)...)
			above = append(above, n.name+": "+outcomeText(ev.Outcome, n))
		}
	}
	if n != nil {
		b.update(n, ev)
	}
	for _, l := range above {
		// Written above the bars at the next refresh.
		_, _ = fmt.Fprintln(b.p, l)
	}
}

func (b *Bars) takeOutput(n *nodeState) []string {
	if b.opts.Verbose {
		return nil
	}
	out := make([]string, 0, len(n.output))
	for _, l := range n.output {
		out = append(out, n.name+" | "+l)
	}
	n.output = nil
	return out
}

// update moves the node's bar; the bar has one unit per step plus one for the end, so
// it completes only when the node is done.
func (b *Bars) update(n *nodeState, ev protocol.RolloutEvent) {
	nb := b.bars[n.name]
	if nb == nil {
		nb = &nodeBar{}
		nb.show(n)
		nb.bar = b.p.AddBar(int64(n.steps+1),
			mpb.PrependDecorators(
				decor.Name(n.name, decor.WCSyncSpaceR),
				decor.Any(load(&nb.phase), decor.WCSyncSpaceR),
			),
			// A minimum width keeps the bars one length while the texts change.
			mpb.AppendDecorators(decor.Any(load(&nb.status), decor.WC{W: 48, C: decor.DindentRight})),
		)
		b.bars[n.name] = nb
	}
	nb.show(n)
	bar := nb.bar
	switch ev.Type {
	case protocol.RolloutEventNodeStart:
		bar.SetTotal(int64(n.steps+1), false)
	case protocol.RolloutEventStep:
		bar.SetTotal(int64(n.steps+1), false)
		bar.SetCurrent(int64(n.step - 1))
	case protocol.RolloutEventStepDone:
		bar.SetCurrent(int64(n.step))
	case protocol.RolloutEventNodeDone:
		if ev.Outcome != nil && Problem(ev.Outcome.Status) {
			bar.Abort(false)
		} else {
			bar.SetTotal(-1, true)
		}
	}
}

// statusText says what the node is doing now, or how it ended.
func statusText(n *nodeState) string {
	if n.finished {
		return outcomeText(n.outcome, n)
	}
	if n.step == 0 {
		if n.note != "" {
			return "retry: " + n.note
		}
		return "waiting"
	}
	s := stepIndex(n.step, n.steps) + " " + n.stepName
	if n.total > 0 || n.done > 0 {
		s += " " + Size(n.done)
		if n.total > 0 {
			s += "/" + Size(n.total)
		}
		if n.rate > 0 {
			s += " " + Size(int64(n.rate)) + "/s"
		}
	}
	if n.note != "" {
		s += " (retry: " + n.note + ")"
	}
	return s
}

// Close stops the bars, leaving each node's last state on the screen.
func (b *Bars) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	bars := make([]*mpb.Bar, 0, len(b.bars))
	for _, nb := range b.bars {
		bars = append(bars, nb.bar)
	}
	b.mu.Unlock()
	for _, bar := range bars {
		bar.Abort(false) // a no-op for a completed bar
	}
	b.p.Wait()
}
