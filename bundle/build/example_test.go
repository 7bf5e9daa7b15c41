package build

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
)

// TestExampleHello plays a rollout of examples/hello by hand: unpack its layers and
// render its template under a root directory, run its step with FLOTILLA_ROOT, and
// check the file it writes names the node.
func TestExampleHello(t *testing.T) {
	st := newStore(t)
	dir, _ := filepath.Abs("../../examples/hello")
	_, _, p := build(t, st, dir, Options{Tags: []string{"hello:test"}})
	root := t.TempDir()
	for _, l := range p.LayersFor([]string{"master"}, true) {
		h, _ := v1.NewHash(l.Digest)
		rc, _, err := st.OpenBlob(h)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(rc)
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(zr)
		for {
			hd, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if hd.Typeflag != tar.TypeReg || strings.Contains(hd.Name, "..") {
				t.Fatalf("unexpected entry %q in the example's layer", hd.Name)
			}
			dst := filepath.Join(root, hd.Name)
			os.MkdirAll(filepath.Dir(dst), 0o755)
			b, _ := io.ReadAll(tr)
			if err := os.WriteFile(dst, b, os.FileMode(hd.Mode)); err != nil {
				t.Fatal(err)
			}
		}
		rc.Close()
	}
	type node struct {
		Name, IP, Arch string
		IPs            []string
		Index          int
		Labels         map[string]string
		Roles          []string
	}
	data := map[string]any{
		"Node":    node{Name: "edge-7", IP: "10.77.0.7"},
		"Cluster": map[string]any{"Name": "demo", "Masters": []string{"10.77.0.7"}},
		"Env":     map[string]string{"GREETING": p.Env["GREETING"]},
	}
	for _, tm := range p.TemplatesFor([]string{"master"}, true) {
		tpl, err := template.New(tm.Path).Option("missingkey=error").Parse(tm.Content)
		if err != nil {
			t.Fatalf("template %s: %v", tm.Path, err)
		}
		dst := filepath.Join(root, tm.Path)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		f, _ := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(tm.Mode))
		if err := tpl.Execute(f, data); err != nil {
			t.Fatalf("render %s: %v", tm.Path, err)
		}
		f.Close()
	}
	steps := p.StepsFor([]string{"master"}, true)
	if len(steps) != 1 || steps[0].Kind != recipe.KindRun {
		t.Fatalf("steps = %+v", steps)
	}
	cmd := exec.CommandContext(context.Background(), "sh", "-c", steps[0].Command)
	cmd.Env = append(os.Environ(), "FLOTILLA_ROOT="+root, "GREETING=ignored-when-conf-exists")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("step %q: %v\n%s", steps[0].Command, err, out)
	}
	got, err := os.ReadFile(filepath.Join(root, "var/lib/flotilla-hello/hello.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "hello from edge-7\n" {
		t.Errorf("hello.txt = %q, want it to name the node", got)
	}
}
