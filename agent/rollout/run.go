package rollout

import (
	"context"
	"fmt"

	"github.com/flotilla-dev/flotilla/agent"
)

// executeRun runs Step.Shell (or Command) through the agent's built-in "exec":
// /bin/sh -c in the root, the step's environment with FLOTILLA_ROOT, output
// streamed by line, the process group stopped when the runner's step timeout
// (Step.Timeout) or a cancel ends ctx.
func executeRun(ctx context.Context, sc *agent.StepContext) error {
	if sc.Step.Shell == "" && len(sc.Step.Command) == 0 {
		return fmt.Errorf("run step %q has no shell command", sc.Step.Name)
	}
	exec, ok := agent.DefaultExecutors()["exec"]
	if !ok {
		return fmt.Errorf("run step %q: the agent has no exec executor", sc.Step.Name)
	}
	return exec.Execute(ctx, sc)
}
