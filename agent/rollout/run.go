package rollout

import (
	"context"
	"fmt"

	"github.com/flotilla-dev/flotilla/agent"
)

// run runs Step.Shell (or Command) as the agent's built-in "exec" does
// (agent.ExecStep): /bin/sh -c in the root, the step's environment with
// FLOTILLA_ROOT, output streamed by line, the process group stopped when the
// runner's step timeout (Step.Timeout) or a cancel ends ctx.
func run(ctx context.Context, sc *agent.StepContext) error {
	if sc.Step.Shell == "" && len(sc.Step.Command) == 0 {
		return fmt.Errorf("run step %q has no shell command", sc.Step.Name)
	}
	return agent.ExecStep(ctx, sc)
}
