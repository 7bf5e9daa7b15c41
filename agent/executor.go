package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
)

// Executor runs one kind of step. An agent's executors are named in
// Options.Executors (key = protocol.Step.Kind), beside the built-in "exec"
// (ExecStep).
type Executor interface {
	Execute(ctx context.Context, sc *StepContext) error
}

// ExecutorFunc adapts a function to Executor.
type ExecutorFunc func(ctx context.Context, sc *StepContext) error

// Execute calls f.
func (f ExecutorFunc) Execute(ctx context.Context, sc *StepContext) error { return f(ctx, sc) }

// ExitError reports a step's non-zero exit code; other errors count as code 1.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("exit code %d: %v", e.Code, e.Err)
	}
	return fmt.Sprintf("exit code %d", e.Code)
}
func (e *ExitError) Unwrap() error { return e.Err }

// StepContext is what an executor gets: the step, where to work, how to
// report, and the parts of the running agent a step may use.
type StepContext struct {
	Task  *protocol.Task
	Step  *protocol.Step
	Index int
	// Root is where files get placed (--root, default "/"); also $FLOTILLA_ROOT.
	Root string
	// DataDir is the agent's own state directory.
	DataDir string
	// Env is the step's environment: the agent's, then FLOTILLA_* and the step's Env.
	Env []string
	// Peer is the agent's part in peer-to-peer layer distribution; nil while
	// it does not run (peer-to-peer not started yet, or outside an agent).
	Peer *Peer
	// Logger is the agent's, naming the node and the task.
	Logger *slog.Logger

	emit    func(protocol.Event)
	request func(ctx context.Context, name string, data []byte) ([]byte, error)
	forget  func(digests ...string) error
	mirror  func(ctx context.Context) (addr string, enabled bool, err error)
}

// RegistryMirror says where the agent's node-local registry mirror serves
// (host:port, HTTPS). enabled is false when the agent runs none (and outside
// an agent); err says why it does not serve. It waits, within ctx, for the
// mirror's first attempt to listen after the agent started.
func (sc *StepContext) RegistryMirror(ctx context.Context) (addr string, enabled bool, err error) {
	if sc.mirror == nil {
		return "", false, nil
	}
	return sc.mirror(ctx)
}

// ForgetSteps drops step digests from the agent's applied-steps state, so
// that tasks carrying them run those steps again (the running agent's state,
// not a file it would overwrite). Digests not recorded are fine.
func (sc *StepContext) ForgetSteps(digests ...string) error {
	if sc.forget == nil {
		return errors.New("no applied-steps state")
	}
	return sc.forget(digests...)
}

// Request asks the controller something on this node's request subject name
// (protocol.NodeRequestSubject), e.g. "peers", and returns the reply.
func (sc *StepContext) Request(ctx context.Context, name string, data []byte) ([]byte, error) {
	if sc.request == nil {
		return nil, errors.New("no controller connection")
	}
	return sc.request(ctx, name, data)
}

// Output reports one line of output ("stdout" or "stderr").
func (sc *StepContext) Output(stream, line string) {
	sc.emit(protocol.Event{Type: protocol.EventOutput, Stream: stream, Line: line})
}

// Progress reports how far the step is.
func (sc *StepContext) Progress(done, total int64, message string) {
	sc.emit(protocol.Event{Type: protocol.EventProgress, Progress: &protocol.Progress{Done: done, Total: total, Message: message}})
}

// LineWriter returns a writer that reports each complete line as output on stream.
// Close flushes a last unterminated line.
func (sc *StepContext) LineWriter(stream string) io.WriteCloser {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 64<<10), maxLine)
		for s.Scan() {
			sc.Output(stream, s.Text())
		}
		if s.Err() != nil {
			sc.Output(stream, "[output line longer than 256 KiB: rest of the stream dropped]")
			_, _ = io.Copy(io.Discard, pr)
		}
	}()
	return &lineWriter{pw: pw, done: done}
}

const maxLine = 256 << 10

type lineWriter struct {
	pw   *io.PipeWriter
	done chan struct{}
	once sync.Once
}

func (w *lineWriter) Write(p []byte) (int, error) { return w.pw.Write(p) }
func (w *lineWriter) Close() error {
	w.once.Do(func() { _ = w.pw.Close(); <-w.done })
	return nil
}

// kindExec is the step kind every agent runs with ExecStep unless its
// Options.Executors names another executor for it.
const kindExec = "exec"

// ExecStep is the built-in "exec" executor: it runs Command (argv) or Shell
// (with /bin/sh -c) with Root as working directory and the step's Env, output
// streamed by line, the process group stopped when ctx ends.
func ExecStep(ctx context.Context, sc *StepContext) error {
	var cmd *exec.Cmd
	switch {
	case len(sc.Step.Command) > 0:
		cmd = exec.Command(sc.Step.Command[0], sc.Step.Command[1:]...)
	case sc.Step.Shell != "":
		cmd = exec.Command("/bin/sh", "-c", sc.Step.Shell)
	default:
		return errors.New("exec step has neither command nor shell")
	}
	cmd.Env = sc.Env
	cmd.Dir = sc.Root
	// Pdeathsig: a step does not outlive an agent killed mid-step (the retry would run it twice).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// A background child holding stdout open must not keep the step running.
	cmd.WaitDelay = 2 * time.Second
	stdout, stderr := sc.LineWriter("stdout"), sc.LineWriter("stderr")
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		stdout.Close()
		stderr.Close()
		return &ExitError{Code: 127, Err: err}
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	var err error
	select {
	case err = <-waitErr:
	case <-ctx.Done():
		// Stop the whole process group: TERM, then KILL after a grace period.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case err = <-waitErr:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			err = <-waitErr
		}
	}
	stdout.Close()
	stderr.Close()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		// The command exited 0 but left a child holding its output open: that is its business.
		return nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if code < 0 {
			code = 128 + int(syscall.SIGKILL)
		}
		return &ExitError{Code: code}
	}
	return err
}

// stepEnv builds the environment of a step, sorted for reproducibility.
func stepEnv(root, dataDir string, t *protocol.Task, s *protocol.Step) []string {
	env := os.Environ()
	env = append(env, "FLOTILLA_ROOT="+root, "FLOTILLA_DATA_DIR="+dataDir, "FLOTILLA_NODE="+t.Node, "FLOTILLA_TASK="+t.ID)
	keys := make([]string, 0, len(s.Env))
	for k := range s.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+s.Env[k])
	}
	return env
}
