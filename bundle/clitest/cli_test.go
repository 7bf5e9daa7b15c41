package clitest

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/flotilla-dev/flotilla/bundle/plan"
	"github.com/flotilla-dev/flotilla/internal/registrytest"
	"github.com/flotilla-dev/flotilla/internal/testbin"
)

type cli struct {
	t     *testing.T
	bin   string
	env   []string
	store string
}

func newCLI(t *testing.T) *cli {
	bin, err := testbin.Path()
	if err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	return &cli{t: t, bin: bin, store: store, env: append(os.Environ(), "FLOTILLA_STORE="+store, "DOCKER_CONFIG="+t.TempDir())}
}

// run runs flotilla and returns stdout; wantOK says whether it must succeed.
func (c *cli) run(wantOK bool, args ...string) (string, string) {
	c.t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = c.env
	cmd.Dir = "../.."
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if (err == nil) != wantOK {
		c.t.Fatalf("flotilla %s: err=%v (want ok=%v)\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, wantOK, out.String(), errb.String())
	}
	return out.String(), errb.String()
}

func digestOf(t *testing.T, c *cli, ref string) string {
	out, _ := c.run(true, "images", "-o", "json")
	var rows []struct{ Name, Digest string }
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("images -o json: %v\n%s", err, out)
	}
	for _, r := range rows {
		if r.Name == ref {
			return r.Digest
		}
	}
	t.Fatalf("%s not in images: %s", ref, out)
	return ""
}

func TestImageCommandsEndToEnd(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	c := newCLI(t)
	ref := reg.Host + "/examples/hello:1"

	out, _ := c.run(true, "build", "-q", "-t", "hello:1", "-t", ref, "examples/hello")
	if !strings.Contains(out, "built hello:1") {
		t.Fatalf("build output: %s", out)
	}
	first := digestOf(t, c, "hello:1")
	out, _ = c.run(true, "build", "-q", "-t", "hello:1", "-t", ref, "examples/hello")
	if !strings.Contains(out, "0 new blobs") || digestOf(t, c, "hello:1") != first {
		t.Fatalf("unchanged rebuild: %s", out)
	}

	// inspect by build context, as the README shows.
	out, _ = c.run(true, "inspect", "examples/hello")
	for _, want := range []string{"Role all:", "template  /etc/flotilla-hello/hello.conf", "run", "flotilla-hello", "GREETING=hello", "COPY --chmod=0755 hello.sh"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	out, _ = c.run(true, "inspect", "-o", "json", "hello:1")
	var insp struct {
		Digest string
		Plan   plan.Plan
	}
	if err := json.Unmarshal([]byte(out), &insp); err != nil {
		t.Fatal(err)
	}
	if insp.Digest != first || len(insp.Plan.Templates) != 1 || len(insp.Plan.Steps) != 1 || insp.Plan.Steps[0].Role != plan.RoleAll {
		t.Errorf("inspect -o json: %+v", insp)
	}

	c.run(true, "tag", "hello:1", "hello:copy")
	if digestOf(t, c, "hello:copy") != first {
		t.Error("tag points elsewhere")
	}

	// push, rmi everything, pull: same digest.
	c.run(true, "push", "-q", "--insecure", ref)
	c.run(true, "rmi", "hello:1", "hello:copy", ref)
	if blobs, _ := os.ReadDir(filepath.Join(c.store, "blobs", "sha256")); len(blobs) != 0 {
		t.Fatalf("rmi left %d blobs", len(blobs))
	}
	c.run(true, "pull", "-q", "--insecure", ref)
	if digestOf(t, c, ref) != first {
		t.Fatal("pulled digest differs from built digest")
	}

	// save, load into an empty store: same digest.
	archive := filepath.Join(t.TempDir(), "hello.tar.zst")
	c.run(true, "save", "-q", "-o", archive, ref)
	c2 := newCLI(t)
	c2.run(true, "load", "-q", "-i", archive)
	if digestOf(t, c2, ref) != first {
		t.Fatal("loaded digest differs from built digest")
	}

	// bad input: a Kubefile error names file:line and the command fails.
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "Kubefile"), []byte("FROM scratch\nCOPY only-one\n"), 0o644)
	_, stderr := c.run(false, "build", bad)
	if !strings.Contains(stderr, "Kubefile:2: COPY needs at least one source and a destination") {
		t.Errorf("bad Kubefile stderr: %s", stderr)
	}
	_, stderr = c.run(false, "inspect", "nothing:here")
	if !strings.Contains(stderr, "not found in the local store") {
		t.Errorf("inspect of a missing image: %s", stderr)
	}
}

