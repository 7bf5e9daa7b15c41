package rollouttest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/protocol"
)

// TestInterruptedApplyGoesOn checks that Ctrl-C in flotilla apply stops watching but
// not the rollout: the CLI exits 130 and the controller finishes the rollout.
func TestInterruptedApplyGoesOn(t *testing.T) {
	store := t.TempDir()
	t.Setenv("FLOTILLA_STORE", store)
	f := controllertest.Start(t)
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "Kubefile"), "FROM scratch\nCOPY --chmod=0755 slow.sh /usr/local/bin/slow\nON all RUN \"${FLOTILLA_ROOT:-}/usr/local/bin/slow\"\n")
	writeFile(t, filepath.Join(src, "slow.sh"), "#!/bin/sh\necho starting\nsleep 2\necho \"$(hostname)\" > \"${FLOTILLA_ROOT:-}/slow.done\"\n")
	build := exec.Command(f.Bin, "build", "-t", "slow:1.0", src)
	build.Env = append(os.Environ(), "FLOTILLA_STORE="+store)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("flotilla build: %v\n%s", err, out)
	}
	names := []string{"slow-1", "slow-2"}
	for _, n := range names {
		f.StartAgent(n)
	}
	f.WaitOnline(60*time.Second, true, names...)
	cf := filepath.Join(t.TempDir(), "Clusterfile")
	writeFile(t, cf, fmt.Sprintf(`apiVersion: flotilla.dev/v1
kind: Cluster
metadata: {name: slow}
spec:
  image: slow:1.0
  hosts:
    - names: [%s]
      roles: [node]
`, strings.Join(names, ", ")))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.Bin, "apply", "-f", cf, "--data-dir", f.ControllerDir())
	cmd.Env = append(os.Environ(), "FLOTILLA_CONTROLLER=", "FLOTILLA_CREDENTIALS=")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Interrupt once a node runs the slow step.
	var seen bytes.Buffer
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		seen.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "run: ") {
			break
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(stdout)
	seen.Write(rest)
	code := exitCode(t, cmd.Wait())
	if code != 130 {
		t.Fatalf("apply after Ctrl-C: exit %d, want 130\nstdout:\n%s\nstderr:\n%s", code, seen.String(), errOut.String())
	}
	if want := "the rollout goes on in the controller; follow it with: flotilla status slow"; !strings.Contains(errOut.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, errOut.String())
	}

	// The controller finishes the rollout without the CLI.
	var (
		st   []protocol.ClusterStatus
		serr error
	)
	done := func() bool {
		st, serr = f.Status(ctx, "slow")
		return serr == nil && len(st) == 1 && st[0].State == protocol.RolloutDone
	}
	if perr := poll.Until(ctx, 30*time.Second, 200*time.Millisecond, done); perr != nil {
		t.Fatalf("rollout not done 30s after the CLI was interrupted; status %+v (err %v)", st, serr)
	}
	for _, n := range st[0].Nodes {
		if n.Applied != st[0].ImageDigest {
			t.Errorf("node %s applied %q, want %q", n.Node, n.Applied, st[0].ImageDigest)
		}
	}
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(f.Dir, "roots", n, "slow.done")); err != nil {
			t.Errorf("the slow step did not finish on %s: %v", n, err)
		}
	}
}
