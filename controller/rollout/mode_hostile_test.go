package rollout_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// secretKubefile renders three files: one from a template that reads an env value
// (no mode chosen), the same template with an explicit --chmod=0644, and a template
// of facts only. The template files in the build context are 0644 (buildDir).
const secretKubefile = `FROM scratch
ENV DB_PASS=image-default
COPY secret.conf.tmpl /etc/flotilla-secret/
COPY --chmod=0644 public.conf.tmpl /etc/flotilla-secret/
COPY facts.conf.tmpl /etc/flotilla-secret/
`

// readAs reads path as uid/gid nobody (no supplementary groups) in a child process.
func readAs(ctx context.Context, path string) (string, error) {
	cmd := exec.CommandContext(ctx, "cat", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// traversable lets every user walk from / to dir: the test's own temporary directories
// are 0700, which alone would keep nobody out whatever the file's mode, and prove
// nothing. Directories outside base are only checked, never changed.
func traversable(t *testing.T, dir, base string) {
	t.Helper()
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			if d != base && !strings.HasPrefix(d, base+string(filepath.Separator)) {
				t.Skipf("%s is not traversable by other users (%v): set TMPDIR to a directory every user can walk into", d, fi.Mode().Perm())
			}
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				t.Fatal(err)
			}
		}
		if d == "/" {
			return
		}
	}
}

// TestHostileLocalUserReadsRenderedSecret performs finding 11a: an image renders an env
// value the Clusterfile sets (a password) into a file through a template that does not
// choose a mode, and an unprivileged local user of the node (uid 65534) tries to read
// the file. Before the fix the file was placed 0644, the build context's mode, and the
// user read the password. Now a template that reads env renders 0600, a template that
// chose --chmod=0644 keeps it (the user reads it: the traversal is real), a template
// of facts keeps the build context's 0644, and a node holding a world-readable copy
// gets it private on the next apply.
func TestHostileLocalUserReadsRenderedSecret(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the agent places files as root and the test reads them as uid 65534")
	}
	f, st := startFleet(t, "s1")
	const password = "s3cret-from-the-Clusterfile"
	templates := map[string]string{
		"secret.conf.tmpl": "user=app\npassword={{ .Env.DB_PASS }}\n",
		"public.conf.tmpl": "password={{ .Env.DB_PASS }}\n",
		"facts.conf.tmpl":  "node={{ .Node.Name }}\n",
	}
	buildDir(t, st, "secret:1", secretKubefile, templates)
	f.mustApply("-f", f.clusterfile("secret", "secret:1", []string{"s1"}, nil, "{DB_PASS: '"+password+"'}"))

	dir := f.root("s1", "etc", "flotilla-secret")
	traversable(t, dir, filepath.Dir(f.Dir))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, tc := range []struct {
		file     string
		mode     os.FileMode
		readable bool
	}{
		{"secret.conf", 0o600, false},
		{"public.conf", 0o644, true}, // COPY --chmod=0644: the image's choice wins
		{"facts.conf", 0o644, true},  // reads no env: the build context's mode
	} {
		p := filepath.Join(dir, tc.file)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("after apply: %v", err)
		}
		if fi.Mode().Perm() != tc.mode {
			t.Errorf("%s placed %v, want %v", tc.file, fi.Mode().Perm(), tc.mode)
		}
		out, err := readAs(ctx, p)
		switch {
		case tc.readable && err != nil:
			t.Errorf("uid %d cannot read %s (%v: %s): the test does not prove what it claims", nobody, tc.file, err, out)
		case !tc.readable && err == nil:
			t.Errorf("uid %d read %s (mode %v): %q", nobody, tc.file, fi.Mode().Perm(), out)
		case !tc.readable && !strings.Contains(out, "Permission denied"):
			t.Errorf("uid %d reading %s: %v %q, want permission denied", nobody, tc.file, err, out)
		}
		if strings.Contains(out, password) && !tc.readable {
			t.Errorf("uid %d got the password from %s", nobody, tc.file)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "secret.conf")); err != nil || !strings.Contains(string(b), password) {
		t.Errorf("secret.conf holds %q, %v: want the Clusterfile's password rendered", b, err)
	}
	// A node that holds the file world-readable gets it private on the next apply: an
	// image that drops the --chmod=0644 (as an upgrade to this version of flotilla
	// does for a template that never chose one) places public.conf again, 0600.
	buildDir(t, st, "secret:2", strings.Replace(secretKubefile, "COPY --chmod=0644 public.conf.tmpl", "COPY public.conf.tmpl", 1), templates)
	f.mustApply("-f", f.clusterfile("secret", "secret:2", []string{"s1"}, nil, "{DB_PASS: '"+password+"'}"))
	p := filepath.Join(dir, "public.conf")
	if fi, err := os.Stat(p); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("public.conf after the upgrade is %v, want 0600", fi.Mode().Perm())
	}
	if out, err := readAs(ctx, p); err == nil || strings.Contains(out, password) {
		t.Errorf("uid %d read public.conf after the upgrade: %q", nobody, out)
	}

	// The directories the agent created for the files: 0755, as a layer's missing
	// parents (they hold no secret; the files' modes guard them).
	for _, d := range []string{dir, filepath.Dir(dir)} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("directory %s is %v, want 0755", d, fi.Mode().Perm())
		}
	}
}
