package protocol

import (
	"encoding/json"
	"fmt"
	"time"
)

// Facts describe a node as its agent sees it.
type Facts struct {
	Hostname     string            `json:"hostname"`
	IPs          []string          `json:"ips,omitempty"`
	Arch         string            `json:"arch"`
	OS           string            `json:"os"`
	Kernel       string            `json:"kernel,omitempty"`
	MachineID    string            `json:"machineID,omitempty"`
	AgentVersion string            `json:"agentVersion,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
}

// Register is an agent's registration request (at start and after every reconnect).
type Register struct {
	Name              string        `json:"name"`
	Facts             Facts         `json:"facts"`
	HeartbeatInterval time.Duration `json:"heartbeatInterval"`
	// PeerURL is where the agent serves blobs to peers (later issue); empty if none.
	PeerURL string `json:"peerURL,omitempty"`
}

// RegisterReply answers a Register.
type RegisterReply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// Heartbeat says the agent is alive and how busy it is.
type Heartbeat struct {
	Name     string        `json:"name"`
	Time     time.Time     `json:"time"`
	Interval time.Duration `json:"interval"`
	Running  int           `json:"running"`
}

// Step is one unit of work in a task. Kind selects the agent's executor
// ("exec" runs Command or Shell; later issues add "layers", "files", "run",
// "service", "undo"); Payload carries kind-specific JSON.
type Step struct {
	Name    string            `json:"name,omitempty"`
	Kind    string            `json:"kind"`
	Command []string          `json:"command,omitempty"`
	Shell   string            `json:"shell,omitempty"`
	Payload json.RawMessage   `json:"payload,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	Timeout time.Duration     `json:"timeout,omitempty"`
	// Digest makes the step idempotent: an agent that already applied this
	// digest successfully skips the step. Empty means always run.
	Digest string `json:"digest,omitempty"`
}

// Task is an ordered list of steps for one node. The controller fills Seq,
// Expires and Node and signs it; the agent verifies all of them.
type Task struct {
	ID      string    `json:"id"`
	Node    string    `json:"node"`
	Seq     uint64    `json:"seq"`
	Issued  time.Time `json:"issued"`
	Expires time.Time `json:"expires"`
	// Image is the cluster image digest the task belongs to (empty for ad-hoc exec).
	Image string `json:"image,omitempty"`
	// Cluster names the cluster a rollout task belongs to (empty for ad-hoc exec);
	// an agent runs the tasks of one cluster one at a time, in arrival order.
	Cluster string `json:"cluster,omitempty"`
	Steps   []Step `json:"steps"`
}

// Validate checks the task's shape (not its signature).
func (t *Task) Validate() error {
	if t.ID == "" || len(t.ID) > 64 {
		return fmt.Errorf("task id %q: want 1 to 64 characters", t.ID)
	}
	for _, r := range t.ID {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("task id %q: only letters, digits, '-' and '_'", t.ID)
		}
	}
	if err := ValidateNodeName(t.Node); err != nil {
		return fmt.Errorf("task %s: %w", t.ID, err)
	}
	if len(t.Steps) == 0 {
		return fmt.Errorf("task %s: no steps", t.ID)
	}
	for i, s := range t.Steps {
		if s.Kind == "" {
			return fmt.Errorf("task %s: steps[%d].kind is empty", t.ID, i)
		}
		if s.Timeout < 0 {
			return fmt.Errorf("task %s: steps[%d].timeout is negative", t.ID, i)
		}
	}
	return nil
}

// Cancel asks a node to stop a running task.
type Cancel struct {
	TaskID  string    `json:"taskID"`
	Node    string    `json:"node"`
	Seq     uint64    `json:"seq"`
	Expires time.Time `json:"expires"`
}

// TaskAck is the agent's immediate reply to a task: accepted, or why not.
type TaskAck struct {
	Accepted bool   `json:"accepted"`
	Error    string `json:"error,omitempty"`
	// ClockSkew is set when the task was refused for time reasons: the node's
	// time minus the task's issue time (positive: the node's clock is ahead).
	ClockSkew time.Duration `json:"clockSkew,omitempty"`
}

// EventType names what an Event reports.
type EventType string

// Event types, in the order a task emits them.
const (
	EventStepStarted EventType = "step.started"
	EventOutput      EventType = "output"
	EventProgress    EventType = "progress"
	EventStepResult  EventType = "step.result"
	EventTaskResult  EventType = "task.result"
)

// Event is one thing that happened while a node ran a task.
type Event struct {
	Type EventType `json:"type"`
	Task string    `json:"task"`
	Node string    `json:"node"`
	// N numbers a task's events from 1, so a reader can spot gaps.
	N        uint64      `json:"n"`
	Time     time.Time   `json:"time"`
	Step     int         `json:"step"`
	StepName string      `json:"stepName,omitempty"`
	Stream   string      `json:"stream,omitempty"` // "stdout" or "stderr" for output
	Line     string      `json:"line,omitempty"`
	Progress *Progress   `json:"progress,omitempty"`
	Result   *StepResult `json:"result,omitempty"`
	Final    *TaskResult `json:"final,omitempty"`
}

// Progress reports how far a long step is (bytes, files, …).
type Progress struct {
	Done    int64  `json:"done"`
	Total   int64  `json:"total,omitempty"`
	Message string `json:"message,omitempty"`
}

// StepResult is how one step ended.
type StepResult struct {
	ExitCode int           `json:"exitCode"`
	Duration time.Duration `json:"duration"`
	Skipped  bool          `json:"skipped,omitempty"`
	TimedOut bool          `json:"timedOut,omitempty"`
	Error    string        `json:"error,omitempty"`
}

// TaskResult is how the whole task ended. ExitCode is the failing step's, or 0.
type TaskResult struct {
	OK         bool          `json:"ok"`
	ExitCode   int           `json:"exitCode"`
	Duration   time.Duration `json:"duration"`
	FailedStep int           `json:"failedStep"` // -1 when OK
	TimedOut   bool          `json:"timedOut,omitempty"`
	Canceled   bool          `json:"canceled,omitempty"`
	Error      string        `json:"error,omitempty"`
}

// Encode marshals a message for the wire.
func Encode(v any) ([]byte, error) { return json.Marshal(v) }

// Decode unmarshals a wire message, naming what it expected on failure.
func Decode(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %T: %w", v, err)
	}
	return nil
}
