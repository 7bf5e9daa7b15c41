package rollout

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
)

// undoCleanLvscare removes lvscare's kernel rules once its unit was stopped
// for good (the undo before it): `flotilla lvscare --clean`, run as its own
// process so that lvscare's netlink work stays out of the agent. The rules
// are the host's, so an agent that places files under another --root has
// none to clean.
func undoCleanLvscare(ctx context.Context, sc *agent.StepContext, unit string) error {
	if err := validUnit(unit); err != nil {
		return fmt.Errorf("undo clean-lvscare: %w", err)
	}
	if filepath.Clean(sc.Root) != "/" {
		sc.Output("stdout", fmt.Sprintf("%s: lvscare's rules are the host's; this agent places files under %s: nothing to clean", unit, sc.Root))
		return nil
	}
	self, err := flotillaBinary()
	if err != nil {
		return fmt.Errorf("undo clean-lvscare after %s: %w", unit, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, "lvscare", "--clean")
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			sc.Output("stdout", line)
		}
	}
	if err != nil {
		return fmt.Errorf("undo: flotilla lvscare --clean after stopping %s: %w", unit, err)
	}
	sc.Output("stdout", fmt.Sprintf("removed lvscare's rules (stopped %s)", unit))
	return nil
}

// flotillaBinary is the flotilla binary to run lvscare with: $FLOTILLA_BIN
// when set (tests, where this process is a test binary), else this agent's own.
func flotillaBinary() (string, error) {
	if p := os.Getenv("FLOTILLA_BIN"); p != "" {
		return filepath.Abs(p)
	}
	return os.Executable()
}
