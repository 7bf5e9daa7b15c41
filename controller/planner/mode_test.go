package planner

import (
	"reflect"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
)

// TestTemplateEnv walks templates that read env in every way text/template allows,
// and templates that only read facts.
func TestTemplateEnv(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      EnvUse
	}{
		{"facts only", "name={{ .Node.Name }} ip={{ .Node.IP }} vip={{ .VIP }}\n", EnvUse{}},
		{"range over facts", "{{ range $i, $m := .Cluster.Masters }}{{ $i }}={{ $m }} {{ . }}{{ end }}", EnvUse{}},
		{"with a fact", "{{ with .Node.Labels }}{{ .rack }}{{ index . \"zone\" }}{{ end }}", EnvUse{}},
		{"the word Env in text and labels", "Env .Env {{/* .Env.X */}}{{ .Node.Labels.Env }}{{ index .Node.Labels \"Env\" }}", EnvUse{}},
		{"field", "token: {{ .Env.TOKEN }}\n", EnvUse{Keys: []string{"TOKEN"}}},
		{"two fields, sorted, once", "{{ .Env.B }}{{ .Env.A }}{{ .Env.B }}", EnvUse{Keys: []string{"A", "B"}}},
		{"dollar", "{{ range .Cluster.Masters }}{{ $.Env.PASS }}{{ end }}", EnvUse{Keys: []string{"PASS"}}},
		{"index", `{{ index .Env "DB_PASS" }}`, EnvUse{Keys: []string{"DB_PASS"}}},
		{"in a condition only", "{{ if .Env.DEBUG }}debug{{ end }}", EnvUse{Keys: []string{"DEBUG"}}},
		{"in a function", `{{ printf "%s" .Env.K | shq }}`, EnvUse{Keys: []string{"K"}}},
		{"with env", "{{ with .Env }}{{ .USER }}:{{ .PASS }}{{ end }}", EnvUse{Keys: []string{"PASS", "USER"}}},
		{"variable holding env", "{{ $e := .Env }}{{ $e.K }}", EnvUse{Keys: []string{"K"}}},
		{"variable holding the data", "{{ $d := . }}{{ range .Cluster.Masters }}{{ $d.Env.K }}{{ end }}", EnvUse{Keys: []string{"K"}}},
		{"chain", "{{ (.Env).K }}", EnvUse{Keys: []string{"K"}}},
		{"named template over the data", `{{ define "x" }}{{ .Env.K }}{{ end }}{{ template "x" . }}`, EnvUse{Keys: []string{"K"}}},
		{"named template over env", `{{ define "x" }}{{ .K }}{{ end }}{{ template "x" .Env }}`, EnvUse{Keys: []string{"K"}}},
		{"named template over a fact", `{{ define "x" }}{{ . }}{{ end }}{{ template "x" .Node.Name }}`, EnvUse{}},
		{"block", `{{ block "x" . }}{{ .Env.K }}{{ end }}`, EnvUse{Keys: []string{"K"}}},
		{"recursive named template", `{{ define "r" }}{{ .Env.K }}{{ if false }}{{ template "r" . }}{{ end }}{{ end }}{{ template "r" . }}`, EnvUse{Keys: []string{"K"}}},
		{"named template defined, never run", `{{ define "x" }}{{ .Env.K }}{{ end }}plain`, EnvUse{}},
		{"the whole env printed", "{{ .Env }}", EnvUse{Whole: true}},
		{"the whole data printed", "{{ . }}", EnvUse{Whole: true}},
		{"dollar printed in a range", "{{ range .Cluster.Masters }}{{ $ }}{{ end }}", EnvUse{Whole: true}},
		{"the data to a function", `{{ printf "%v" . }}`, EnvUse{Whole: true}},
		{"the data piped", `{{ . | printf "%v" }}`, EnvUse{Whole: true}},
		{"range over env", "{{ range $k, $v := .Env }}{{ $k }}{{ end }}", EnvUse{Whole: true}},
		{"index with a computed key", `{{ index .Env .Node.Name }}`, EnvUse{Whole: true}},
		{"len of env", `{{ len .Env }}`, EnvUse{Whole: true}},
		{"variable re-assigned to the data in a branch", "{{ $x := .Node }}{{ if .Node.IP }}{{ $x = . }}{{ end }}{{ $x.Name }}", EnvUse{Whole: true}},
		{"with the data", "{{ with . }}{{ .Env.K }}{{ end }}", EnvUse{Keys: []string{"K"}}},
		{"shadowed in an if", "{{ $x := . }}{{ if $x := 1 }}{{ $x }}{{ end }}{{ $x.Env.K }}", EnvUse{Keys: []string{"K"}}},
		{"else branch keeps dot", "{{ with .Node.Labels.none }}x{{ else }}{{ .Env.K }}{{ end }}", EnvUse{Keys: []string{"K"}}},
		{"else with", "{{ with .Node.Labels.none }}x{{ else with .Env }}{{ .K }}{{ end }}", EnvUse{Keys: []string{"K"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := TemplateEnv("/etc/x.conf", tc.src)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("TemplateEnv(%q) = %+v, want %+v", tc.src, got, tc.want)
			}
		})
	}
	if _, err := TemplateEnv("/etc/x.conf", "a\n{{ .Env.K "); err == nil || !strings.Contains(err.Error(), "/etc/x.conf (line 2)") {
		t.Errorf("a template that does not parse: %v, want an error naming the file and line", err)
	}
}

