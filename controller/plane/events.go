package plane

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"
)

// Event history. Agents publish task events on their own subjects; the
// controller checks each one (a task it dispatched to that node, a valid event,
// the node under its event rate) and keeps what passes in EventsStream under
// one subject per node, so that the stream's per-subject limit is a per-node
// limit: one noisy node pushes out only its own history. The live delivery of
// a task's events to the one who dispatched it (TaskRun) does not depend on this.

// EventsStream is the JetStream stream that keeps accepted task events, per node.
const EventsStream = "FLOTILLA_EVENTS"

// Defaults of the event history limits (Options).
const (
	DefaultNodeEventRate    = 500
	DefaultNodeEventBurst   = 5000
	DefaultNodeEventHistory = 5000
	// eventLogMsgSize is the stream's MaxMsgSize: long lines are cut (and say so) to fit.
	eventLogMsgSize = 16 << 10
)

func (c *Controller) eventsStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              EventsStream,
		Description:       "task events the controller accepted, one subject per node",
		Subjects:          []string{protocol.AllEventLog},
		Storage:           jetstream.FileStorage,
		MaxAge:            24 * time.Hour,
		MaxBytes:          1 << 30,
		MaxMsgsPerSubject: int64(c.opts.NodeEventHistory),
		MaxMsgSize:        eventLogMsgSize,
		Discard:           jetstream.DiscardOld,
		NoAck:             true,
		Retention:         jetstream.LimitsPolicy,
	}
}

// eventLog admits node events into the history, at most rate per node.
type eventLog struct {
	c *Controller

	mu       sync.Mutex
	limiters map[string]*rate.Limiter // by node; only authenticated nodes can publish
}

func newEventLog(c *Controller) *eventLog {
	return &eventLog{c: c, limiters: map[string]*rate.Limiter{}}
}

func (l *eventLog) allow(node string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.limiters[node]
	if lim == nil {
		if len(l.limiters) >= maxOffenseKeys {
			clear(l.limiters)
		}
		lim = rate.NewLimiter(rate.Limit(l.c.opts.NodeEventRate), l.c.opts.NodeEventBurst)
		l.limiters[node] = lim
	}
	return lim.Allow()
}

// ingest handles every flotilla.v1.from.*.events.> message. It runs on one
// goroutine for all nodes, so the cheap checks (a known task, the node's rate)
// come before any decoding.
func (l *eventLog) ingest(m *nats.Msg) {
	c := l.c
	node, ok := protocol.NodeFromSubject(m.Subject)
	if !ok {
		return
	}
	// Events for tasks this controller never gave the node are dropped first
	// (a map lookup), so they neither use up the node's rate nor hide behind it.
	task, ok := protocol.TaskFromEventsSubject(m.Subject)
	if !ok || !c.dispatched(m.Subject) {
		c.offenses.warn(node, "event for unknown task", "dropping an event for a task the controller has not dispatched to this node (or that ended)",
			"subject", m.Subject)
		return
	}
	if !l.allow(node) {
		c.offenses.warn(node, "event flood", "node sends events faster than its limit: they are not kept in the event history",
			"limitPerSecond", c.opts.NodeEventRate, "burst", c.opts.NodeEventBurst)
		return
	}
	ev, err := protocol.DecodeEvent(m.Data, node, task)
	if err != nil {
		c.offenses.warn(node, "bad event", "dropping an invalid event", "subject", m.Subject, "err", err)
		return
	}
	data, err := encodeForLog(ev)
	if err != nil {
		c.log.Warn("event does not fit the event history", "node", node, "task", task, "err", err)
		return
	}
	if err := c.nc.Publish(protocol.EventLogSubject(node), data); err != nil {
		c.log.Warn("keep event", "node", node, "task", task, "err", err)
	}
}

// encodeForLog encodes ev for the history, cutting free text until it fits
// eventLogMsgSize (JSON escaping can grow text up to six times).
func encodeForLog(ev *protocol.Event) ([]byte, error) {
	for _, limit := range []int{8 << 10, 2 << 10} {
		cp := *ev
		cp.Line = cut(cp.Line, limit)
		cp.StepName = cut(cp.StepName, 256)
		if p := cp.Progress; p != nil {
			pc := *p
			pc.Message = cut(pc.Message, limit/4)
			cp.Progress = &pc
		}
		if r := cp.Result; r != nil {
			rc := *r
			rc.Error = cut(rc.Error, limit/4)
			cp.Result = &rc
		}
		if f := cp.Final; f != nil {
			fc := *f
			fc.Error = cut(fc.Error, limit/4)
			cp.Final = &fc
		}
		data, err := protocol.Encode(&cp)
		if err != nil {
			return nil, err
		}
		if len(data) <= eventLogMsgSize-512 { // room for the NATS header
			return data, nil
		}
	}
	return nil, errors.New("event too large for the event history")
}

