package rollout

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/unpack"
	"github.com/flotilla-dev/flotilla/protocol"
)

func filePayload(path, content string, mode uint32) protocol.FilePayload {
	return protocol.FilePayload{Cluster: "c1", Path: path, Mode: mode, Content: []byte(content), Digest: digestOf([]byte(content))}
}

func TestFilePlacement(t *testing.T) {
	n := newNode(t, nil)
	if _, err := n.run(protocol.KindFile, filePayload("/etc/app/env", "A=1\n", 0o600)); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(n.root, "etc/app/env")
	if got := readFile(t, p); got != "A=1\n" {
		t.Errorf("content %q", got)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v %v, want 0600", fi.Mode(), err)
	}
	// A new version replaces it and the record keeps the directories created the first time.
	if _, err := n.run(protocol.KindFile, filePayload("/etc/app/env", "A=2\n", 0)); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, p); got != "A=2\n" {
		t.Errorf("content after update %q", got)
	}
	files, err := readFiles(filepath.Join(n.dataDir, "clusters/c1"))
	if err != nil {
		t.Fatal(err)
	}
	rec := files["/etc/app/env"]
	if rec.Digest != digestOf([]byte("A=2\n")) || !slices.ContainsFunc(rec.Records, func(r unpack.Record) bool { return r.Path == "etc/app" && r.Created }) {
		t.Errorf("files.json record %+v: want the new digest and etc/app as created", rec)
	}

	for _, tc := range []struct {
		name string
		p    protocol.FilePayload
		want string
	}{
		{"digest mismatch", protocol.FilePayload{Cluster: "c1", Path: "/etc/other", Content: []byte("x"), Digest: digestOf([]byte("y"))}, "not the step's digest"},
		{"relative path", filePayload("etc/other", "x", 0), "want an absolute, clean file path"},
		{"dot-dot path", filePayload("/etc/../../other", "x", 0), "want an absolute, clean file path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := n.run(protocol.KindFile, tc.p)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.p.Path) {
				t.Errorf("error %v, want one naming %s and containing %q", err, tc.p.Path, tc.want)
			}
			if exists(filepath.Join(n.root, "etc/other")) || exists(filepath.Join(filepath.Dir(n.root), "other")) {
				t.Error("the refused file was placed")
			}
		})
	}
}

func TestRunStep(t *testing.T) {
	n := newNode(t, nil)
	ev, err := n.run(protocol.KindRun, nil, func(s *protocol.Step) {
		s.Payload = nil
		s.Shell = `pwd; echo "root=$FLOTILLA_ROOT x=$X"; echo warn >&2`
		s.Env = map[string]string{"X": "42"}
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{n.root, "root=" + n.root + " x=42", "warn"}
	if got := ev.lines(""); !sameSet(got, want) {
		t.Errorf("output %q, want %q", got, want)
	}
	_, err = n.run(protocol.KindRun, nil, func(s *protocol.Step) { s.Payload = nil; s.Shell = "exit 3" })
	var ee *agent.ExitError
	if !errors.As(err, &ee) || ee.Code != 3 {
		t.Errorf("exit 3 gave %v", err)
	}
	if _, err := n.run(protocol.KindRun, nil, func(s *protocol.Step) { s.Payload = nil }); err == nil || !strings.Contains(err.Error(), "no shell command") {
		t.Errorf("empty run step: %v", err)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