func TestLoginLogout(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o644)
	reg := registrytest.Start(t, registrytest.Options{HtpasswdFile: htpasswd})
	c := newCLI(t)
	ref := reg.Host + "/auth/hello:1"
	c.run(true, "build", "-q", "-t", ref, "examples/hello")

	_, stderr := c.run(false, "push", "-q", "--insecure", ref)
	if !strings.Contains(stderr, "flotilla login") {
		t.Errorf("unauthenticated push should say to log in: %s", stderr)
	}
	_, stderr = c.run(false, "login", "--insecure", "-u", "ci", "-p", "wrong", reg.Host)
	if !strings.Contains(stderr, "refused") && !strings.Contains(stderr, "401") {
		t.Errorf("login with a wrong password: %s", stderr)
	}
	c.run(true, "login", "--insecure", "-u", "ci", "-p", "s3cret", reg.Host)
	c.run(true, "push", "-q", "--insecure", ref)
	c.run(true, "logout", reg.Host)
	_, stderr = c.run(false, "pull", "-q", "--insecure", ref)
	if !strings.Contains(stderr, "flotilla login") {
		t.Errorf("pull after logout should say to log in: %s", stderr)
	}
}

// TestConcurrentCommands runs builds and garbage collection as separate processes on
// one store at once: every build must survive and stay valid.
func TestConcurrentCommands(t *testing.T) {
	c := newCLI(t)
	const n = 4
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = t.TempDir()
		os.WriteFile(filepath.Join(dirs[i], "Kubefile"), []byte("FROM scratch\nCOPY f /opt/f\nRUN echo $RANDOM > $FLOTILLA_WORKSPACE/r\n"), 0o644)
		os.WriteFile(filepath.Join(dirs[i], "f"), []byte(strings.Repeat(string(rune('a'+i)), 50000)), 0o644)
	}
	errs := make(chan error, 2*n)
	for i := 0; i < n; i++ {
		go func(i int) {
			cmd := exec.Command(c.bin, "build", "-q", "-t", "conc:"+string(rune('a'+i)), dirs[i])
			cmd.Env = c.env
			out, err := cmd.CombinedOutput()
			if err != nil {
				err = &buildErr{err, string(out)}
			}
			errs <- err
		}(i)
		go func() {
			cmd := exec.Command(c.bin, "rmi", "--prune")
			cmd.Env = c.env
			out, err := cmd.CombinedOutput()
			if err != nil {
				err = &buildErr{err, string(out)}
			}
			errs <- err
		}()
	}
	for i := 0; i < 2*n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	c.run(true, "rmi", "--prune")
	for i := 0; i < n; i++ {
		out, _ := c.run(true, "inspect", "-o", "json", "conc:"+string(rune('a'+i)))
		var insp struct{ Plan plan.Plan }
		if err := json.Unmarshal([]byte(out), &insp); err != nil || len(insp.Plan.Layers) != 2 {
			t.Fatalf("conc:%c after concurrent builds and GC: %v %s", 'a'+i, err, out)
		}
		for _, l := range insp.Plan.Layers {
			if _, err := os.Stat(filepath.Join(c.store, "blobs", "sha256", strings.TrimPrefix(l.Digest, "sha256:"))); err != nil {
				t.Errorf("conc:%c lost layer %s: %v", 'a'+i, l.Digest, err)
			}
		}
	}
}

type buildErr struct {
	err error
	out string
}

func (e *buildErr) Error() string { return e.err.Error() + ": " + e.out }