// TestDecideMode is the mode rule: an explicit mode wins, a template that reads env
// keeps only its owner's bits, anything else keeps its mode.
func TestDecideMode(t *testing.T) {
	secret := EnvUse{Keys: []string{"TOKEN"}}
	for _, tc := range []struct {
		name    string
		in      modeInput
		want    uint32
		whyHas  string
		whyNot  string
		comment string
	}{
		{name: "env template, default mode", in: modeInput{mode: 0o644, template: true, env: secret}, want: 0o600, whyHas: "reads env TOKEN"},
		{name: "whole env", in: modeInput{mode: 0o644, template: true, env: EnvUse{Whole: true}}, want: 0o600, whyHas: "the whole env"},
		{name: "env script stays executable by its owner", in: modeInput{mode: 0o755, template: true, env: secret}, want: 0o700, whyHas: "0755 less group and other bits"},
		{name: "env template already private", in: modeInput{mode: 0o600, template: true, env: secret}, want: 0o600, whyHas: "reads env TOKEN", whyNot: "less group"},
		{name: "env template keeps setuid bits", in: modeInput{mode: 0o4750, template: true, env: secret}, want: 0o4700},
		{name: "COPY --chmod 0644 wins over env", in: modeInput{mode: 0o644, explicit: "COPY --chmod", template: true, env: secret}, want: 0o644, whyHas: "set by COPY --chmod"},
		{name: "COPY --chmod 0600 on a fact template", in: modeInput{mode: 0o600, explicit: "COPY --chmod", template: true}, want: 0o600, whyHas: "set by COPY --chmod"},
		{name: "Config spec.mode wins over env", in: modeInput{mode: 0o640, explicit: "spec.mode of Config db", template: true, env: secret}, want: 0o640, whyHas: "spec.mode of Config db"},
		{name: "facts-only template keeps its mode", in: modeInput{mode: 0o644, template: true}, want: 0o644, whyHas: "reads no env"},
		{name: "facts-only script", in: modeInput{mode: 0o755, template: true}, want: 0o755, whyHas: "reads no env"},
		{name: "systemd unit reading env keeps its mode", in: modeInput{mode: 0o644, template: true, unit: true, env: secret}, want: 0o644, whyHas: "EnvironmentFile="},
		{name: "systemd unit with --chmod", in: modeInput{mode: 0o600, explicit: "COPY --chmod", template: true, unit: true, env: secret}, want: 0o600, whyHas: "set by COPY --chmod"},
		{name: "systemd unit of facts", in: modeInput{mode: 0o644, template: true, unit: true}, want: 0o644, whyHas: "reads no env"},
		{name: "literal Config", in: modeInput{mode: 0o644}, want: 0o644, whyHas: "not a template"},
		{name: "literal Config, env use ignored", in: modeInput{mode: 0o644, env: secret}, want: 0o644, whyHas: "not a template"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := decideMode(tc.in)
			if got.Mode != tc.want {
				t.Errorf("mode %04o, want %04o (why: %s)", got.Mode, tc.want, got.Why)
			}
			if !strings.Contains(got.Why, tc.whyHas) || tc.whyNot != "" && strings.Contains(got.Why, tc.whyNot) {
				t.Errorf("why %q, want it to say %q (and not %q)", got.Why, tc.whyHas, tc.whyNot)
			}
		})
	}
}

