package clitest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestInspectFileModes builds an image with templates that read env or only facts,
// with and without --chmod, a systemd unit and a setuid binary, and checks that
// `flotilla inspect` shows the mode each file reaches nodes with, and why.
func TestInspectFileModes(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	files := map[string]string{
		"Kubefile": `FROM scratch
ENV DB_PASS=x
COPY secret.conf.tmpl /etc/app/
COPY --chmod=0644 public.conf.tmpl /etc/app/
COPY facts.conf.tmpl /etc/app/
COPY app.service.tmpl /etc/systemd/system/
COPY --chmod=4755 tool /usr/local/bin/tool
ON master COPY run.sh.tmpl /usr/local/bin/
`,
		"secret.conf.tmpl": "password={{ .Env.DB_PASS }}\n",
		"public.conf.tmpl": "password={{ .Env.DB_PASS }}\n",
		"facts.conf.tmpl":  "node={{ .Node.Name }}\n",
		"app.service.tmpl": "[Service]\nExecStart=/usr/local/bin/app --pass {{ .Env.DB_PASS }}\n",
		"tool":             "#!/bin/sh\n",
		"run.sh.tmpl":      "#!/bin/sh\nexec app --pass {{ index .Env \"DB_PASS\" }}\n",
	}
	for name, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh.tmpl") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	c.run(true, "build", "-q", "-t", "modes:1", dir)

	out, _ := c.run(true, "inspect", "-o", "json", "--files", "modes:1")
	var insp struct {
		Files []struct{ Path, Role, Kind, Mode, Why, ImageMode string }
	}
	if err := json.Unmarshal([]byte(out), &insp); err != nil {
		t.Fatalf("inspect -o json: %v\n%s", err, out)
	}
	type want struct{ kind, mode, why, imageMode string }
	wants := map[string]want{
		"/etc/app/secret.conf":            {"template", "0600", "reads env DB_PASS", "0644"},
		"/etc/app/public.conf":            {"template", "0644", "set by COPY --chmod", ""},
		"/etc/app/facts.conf":             {"template", "0644", "reads no env", ""},
		"/etc/systemd/system/app.service": {"template", "0644", "EnvironmentFile=", ""},
		"/usr/local/bin/run.sh":           {"template", "0700", "reads env DB_PASS", "0755"},
		"/usr/local/bin/tool":             {"file", "0755", "setuid/setgid dropped", "4755"},
	}
	seen := map[string]bool{}
	for _, f := range insp.Files {
		w, ok := wants[f.Path]
		if !ok {
			continue
		}
		seen[f.Path] = true
		if f.Kind != w.kind || f.Mode != w.mode || !strings.Contains(f.Why, w.why) || f.ImageMode != w.imageMode {
			t.Errorf("%s: %s %s (image %q) %q; want %s %s (image %q) saying %q", f.Path, f.Kind, f.Mode, f.ImageMode, f.Why, w.kind, w.mode, w.imageMode, w.why)
		}
	}
	for p := range wants {
		if !seen[p] {
			t.Errorf("inspect --files does not list %s:\n%s", p, out)
		}
	}

	// The text view shows each template's mode and why, and with --files each layer file.
	out, _ = c.run(true, "inspect", "--files", "modes:1")
	for _, line := range []string{"template  /etc/app/secret.conf", "0600", "reads env DB_PASS, so only its owner may read it", "    file    /usr/local/bin/tool", "setuid/setgid dropped"} {
		if !strings.Contains(out, line) {
			t.Errorf("inspect --files lacks %q:\n%s", line, out)
		}
	}
	out, _ = c.run(true, "inspect", "modes:1")
	if strings.Contains(out, "    file ") || !strings.Contains(out, "/etc/app/secret.conf") {
		t.Errorf("inspect without --files lists layer files, or no templates:\n%s", out)
	}

	// A layer with more entries than nodes accept: inspect --files says so and stops.
	many := t.TempDir()
	if err := os.WriteFile(filepath.Join(many, "Kubefile"), []byte("FROM scratch\nLABEL dev.flotilla.unpack.max-entries=3\nCOPY d/ /opt/d/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(many, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c", "e"} {
		if err := os.WriteFile(filepath.Join(many, "d", n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c.run(true, "build", "-q", "-t", "many:1", many)
	_, stderr := c.run(false, "inspect", "--files", "many:1")
	if !strings.Contains(stderr, "more than 3 entries: nodes refuse it") {
		t.Errorf("inspect --files of a layer past its entry bound: %s", stderr)
	}
}
