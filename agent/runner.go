package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

func protocolJSON(v any) ([]byte, error) { return json.MarshalIndent(v, "", "  ") }

func ack(m *nats.Msg, err error) {
	a := protocol.TaskAck{Accepted: err == nil}
	if err != nil {
		a.Error = clip(err.Error(), protocol.MaxEventText)
		if ce := (*protocol.ClockError)(nil); errors.As(err, &ce) {
			a.ClockSkew = ce.Skew
		}
	}
	data, _ := protocol.Encode(a)
	if m.Reply != "" {
		_ = m.Respond(data)
	}
}

// persistSeq keeps the highest accepted sequence number so a restarted agent
// still refuses replays.
func (a *Agent) persistSeq() error {
	a.seqMu.Lock()
	defer a.seqMu.Unlock()
	return atomicfile.Write(filepath.Join(a.opts.DataDir, fileSeq), []byte(strconv.FormatUint(a.verify.LastSeq(), 10)), 0o600)
}

func (a *Agent) onTask(m *nats.Msg) {
	t, err := a.verify.OpenTask(m.Data)
	if err != nil {
		a.metrics.tasks.WithLabelValues("refused").Inc()
	}
	if ce := (*protocol.ClockError)(nil); errors.As(err, &ce) {
		a.log.Warn("refusing task: clock skew", "skew", ce.Skew.Round(time.Second).String(),
			"detail", protocol.DescribeSkew(ce.Skew), "err", err)
		ack(m, err)
		return
	}
	if err != nil {
		a.log.Warn("dropping task", "err", err)
		ack(m, err)
		return
	}
	if err := a.persistSeq(); err != nil {
		ack(m, err)
		return
	}
	for i, s := range t.Steps {
		if _, ok := a.opts.Executors[s.Kind]; !ok {
			err := fmt.Errorf("task %s: steps[%d]: this agent has no executor for kind %q (upgrade the agent)", t.ID, i, s.Kind)
			a.log.Warn("refusing task", "err", err)
			a.metrics.tasks.WithLabelValues("refused").Inc()
			ack(m, err)
			return
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.mu.Lock()
	if _, dup := a.running[t.ID]; dup {
		a.mu.Unlock()
		cancel()
		ack(m, fmt.Errorf("task %s is already running", t.ID))
		return
	}
	a.running[t.ID] = cancel
	a.mu.Unlock()
	ack(m, nil)
	// Queue the task behind the cluster's previous one now, while messages are
	// still handled one at a time, so that arrival order is run order.
	prev, mine := a.queueCluster(t.Cluster)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer func() {
			a.mu.Lock()
			delete(a.running, t.ID)
			a.mu.Unlock()
			cancel()
		}()
		defer a.dequeueCluster(t.Cluster, prev, mine)
		if prev != nil {
			select {
			case <-prev:
			case <-ctx.Done(): // runTask reports it canceled before its first step
			}
		}
		a.runTask(ctx, t)
	}()
}

// queueCluster returns the channel closed when the cluster's previous task
// ended (nil: none or no cluster) and the one this task closes when it ends.
func (a *Agent) queueCluster(cluster string) (prev <-chan struct{}, mine chan struct{}) {
	if cluster == "" {
		return nil, nil
	}
	a.clusterMu.Lock()
	defer a.clusterMu.Unlock()
	mine = make(chan struct{})
	prev = a.clusterTail[cluster]
	a.clusterTail[cluster] = mine
	return prev, mine
}

// dequeueCluster lets the cluster's next task run. A task canceled while it
// waited still waits for its predecessor first, so two never overlap.
func (a *Agent) dequeueCluster(cluster string, prev <-chan struct{}, mine chan struct{}) {
	if mine == nil {
		return
	}
	if prev != nil {
		<-prev
	}
	a.clusterMu.Lock()
	if a.clusterTail[cluster] == mine {
		delete(a.clusterTail, cluster)
	}
	a.clusterMu.Unlock()
	close(mine)
}

func (a *Agent) onCancel(m *nats.Msg) {
	c, err := a.verify.OpenCancel(m.Data)
	if err != nil {
		a.log.Warn("dropping cancel", "err", err)
		ack(m, err)
		return
	}
	_ = a.persistSeq()
	a.mu.Lock()
	cancel, ok := a.running[c.TaskID]
	a.mu.Unlock()
	if ok {
		a.log.Info("canceling task", "task", c.TaskID)
		cancel()
	}
	ack(m, nil)
}

// emitter numbers and publishes one task's events.
type emitter struct {
	a    *Agent
	t    *protocol.Task
	mu   sync.Mutex
	n    uint64
	subj string
}

func (e *emitter) emit(ev protocol.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	ev.N, ev.Task, ev.Node, ev.Time = e.n, e.t.ID, e.t.Node, time.Now().UTC()
	clipEvent(&ev)
	data, err := protocol.Encode(ev)
	if err != nil {
		return
	}
	if err := e.a.nc.Publish(e.subj, data); err != nil {
		e.a.log.Warn("publish event", "task", e.t.ID, "err", err)
	}
}

func (a *Agent) runTask(ctx context.Context, t *protocol.Task) {
	em := &emitter{a: a, t: t, subj: protocol.EventsSubject(t.Node, t.ID)}
	start := time.Now()
	final := protocol.TaskResult{OK: true, FailedStep: -1}
	a.log.Info("task started", "task", t.ID, "steps", len(t.Steps))
	for i := range t.Steps {
		s := &t.Steps[i]
		res := a.runStep(ctx, em, t, i, s)
		em.emit(protocol.Event{Type: protocol.EventStepResult, Step: i, StepName: s.Name, Result: &res})
		if res.ExitCode != 0 || res.Error != "" {
			final = protocol.TaskResult{ExitCode: res.ExitCode, FailedStep: i, TimedOut: res.TimedOut, Error: res.Error,
				Canceled: errors.Is(ctx.Err(), context.Canceled)}
			if final.ExitCode == 0 {
				final.ExitCode = 1
			}
			break
		}
	}
	final.Duration = time.Since(start)
	a.metrics.tasks.WithLabelValues(taskOutcome(final)).Inc()
	em.emit(protocol.Event{Type: protocol.EventTaskResult, Step: final.FailedStep, Final: &final})
	a.log.Info("task finished", "task", t.ID, "ok", final.OK, "exitCode", final.ExitCode, "duration", final.Duration)
}

func (a *Agent) runStep(ctx context.Context, em *emitter, t *protocol.Task, i int, s *protocol.Step) (res protocol.StepResult) {
	start := time.Now()
	defer func() {
		res.Duration = time.Since(start)
		a.metrics.step(s.Kind, stepOutcome(res), res.Duration)
	}()
	if s.Digest != "" && a.applied.has(s.Digest) {
		return protocol.StepResult{Skipped: true}
	}
	if ctx.Err() != nil {
		return protocol.StepResult{ExitCode: 130, Error: "canceled before start"}
	}
	em.emit(protocol.Event{Type: protocol.EventStepStarted, Step: i, StepName: s.Name})
	sctx, cancel := ctx, context.CancelFunc(func() {})
	if s.Timeout > 0 {
		sctx, cancel = context.WithTimeout(ctx, s.Timeout)
	}
	defer cancel()
	sc := &StepContext{Task: t, Step: s, Index: i, Root: a.opts.Root, DataDir: a.opts.DataDir,
		Env:    stepEnv(a.opts.Root, a.opts.DataDir, t, s),
		Peer:   a.peer.Load(),
		Logger: a.log.With("task", t.ID),
		emit: func(ev protocol.Event) {
			ev.Step, ev.StepName = i, s.Name
			em.emit(ev)
		},
		request: a.request,
		forget:  a.applied.forget,
		mirror:  a.registryMirror}
	err := a.execute(sctx, sc)
	var ee *ExitError
	switch {
	case err == nil:
	case errors.Is(err, context.DeadlineExceeded) && sctx.Err() != nil && ctx.Err() == nil:
		return protocol.StepResult{ExitCode: 124, TimedOut: true, Error: fmt.Sprintf("step %d timed out after %s", i, s.Timeout)}
	case ctx.Err() != nil:
		return protocol.StepResult{ExitCode: 130, Error: "canceled"}
	case errors.As(err, &ee):
		res = protocol.StepResult{ExitCode: ee.Code}
		if ee.Err != nil {
			res.Error = ee.Err.Error()
		}
		return res
	default:
		return protocol.StepResult{ExitCode: 1, Error: err.Error()}
	}
	if s.Digest != "" {
		if err := a.applied.add(s.Digest, AppliedStep{Task: t.ID, Step: s.Name, Applied: time.Now().UTC()}); err != nil {
			return protocol.StepResult{ExitCode: 1, Error: fmt.Sprintf("step succeeded but recording digest failed: %v", err)}
		}
	}
	return protocol.StepResult{}
}

func taskOutcome(r protocol.TaskResult) string {
	switch {
	case r.OK:
		return "ok"
	case r.Canceled:
		return "canceled"
	}
	return "failed"
}

func stepOutcome(r protocol.StepResult) string {
	switch {
	case r.ExitCode != 0 || r.Error != "":
		return "failed"
	case r.Skipped:
		return "skipped"
	}
	return "ok"
}

// execute runs the executor and turns a panic into an error: a bad step must not kill the agent.
func (a *Agent) execute(ctx context.Context, sc *StepContext) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("executor %q panicked: %v", sc.Step.Kind, r)
		}
	}()
	return a.opts.Executors[sc.Step.Kind].Execute(ctx, sc)
}

func (a *Agent) request(ctx context.Context, name string, data []byte) ([]byte, error) {
	m, err := a.nc.RequestWithContext(ctx, protocol.NodeRequestSubject(a.opts.Name, name), data)
	if err != nil {
		return nil, fmt.Errorf("request %s from the controller: %w", name, err)
	}
	return m.Data, nil
}

// clipEvent keeps an event within the controller's bounds (protocol.Event.Validate):
// an executor's oversized error text must not cost the task its result.
func clipEvent(ev *protocol.Event) {
	ev.Line = clip(ev.Line, protocol.MaxEventLine)
	ev.StepName = clip(ev.StepName, protocol.MaxEventText)
	if p := ev.Progress; p != nil {
		p.Message = clip(p.Message, protocol.MaxEventText)
		p.Done, p.Total = max(p.Done, 0), max(p.Total, 0)
	}
	if r := ev.Result; r != nil {
		r.Error = clip(r.Error, protocol.MaxEventText)
	}
	if f := ev.Final; f != nil {
		f.Error = clip(f.Error, protocol.MaxEventText)
	}
}

func clip(s string, n int) string {
	const mark = " …[cut]"
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n-len(mark)], "") + mark
}