// TestTemplateMode reads an image's template as the planner and `flotilla inspect` do.
func TestTemplateMode(t *testing.T) {
	for _, tc := range []struct {
		tmpl recipe.Template
		want uint32
	}{
		{recipe.Template{Path: "/etc/a", Mode: 0o644, Content: "{{ .Env.K }}"}, 0o600},
		{recipe.Template{Path: "/etc/a", Mode: 0o644, ExplicitMode: true, Content: "{{ .Env.K }}"}, 0o644},
		{recipe.Template{Path: "/etc/a", Mode: 0o644, Content: "{{ .Node.Name }}"}, 0o644},
		{recipe.Template{Path: "/etc/systemd/system/a.service", Mode: 0o644, Content: "ExecStart=/bin/a {{ .Env.K }}"}, 0o644},
		{recipe.Template{Path: "/etc/systemd/system/a.service.d/x.conf", Mode: 0o644, Content: "Environment=K={{ .Env.K }}"}, 0o644},
	} {
		got, err := TemplateMode(tc.tmpl)
		if err != nil || got.Mode != tc.want {
			t.Errorf("TemplateMode(%+v) = %+v, %v; want %04o", tc.tmpl, got, err, tc.want)
		}
	}
}

// TestPlanFileModes checks the modes the planner gives templates and Configs.
func TestPlanFileModes(t *testing.T) {
	img := &recipe.Recipe{SchemaVersion: 1, Env: map[string]string{"K": "v"}, Roles: []string{recipe.RoleAll, recipe.RoleMaster},
		Templates: []recipe.Template{
			{Role: recipe.RoleAll, Path: "/etc/env.conf", Mode: 0o644, Content: "k={{ .Env.K }}\n", Seq: 1},
			{Role: recipe.RoleAll, Path: "/etc/chmod.conf", Mode: 0o644, ExplicitMode: true, Content: "k={{ .Env.K }}\n", Seq: 1},
			{Role: recipe.RoleAll, Path: "/etc/facts.conf", Mode: 0o644, Content: "n={{ .Node.Name }}\n", Seq: 1},
			{Role: recipe.RoleAll, Path: "/etc/over.conf", Mode: 0o644, Content: "n={{ .Node.Name }}\n", Seq: 1},
		}}
	config := func(name, path, extra, content string) string {
		return "apiVersion: flotilla.dev/v1\nkind: Config\nmetadata: {name: " + name + "}\nspec:\n  path: " + path + "\n" + extra + "  content: |\n    " + content + "\n"
	}
	file := cf(t, "    - names: [m1]\n      roles: [master]\n",
		config("over", "/etc/over.conf", "  template: true\n", "k={{ .Env.K }}"),
		config("tmpl", "/etc/cfg-env.conf", "  template: true\n", "k={{ .Env.K }}"),
		config("moded", "/etc/cfg-moded.conf", "  template: true\n  mode: \"0644\"\n", "k={{ .Env.K }}"),
		config("plain", "/etc/cfg-plain.conf", "", "k={{ .Env.K }}"),
	)
	p, err := Plan(Input{File: file, Image: img, Agents: agents(1)})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint32{
		"/etc/env.conf": 0o600, "/etc/chmod.conf": 0o644, "/etc/facts.conf": 0o644, "/etc/over.conf": 0o600,
		"/etc/cfg-env.conf": 0o600, "/etc/cfg-moded.conf": 0o644, "/etc/cfg-plain.conf": 0o644,
	}
	got := map[string]uint32{}
	for _, f := range p.Node("m1").Files {
		got[f.Path] = f.Mode
		if f.ModeWhy == "" {
			t.Errorf("%s: no reason for mode %04o", f.Path, f.Mode)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("file modes %v, want %v (octal printed as decimal)", got, want)
	}
}
