package planner

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"text/template"
)

// Data is what templates (and step commands) are rendered over.
type Data struct {
	Node    NodeFacts
	Cluster ClusterFacts
	// Env is the only field that may hold secrets: mode.go decides a rendered file's
	// mode by whether its template reads it.
	Env map[string]string
	VIP string // Cluster.VIP, short for Kubefile CMD lines such as `{{ .VIP }}:2379`
	// Member is the node's membership in a managed role (zero: none): a founding
	// member's State is "new", a joining one's "existing"; Peers are the members it
	// starts with, itself included. Kept from the node's first apply, so a member's
	// files do not change when others join or leave.
	Member MemberFacts
}

// NodeFacts are the facts of the node a file is rendered for.
type NodeFacts struct {
	Name   string
	IP     string
	IPs    []string
	Index  int
	Arch   string
	Labels map[string]string
	Roles  []string
}

// ClusterFacts are the facts shared by every node of the cluster.
type ClusterFacts struct {
	Name    string
	Masters []string // IPs, master0 first
	Nodes   []string // IPs of the hosts with the node role
	VIP     string
	Image   string
}

// execErrRe picks the line and the failing expression out of a text/template error.
var execErrRe = regexp.MustCompile(`^template: .*?:(\d+):(?:\d+:)? executing ".*?" at <(.*?)>: (.*)$`)
var parseErrRe = regexp.MustCompile(`^template: .*?:(\d+): (.*)$`)

// render executes src (named name in errors) over data with missingkey=error,
// every printed value escaped with esc (see escape.go).
func render(name, src string, data *Data, esc escaper) ([]byte, error) {
	t, err := parseTemplate(name, src)
	if err != nil {
		return nil, err
	}
	return execute(t, data, esc)
}

// parseTemplate parses src as every template and command is parsed (errors name
// name and the line).
func parseTemplate(name, src string) (*template.Template, error) {
	t, err := template.New(name).Option("missingkey=error").Funcs(templateFuncs).Parse(src)
	if err != nil {
		return nil, tidyTemplateError(name, err)
	}
	return t, nil
}

// execute escapes every printed value of t with esc and executes it over data.
func execute(t *template.Template, data *Data, esc escaper) ([]byte, error) {
	autoEscape(t, esc)
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		return nil, tidyTemplateError(t.Name(), err)
	}
	return b.Bytes(), nil
}

// tidyTemplateError turns `template: /etc/x:3:12: executing "/etc/x" at <.Env.TOKN>: map has
// no entry for key "TOKN"` into `/etc/x (line 3): map has no entry for key "TOKN" (at .Env.TOKN)`.
func tidyTemplateError(name string, err error) error {
	msg := err.Error()
	if m := execErrRe.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s (line %s): %s (at %s)", name, m[1], m[3], m[2])
	}
	if m := parseErrRe.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s (line %s): %s", name, m[1], m[2])
	}
	return fmt.Errorf("%s: %w", name, err)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// stepDigest hashes a step with everything before it that may change its effect.
func stepDigest(s *Step, layers []Layer, files []File, images *Images) string {
	h := sha256.New()
	fmt.Fprintf(h, "kind %q\ncommand %q\nrole %q\n", s.Kind, s.Command, s.Role)
	keys := make([]string, 0, len(s.Env))
	for k := range s.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "env %q=%q\n", k, s.Env[k])
	}
	for _, l := range layers {
		if l.Seq < s.Seq {
			fmt.Fprintf(h, "layer %s\n", l.Digest)
		}
	}
	for _, f := range files {
		if f.Seq < s.Seq {
			fmt.Fprintf(h, "file %q %o %s\n", f.Path, f.Mode, f.Digest)
		}
	}
	if images != nil && images.Seq <= s.Seq {
		fmt.Fprintf(h, "images %s\n", images.Digest)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func mergeEnv(layers ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range layers {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}
