package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/protocol"
)

// fakeFleet stands in for the controller's inventory and agents in unit tests: each
// node runs its tasks one at a time (as an agent runs a cluster's tasks), skips step
// digests it applied, and can be offline, slow, failing or dying mid-task.
type fakeFleet struct {
	mu      sync.Mutex
	nodes   map[string]*fakeNode
	order   []string
	running int
	maxRun  int
	// execs counts executed (not skipped) steps by node and step name.
	execs map[string]map[string]int
	// spans records every task's start and end, in start order.
	spans []span
	// tasks are the tasks each node accepted, in dispatch order.
	tasks map[string][]*protocol.Task
}

type span struct {
	node       string
	start, end time.Time
}

type fakeNode struct {
	name    string
	ip      string
	labels  map[string]string
	online  bool
	applied map[string]bool
	busy    sync.Mutex
	// behaviour
	delay        time.Duration // per executed step
	failStep     string        // a step whose name contains this fails with exit 3
	dieAfter     int           // >0: the next task dies (agent gone) after this many steps
	restartAfter int           // >0: the next task vanishes after this many steps (agent restarted): no result, ever
	onRestart    func(node string)
	offlineAfter time.Duration // how long it stays offline after dying
	onlineAt     time.Time     // offline until then (zero: see online)
}

func newFakeFleet(names ...string) *fakeFleet {
	f := &fakeFleet{nodes: map[string]*fakeNode{}, execs: map[string]map[string]int{}, tasks: map[string][]*protocol.Task{}}
	for i, n := range names {
		f.add(n, fmt.Sprintf("10.9.0.%d", i+1))
	}
	return f
}

func (f *fakeFleet) add(name, ip string) *fakeNode {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := &fakeNode{name: name, ip: ip, online: true, applied: map[string]bool{}}
	f.nodes[name] = n
	f.order = append(f.order, name)
	f.execs[name] = map[string]int{}
	return n
}

func (f *fakeFleet) node(name string) *fakeNode {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes[name]
}

func (f *fakeFleet) set(name string, fn func(n *fakeNode)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.nodes[name])
}

func (f *fakeFleet) isOnline(n *fakeNode) bool {
	return n.online && !time.Now().Before(n.onlineAt)
}

func (f *fakeFleet) Nodes(context.Context) ([]protocol.NodeInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []protocol.NodeInfo
	for _, name := range f.order {
		n := f.nodes[name]
		out = append(out, protocol.NodeInfo{Name: n.name, Online: f.isOnline(n), Labels: n.labels,
			Facts:       protocol.Facts{Hostname: n.name, IPs: []string{n.ip}, Arch: "amd64", OS: "linux"},
			VerifiedIPs: []protocol.VerifiedIP{{IP: n.ip, By: protocol.VerifiedByJoin}}})
	}
	return out, nil
}

// lastTask returns the last task node accepted (nil if none).
func (f *fakeFleet) lastTask(node string) *protocol.Task {
	f.mu.Lock()
	defer f.mu.Unlock()
	ts := f.tasks[node]
	if len(ts) == 0 {
		return nil
	}
	return ts[len(ts)-1]
}

// executed returns how often node ran steps whose name contains substr.
func (f *fakeFleet) executed(node, substr string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	total := 0
	for name, c := range f.execs[node] {
		if strings.Contains(name, substr) {
			total += c
		}
	}
	return total
}

func (f *fakeFleet) totalExecuted() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	total := 0
	for _, m := range f.execs {
		for _, c := range m {
			total += c
		}
	}
	return total
}

func (f *fakeFleet) taskCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.spans)
}

type fakeRun struct {
	done chan struct{}
	res  *protocol.TaskResult
	err  error
}