const cutMark = " …[cut]"

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = strings.ToValidUTF8(s[:n], "")
	return s + cutMark
}

// trackRun makes the events of run admissible to the history until it ends.
func (c *Controller) trackRun(run *TaskRun) {
	c.runsMu.Lock()
	c.runs[protocol.EventsSubject(run.Task.Node, run.Task.ID)] = run
	c.runsMu.Unlock()
}

// runGrace is how long the events of an ended run stay admissible: the task
// result reaches the run's own subscription and the history's separately.
const runGrace = 10 * time.Second

func (c *Controller) untrackRun(run *TaskRun) {
	time.AfterFunc(runGrace, func() {
		c.runsMu.Lock()
		if c.runs[protocol.EventsSubject(run.Task.Node, run.Task.ID)] == run {
			delete(c.runs, protocol.EventsSubject(run.Task.Node, run.Task.ID))
		}
		c.runsMu.Unlock()
	})
}

// dispatched says whether subject is the events subject of a task in flight.
func (c *Controller) dispatched(subject string) bool {
	c.runsMu.Lock()
	defer c.runsMu.Unlock()
	_, ok := c.runs[subject]
	return ok
}

// NodeEvents returns up to limit of the newest events kept for node, oldest first.
func (c *Controller) NodeEvents(ctx context.Context, node string, limit int) ([]protocol.Event, error) {
	if err := protocol.ValidateNodeName(node); err != nil {
		return nil, err
	}
	if limit <= 0 || limit > c.opts.NodeEventHistory {
		limit = c.opts.NodeEventHistory
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, err := c.js.Stream(ctx, EventsStream)
	if err != nil {
		return nil, fmt.Errorf("events stream: %w", err)
	}
	subj := protocol.EventLogSubject(node)
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		return nil, fmt.Errorf("events stream: %w", err)
	}
	total := int(info.State.Subjects[subj])
	if total == 0 {
		return nil, nil
	}
	// On a NATS cluster reading now and then finds no responder (the
	// stream's leader moving): read again within ctx.
	var out []protocol.Event
	if perr := poll.Until(ctx, 10*time.Second, 200*time.Millisecond, func() bool {
		out, err = readEvents(ctx, stream, subj, total, limit)
		return !errors.Is(err, nats.ErrNoResponders)
	}); perr != nil && err == nil {
		err = perr
	}
	if err != nil {
		return nil, fmt.Errorf("read events of %s: %w", node, err)
	}
	return out, nil
}

// readEvents reads the newest limit of the total events on subj.
func readEvents(ctx context.Context, stream jetstream.Stream, subj string, total, limit int) ([]protocol.Event, error) {
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
	if err != nil {
		return nil, err
	}
	out := make([]protocol.Event, 0, min(total, limit))
	for read := 0; read < total; {
		batch, err := cons.Fetch(min(total-read, 500), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if read+n <= total-limit {
				continue
			}
			var ev protocol.Event
			if protocol.Decode(m.Data(), &ev) == nil {
				out = append(out, ev)
			}
		}
		if batch.Error() != nil && !errors.Is(batch.Error(), nats.ErrTimeout) {
			return nil, batch.Error()
		}
		if n == 0 { // the stream moved on (age or limits) while we read
			break
		}
		read += n
	}
	return out, nil
}

func (c *Controller) adminLogs(ctx context.Context, a *AdminCall) (any, error) {
	var req protocol.LogsRequest
	if err := a.Decode(&req); err != nil {
		return nil, err
	}
	if _, ok := c.inv.get(req.Node); !ok {
		return nil, fmt.Errorf("no node named %q: see `flotilla nodes`", req.Node)
	}
	evs, err := c.NodeEvents(ctx, req.Node, req.Limit)
	if evs == nil {
		evs = []protocol.Event{}
	}
	return evs, err
}
