package protocol

import (
	"fmt"
	"time"
)

// Bounds on what a node may say in one message. A message outside them is
// refused as a whole (the controller logs it naming the node), never trimmed
// silently.
const (
	// MaxEventLine is the longest output line in an event (the agent splits
	// longer lines at this size).
	MaxEventLine = 256 << 10
	// MaxEventText bounds the other free-text fields of events and acks
	// (step names, progress messages, errors).
	MaxEventText = 64 << 10
	// MaxSteps is the most steps a task may have, so the highest step index an event may name.
	MaxSteps = 100000
	// MinHeartbeatInterval and MaxHeartbeatInterval bound the interval a node announces;
	// the controller derives its online/offline verdict from it.
	MinHeartbeatInterval = 100 * time.Millisecond
	MaxHeartbeatInterval = 10 * time.Minute
)

// ValidateHeartbeatInterval checks an interval a node announces (in Register or Heartbeat).
func ValidateHeartbeatInterval(d time.Duration) error {
	if d < MinHeartbeatInterval || d > MaxHeartbeatInterval {
		return fmt.Errorf("heartbeat interval %s: want %s to %s", d, MinHeartbeatInterval, MaxHeartbeatInterval)
	}
	return nil
}

func checkText(field, s string, limit int) error {
	if len(s) > limit {
		return fmt.Errorf("%s: %d bytes, at most %d", field, len(s), limit)
	}
	return nil
}

// Validate checks an event that arrived on node's events subject of task:
// it must name that node and task and stay within the bounds above.
func (e *Event) Validate(node, task string) error {
	if e.Node != node {
		return fmt.Errorf("event names node %q but came from node %q", e.Node, node)
	}
	if e.Task != task {
		return fmt.Errorf("event names task %q but came on the subject of task %q", e.Task, task)
	}
	if e.Type == "" || len(e.Type) > 32 {
		return fmt.Errorf("event type %q: want 1 to 32 characters", e.Type)
	}
	for _, r := range e.Type {
		if !(r >= 'a' && r <= 'z' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("event type %q: only lower-case letters, '.', '-' and '_'", e.Type)
		}
	}
	if e.Step < -1 || e.Step >= MaxSteps {
		return fmt.Errorf("event step %d: want -1 to %d", e.Step, MaxSteps-1)
	}
	if e.Stream != "" && e.Stream != "stdout" && e.Stream != "stderr" {
		return fmt.Errorf("event stream %q: want stdout or stderr", e.Stream)
	}
	if err := checkText("event line", e.Line, MaxEventLine); err != nil {
		return err
	}
	if err := checkText("event step name", e.StepName, MaxEventText); err != nil {
		return err
	}
	if p := e.Progress; p != nil {
		if p.Done < 0 || p.Total < 0 {
			return fmt.Errorf("event progress %d/%d: negative", p.Done, p.Total)
		}
		if err := checkText("event progress message", p.Message, MaxEventText); err != nil {
			return err
		}
	}
	if r := e.Result; r != nil {
		if r.Duration < 0 {
			return fmt.Errorf("step result duration %s: negative", r.Duration)
		}
		if err := checkText("step result error", r.Error, MaxEventText); err != nil {
			return err
		}
	}
	if f := e.Final; f != nil {
		if f.Duration < 0 {
			return fmt.Errorf("task result duration %s: negative", f.Duration)
		}
		if f.FailedStep < -1 || f.FailedStep >= MaxSteps {
			return fmt.Errorf("task result failed step %d: want -1 to %d", f.FailedStep, MaxSteps-1)
		}
		if err := checkText("task result error", f.Error, MaxEventText); err != nil {
			return err
		}
	}
	switch {
	case e.Type == EventStepResult && e.Result == nil:
		return fmt.Errorf("event %s without a result", e.Type)
	case e.Type == EventTaskResult && e.Final == nil:
		return fmt.Errorf("event %s without a final result", e.Type)
	}
	return nil
}

// DecodeEvent decodes (DecodeStrict) and validates an event that arrived on node's events subject of task.
func DecodeEvent(data []byte, node, task string) (*Event, error) {
	var ev Event
	if err := DecodeStrict(data, MaxEventBytes, &ev); err != nil {
		return nil, err
	}
	if err := ev.Validate(node, task); err != nil {
		return nil, err
	}
	return &ev, nil
}

// Validate checks a heartbeat that arrived on node's heartbeat subject.
func (h *Heartbeat) Validate(node string) error {
	if h.Name != node {
		return fmt.Errorf("heartbeat names node %q but came from node %q", h.Name, node)
	}
	if err := ValidateHeartbeatInterval(h.Interval); err != nil {
		return err
	}
	if h.Running < 0 || h.Running > 1<<20 {
		return fmt.Errorf("heartbeat running %d: out of range", h.Running)
	}
	return nil
}

// DecodeHeartbeat decodes (DecodeStrict) and validates a heartbeat that arrived on node's heartbeat subject.
func DecodeHeartbeat(data []byte, node string) (*Heartbeat, error) {
	var hb Heartbeat
	if err := DecodeStrict(data, MaxHeartbeatBytes, &hb); err != nil {
		return nil, err
	}
	if err := hb.Validate(node); err != nil {
		return nil, err
	}
	return &hb, nil
}

// Validate checks an agent's acknowledgement of a task or cancel.
func (a *TaskAck) Validate() error {
	if a.Accepted && a.Error != "" {
		return fmt.Errorf("ack both accepts and refuses (%q)", a.Error)
	}
	if !a.Accepted && a.Error == "" {
		return fmt.Errorf("ack refuses without a reason")
	}
	if err := checkText("ack error", a.Error, MaxEventText); err != nil {
		return err
	}
	if a.ClockSkew < -100*365*24*time.Hour || a.ClockSkew > 100*365*24*time.Hour {
		return fmt.Errorf("ack clock skew %s: out of range", a.ClockSkew)
	}
	return nil
}

// DecodeTaskAck decodes (DecodeStrict) and validates an agent's acknowledgement.
func DecodeTaskAck(data []byte) (*TaskAck, error) {
	var a TaskAck
	if err := DecodeStrict(data, MaxTaskAckBytes, &a); err != nil {
		return nil, err
	}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return &a, nil
}