func (r *fakeRun) Wait(ctx context.Context) (*protocol.TaskResult, error) {
	select {
	case <-r.done:
		return r.res, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fakeFleet) Dispatch(ctx context.Context, t *protocol.Task, onEvent func(protocol.Event)) (TaskRun, error) {
	f.mu.Lock()
	n := f.nodes[t.Node]
	if n == nil || !f.isOnline(n) {
		f.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", plane.ErrNodeOffline, t.Node)
	}
	dieAfter, restartAfter := n.dieAfter, n.restartAfter
	n.dieAfter, n.restartAfter = 0, 0
	f.tasks[t.Node] = append(f.tasks[t.Node], t)
	f.mu.Unlock()
	if t.ID == "" {
		t.ID = plane.NewTaskID()
	}
	run := &fakeRun{done: make(chan struct{})}
	go f.execute(n, t, onEvent, dieAfter, restartAfter, run)
	return run, nil
}

func (f *fakeFleet) execute(n *fakeNode, t *protocol.Task, onEvent func(protocol.Event), dieAfter, restartAfter int, run *fakeRun) {
	n.busy.Lock() // one task at a time per node, in arrival order (roughly)
	defer n.busy.Unlock()
	f.mu.Lock()
	f.running++
	f.maxRun = max(f.maxRun, f.running)
	idx := len(f.spans)
	f.spans = append(f.spans, span{node: n.name, start: time.Now()})
	f.mu.Unlock()
	vanished := false
	defer func() {
		f.mu.Lock()
		f.running--
		f.spans[idx].end = time.Now()
		f.mu.Unlock()
		if !vanished {
			close(run.done)
		}
	}()
	seq := uint64(0)
	emit := func(ev protocol.Event) {
		seq++
		ev.N, ev.Task, ev.Node, ev.Time = seq, t.ID, n.name, time.Now()
		onEvent(ev)
	}
	final := protocol.TaskResult{OK: true, FailedStep: -1}
	executed := 0
	for i, s := range t.Steps {
		f.mu.Lock()
		skip := s.Digest != "" && n.applied[s.Digest]
		f.mu.Unlock()
		if skip {
			emit(protocol.Event{Type: protocol.EventStepResult, Step: i, StepName: s.Name, Result: &protocol.StepResult{Skipped: true}})
			continue
		}
		if restartAfter > 0 && executed >= restartAfter {
			vanished = true
			if n.onRestart != nil {
				go n.onRestart(n.name)
			}
			return
		}
		if dieAfter > 0 && executed >= dieAfter {
			f.mu.Lock()
			n.onlineAt = time.Now().Add(n.offlineAfter)
			f.mu.Unlock()
			run.err = fmt.Errorf("task %s: %w: %s stopped sending heartbeats", t.ID, plane.ErrNodeOffline, n.name)
			return
		}
		emit(protocol.Event{Type: protocol.EventStepStarted, Step: i, StepName: s.Name})
		time.Sleep(n.delay) // the fake node's step takes time, as a real one does
		f.mu.Lock()
		f.execs[n.name][s.Name]++
		fail := n.failStep != "" && strings.Contains(s.Name, n.failStep)
		f.mu.Unlock()
		executed++
		emit(protocol.Event{Type: protocol.EventOutput, Step: i, StepName: s.Name, Stream: "stdout", Line: "running " + s.Name})
		if fail {
			emit(protocol.Event{Type: protocol.EventOutput, Step: i, StepName: s.Name, Stream: "stderr", Line: "boom"})
			emit(protocol.Event{Type: protocol.EventStepResult, Step: i, StepName: s.Name, Result: &protocol.StepResult{ExitCode: 3}})
			final = protocol.TaskResult{ExitCode: 3, FailedStep: i}
			break
		}
		if s.Kind == protocol.KindUndo {
			var p protocol.UndoPayload
			_ = json.Unmarshal(s.Payload, &p)
			if p.Kind == protocol.UndoForget {
				f.mu.Lock()
				for _, d := range p.Digests {
					delete(n.applied, d)
				}
				f.mu.Unlock()
			}
		}
		if s.Digest != "" {
			f.mu.Lock()
			n.applied[s.Digest] = true
			f.mu.Unlock()
		}
		emit(protocol.Event{Type: protocol.EventStepResult, Step: i, StepName: s.Name, Result: &protocol.StepResult{}})
	}
	emit(protocol.Event{Type: protocol.EventTaskResult, Step: final.FailedStep, Final: &final})
	run.res = &final
}

// executedPrefix returns how often node ran steps whose name starts with prefix.
func (f *fakeFleet) executedPrefix(node, prefix string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	total := 0
	for name, c := range f.execs[node] {
		if strings.HasPrefix(name, prefix) {
			total += c
		}
	}
	return total
}
