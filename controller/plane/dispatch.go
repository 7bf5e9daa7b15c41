package plane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

// ErrNodeOffline means no agent of that name is connected.
var ErrNodeOffline = errors.New("node is not connected")

// ErrClockSkew means the node refused a task because its clock is too far from the controller's.
var ErrClockSkew = errors.New("node clock skew")

// TaskRun follows one dispatched task until its result.
type TaskRun struct {
	Task *protocol.Task

	c      *Controller
	sub    *nats.Subscription
	done   chan struct{}
	once   sync.Once
	result *protocol.TaskResult
	err    error
}

// NewTaskID returns a random task id.
func NewTaskID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Dispatch signs t (filling ID, Seq, Issued and Expires when empty) and sends
// it to t.Node. onEvent, if not nil, is called in order for every event of
// the task, from one goroutine. It fails fast with ErrNodeOffline when no agent
// of that name is connected, or with the agent's reason when it refuses the task.
func (c *Controller) Dispatch(ctx context.Context, t *protocol.Task, onEvent func(protocol.Event)) (*TaskRun, error) {
	if t.ID == "" {
		t.ID = NewTaskID()
	}
	now := time.Now().UTC()
	t.Issued = now
	if t.Expires.IsZero() {
		t.Expires = now.Add(c.opts.TaskTTL)
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	run := &TaskRun{Task: t, c: c, done: make(chan struct{})}
	// The subject names node and task (NATS permissions tie it to the sender);
	// an event that says otherwise, or breaks a bound, is dropped.
	sub, err := c.nc.Subscribe(protocol.EventsSubject(t.Node, t.ID), func(m *nats.Msg) {
		ev, err := protocol.DecodeEvent(m.Data, t.Node, t.ID)
		if err != nil {
			c.offenses.warn(t.Node, "bad event", "dropping an invalid event", "task", t.ID, "err", err)
			return
		}
		if onEvent != nil {
			onEvent(*ev)
		}
		if ev.Type == protocol.EventTaskResult && ev.Final != nil {
			run.finish(ev.Final, nil)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to events of task %s on %s: %w", t.ID, t.Node, err)
	}
	// A task's events pass one subscription (its own goroutine, in order): a
	// flood on it queues at most this much, and only this task loses events.
	_ = sub.SetPendingLimits(65536, 64<<20)
	run.sub = sub
	c.trackRun(run)
	ack, err := c.sendSigned(ctx, t.Node, protocol.TaskSubject(t.Node), protocol.TypeTask, func(seq uint64) any { t.Seq = seq; return t })
	if err == nil && !ack.Accepted {
		err = fmt.Errorf("node %s refused task %s: %s", t.Node, t.ID, ack.Error)
		if ack.ClockSkew != 0 {
			detail := protocol.DescribeSkew(ack.ClockSkew)
			c.log.Warn("node refused a task for its clock", "node", t.Node, "task", t.ID,
				"skew", ack.ClockSkew.Round(time.Second).String(), "detail", detail)
			err = fmt.Errorf("node %s refused task %s: %w: %s (%s)", t.Node, t.ID, ErrClockSkew, detail, ack.Error)
		}
	}
	if err != nil {
		_ = sub.Unsubscribe()
		c.untrackRun(run)
		return nil, err
	}
	return run, nil
}

// sendSigned assigns a sequence number, signs and publishes under one lock so
// that a node receives sequence numbers in increasing order, then waits for the ack.
func (c *Controller) sendSigned(ctx context.Context, node, subject, typ string, msg func(seq uint64) any) (*protocol.TaskAck, error) {
	inbox := c.nc.NewInbox()
	replies, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer replies.Unsubscribe()
	c.signMu.Lock()
	seq, err := c.seq.take(ctx)
	if err != nil {
		c.signMu.Unlock()
		return nil, err
	}
	data, err := protocol.Sign(c.pki.signing, typ, msg(seq))
	if err == nil {
		err = c.nc.PublishRequest(subject, inbox, data)
	}
	c.signMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("send %s to %s: %w", typ, node, err)
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := replies.NextMsgWithContext(actx)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, fmt.Errorf("%w: %s", ErrNodeOffline, node)
	}
	if err != nil {
		return nil, fmt.Errorf("node %s did not acknowledge the %s: %w", node, typ, err)
	}
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		return nil, fmt.Errorf("%w: %s", ErrNodeOffline, node)
	}
	ack, err := protocol.DecodeTaskAck(m.Data)
	if err != nil {
		c.offenses.warn(node, "bad ack", "invalid acknowledgement", "err", err)
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	return ack, nil
}

func (r *TaskRun) finish(res *protocol.TaskResult, err error) {
	r.once.Do(func() {
		r.result, r.err = res, err
		close(r.done)
		_ = r.sub.Unsubscribe()
		r.c.untrackRun(r)
	})
}

// Done is closed when the task result arrived or Wait gave up.
func (r *TaskRun) Done() <-chan struct{} { return r.done }

// Wait blocks until the task result, ctx's end, or the node going offline.
// When ctx ends first, Wait cancels the task on the node and waits up to 5s
// for its (canceled) result, returning it together with ctx's error.
func (r *TaskRun) Wait(ctx context.Context) (*protocol.TaskResult, error) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	missed := 0
	for {
		select {
		case <-r.done:
			return r.result, r.err
		case <-ctx.Done():
			err := fmt.Errorf("task %s on %s: %w", r.Task.ID, r.Task.Node, ctx.Err())
			if r.c.ctx.Err() != nil { // controller closing: nothing left to wait for
				r.finish(nil, err)
				continue
			}
			r.Cancel()
			select {
			case <-r.done:
				return r.result, err
			case <-time.After(5 * time.Second):
				r.finish(nil, err)
			}
		case <-tick.C:
			if r.c.inv.online(r.Task.Node) {
				missed = 0
				continue
			}
			// Two checks in a row, so that one late heartbeat on a busy host does not fail a task.
			if missed++; missed >= 2 {
				r.finish(nil, fmt.Errorf("task %s: %w: %s stopped sending heartbeats", r.Task.ID, ErrNodeOffline, r.Task.Node))
			}
		}
	}
}

// Cancel asks the node to stop the task; the result still arrives as an event.
func (r *TaskRun) Cancel() {
	c := r.c
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
	defer cancel()
	_, err := c.sendSigned(ctx, r.Task.Node, protocol.CancelSubject(r.Task.Node), protocol.TypeCancel, func(seq uint64) any {
		return &protocol.Cancel{TaskID: r.Task.ID, Node: r.Task.Node, Seq: seq, Expires: time.Now().Add(time.Minute)}
	})
	if err != nil {
		c.log.Warn("cancel task", "node", r.Task.Node, "task", r.Task.ID, "err", err)
	}
}
