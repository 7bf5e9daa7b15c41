package rolloutview

import (
	"bytes"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/protocol"
)

// A node's output cannot drive the admin's terminal through apply's progress
// or summary: escape sequences are shown, not sent.
func TestHostileOutputIsTerminalSafe(t *testing.T) {
	evil := "ok\x1b]52;c;cHduZWQ=\x07\x1b[2J\rgone"
	var plain bytes.Buffer
	p := NewPlain(&plain, Options{Verbose: true})
	p.Event(protocol.RolloutEvent{Type: protocol.RolloutEventNodeStart, Node: "n1", Steps: 1})
	p.Event(protocol.RolloutEvent{Type: protocol.RolloutEventStep, Node: "n1", Step: 1, Steps: 1, StepName: "run\x1b[31m"})
	p.Event(protocol.RolloutEvent{Type: protocol.RolloutEventOutput, Node: "n1", Step: 1, Steps: 1, StepName: "run\x1b[31m", Line: evil})
	p.Close()
	var sum bytes.Buffer
	if err := WriteSummary(&sum, &protocol.ApplyResult{Health: evil, Nodes: []protocol.NodeOutcome{{Node: "n1", Status: protocol.NodeFailed, Error: evil, LastOutput: []string{evil}}}}); err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{"progress": plain.String(), "summary": sum.String()} {
		if strings.ContainsAny(out, "\x1b\x07\r") {
			t.Errorf("%s passes control characters through: %q", name, out)
		}
		if !strings.Contains(out, `\x1b`) {
			t.Errorf("%s hides the escaped output: %q", name, out)
		}
	}
}
