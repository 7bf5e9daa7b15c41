package planner

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/flotilla-dev/flotilla/bundle/recipe"
)

// hostileValues each try to run `touch PWNED` in the shell that runs a RUN or
// CMD step, or to add a directive to a unit file.
var hostileValues = []struct{ name, v string }{
	{"semicolon", "x;touch PWNED;#"},
	{"IFS", "x;touch${IFS}PWNED;#"},
	{"command substitution", "$(touch PWNED)"},
	{"backquotes", "`touch PWNED`"},
	{"newline", "a\ntouch PWNED\nExecStartPre=/bin/touch PWNED"},
	{"single quote", "a';touch PWNED;'"},
	{"double quote", `a";touch PWNED;"`},
	{"specifiers and variables", "%n$HOME${PATH}\\"},
}

// hostilePlan plans one master whose name, IP zone, label and env carry v, as
// if each had got past the checks on arrival.
func hostilePlan(t *testing.T, v string) *NodePlan {
	t.Helper()
	img := &recipe.Recipe{
		SchemaVersion: 1,
		Env:           map[string]string{"EVIL": v},
		Roles:         []string{recipe.RoleAll, recipe.RoleMaster, recipe.RoleMaster0, recipe.RoleNode},
		Templates: []recipe.Template{{Role: recipe.RoleMaster, Path: "/etc/systemd/system/evil.service", Mode: 0o644, Seq: 1,
			Content: "[Service]\nExecStart=/bin/echo {{ .Node.Name }} {{ .Node.IP }} {{ index .Node.Labels \"rack\" }} {{ .Env.EVIL }}\nDescription={{ .Env.EVIL }}\n"}},
		Steps: []recipe.Step{{Role: recipe.RoleMaster, Kind: recipe.KindRun, Line: 3, Seq: 2,
			Command: `printf '%s\n' {{ .Node.Name }} {{ .Node.IP }} {{ index .Node.Labels "rack" }} {{ .Env.EVIL }}`}},
		Cmd: &recipe.Step{Role: recipe.RoleMaster0, Kind: recipe.KindRun, Line: 4, Seq: 3,
			Command: `printf '%s\n' {{ range .Cluster.Masters }}{{ . }} {{ end }}{{ .Node.Labels.rack }}`},
		Cleanup: []recipe.Step{{Role: recipe.RoleMaster, Kind: recipe.KindRun, Line: 5, Seq: 4,
			Command: `printf '%s\n' {{ .Node.Name }} {{ .Env.EVIL }}`}},
	}
	ip, err := netip.ParseAddr("fe80::1%" + v)
	if err != nil {
		t.Fatalf("zone %q: %v", v, err)
	}
	a := Agent{Name: "n-" + v, IPs: []netip.Addr{ip}, Arch: "amd64", Online: true, Labels: map[string]string{"sel": "s1", "rack": v}}
	p, err := Plan(Input{File: cf(t, "    - {selector: {sel: s1}, roles: [master]}\n"), Image: img, ImageDigest: "sha256:aaaa", Agents: []Agent{a}})
	if err != nil {
		t.Fatal(err)
	}
	np := p.Node(a.Name)
	if np == nil || p.HealthCheck == nil {
		t.Fatalf("no plan for %q or no CMD: %+v", a.Name, p)
	}
	if len(np.Cleanup) != 1 {
		t.Fatalf("plan for %q has %d CLEANUP commands, want 1", a.Name, len(np.Cleanup))
	}
	np.Steps = append(np.Steps, *p.HealthCheck, np.Cleanup[0])
	return np
}

// TestHostileValuesRenderInertInRunAndCmd runs every rendered RUN, CMD and CLEANUP with
// /bin/sh: each value comes back as one argument, byte for byte, and nothing
// it says runs.
func TestHostileValuesRenderInertInRunAndCmd(t *testing.T) {
	for _, tc := range hostileValues {
		t.Run(tc.name, func(t *testing.T) {
			np := hostilePlan(t, tc.v)
			ip := "fe80::1%" + tc.v
			want := []string{
				"n-" + tc.v + "\n" + ip + "\n" + tc.v + "\n" + tc.v + "\n", // RUN
				ip + "\n" + tc.v + "\n",          // CMD
				"n-" + tc.v + "\n" + tc.v + "\n", // CLEANUP
			}
			for i, st := range np.Steps {
				dir := t.TempDir()
				cmd := exec.Command("/bin/sh", "-c", st.Command)
				cmd.Dir = dir
				cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
				out, err := cmd.Output()
				if err != nil {
					t.Fatalf("step %d %q: %v", i, st.Command, err)
				}
				if string(out) != want[i] {
					t.Errorf("step %d %q printed %q, want %q", i, st.Command, out, want[i])
				}
				if _, err := os.Stat(filepath.Join(dir, "PWNED")); err == nil {
					t.Errorf("step %d %q created PWNED", i, st.Command)
				}
			}
		})
	}
}

// TestHostileValuesRenderInertInUnits: a value never adds a directive to a
// unit file, and systemd would expand no specifier or variable in it.
func TestHostileValuesRenderInertInUnits(t *testing.T) {
	for _, tc := range hostileValues {
		t.Run(tc.name, func(t *testing.T) {
			np := hostilePlan(t, tc.v)
			content := string(np.Files[0].Content)
			opts, err := unit.DeserializeOptions(strings.NewReader(content))
			if err != nil {
				t.Fatalf("rendered unit does not parse: %v\n%s", err, content)
			}
			if len(opts) != 2 || opts[0].Name != "ExecStart" || opts[1].Name != "Description" {
				t.Fatalf("rendered unit has other directives than ExecStart and Description:\n%s", content)
			}
			for _, o := range opts {
				if strings.Contains(strings.ReplaceAll(o.Value, "%%", ""), "%") || strings.Contains(strings.ReplaceAll(o.Value, "$$", ""), "$") {
					t.Errorf("%s=%s: an unescaped %% or $", o.Name, o.Value)
				}
			}
		})
	}
}

func TestQuoteLeavesSafeValuesAlone(t *testing.T) {
	for _, v := range []string{"10.0.0.11", "fd00::1", "node1", "web-1.example", "/var/lib/etcd", "prod-1", "r7", "1"} {
		if got := ShellQuote(v); got != v {
			t.Errorf("ShellQuote(%q) = %q", v, got)
		}
		if got := UnitQuote(v); got != v {
			t.Errorf("UnitQuote(%q) = %q", v, got)
		}
	}
	for in, want := range map[string]string{"": "''", "a b": "'a b'", "it's": `'it'"'"'s'`, "A=b": "'A=b'", "~root": "'~root'"} {
		if got := ShellQuote(in); got != want {
			t.Errorf("ShellQuote(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"": `""`, "a b": `"a b"`, "50%": `"50%%"`, "$X": `"$$X"`, "a\nb": `"a\nb"`, `q"\`: `"q\"\\"`} {
		if got := UnitQuote(in); got != want {
			t.Errorf("UnitQuote(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestAutoEscapeKeepsAuthorsQuotingAndControlFlow: an explicit shq is not
// applied twice; range/if/with and variable declarations keep working.
func TestAutoEscapeKeepsAuthorsQuotingAndControlFlow(t *testing.T) {
	data := &Data{Node: NodeFacts{Name: "a b"}, Cluster: ClusterFacts{Masters: []string{"10.0.0.1", "x y"}}, Env: map[string]string{"E": ""}}
	for src, want := range map[string]string{
		`echo {{ .Node.Name | shq }}`: `echo 'a b'`,
		`echo {{ shq .Node.Name }}`:   `echo 'a b'`,
		`{{ $n := .Node.Name }}{{ range $i, $m := .Cluster.Masters }}{{ if $i }},{{ end }}{{ $m }}{{ end }} {{ $n }}`: `10.0.0.1,'x y' 'a b'`,
		`{{ with .Node.Name }}{{ . }}{{ end }} [{{ .Env.E }}] {{ printf "%s-%d" .Node.Name 1 }}`:                      `'a b' [''] 'a b-1'`,
		`{{ define "m" }}{{ .Node.Name }}{{ end }}{{ template "m" . }}`:                                               `'a b'`,
	} {
		got, err := render("t", src, data, escapeShell)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if string(got) != want {
			t.Errorf("%s rendered %q, want %q", src, got, want)
		}
	}
	if got := escaperForFile("/etc/systemd/system/etcd.service.d/10-flags.conf"); got != escapeUnit {
		t.Errorf("drop-in: %q", got)
	}
	if got := escaperForFile("/etc/flotilla/lvscare.yaml"); got != escapeNone {
		t.Errorf("yaml: %q", got)
	}
}

// TestExamplesRenderUnchanged: the examples' templates and CMD render the same
// with escaping as without for ordinary facts, so their plans (and digests) stay.
func TestExamplesRenderUnchanged(t *testing.T) {
	data := &Data{
		Node:    NodeFacts{Name: "node1", IP: "10.0.0.11", IPs: []string{"10.0.0.11"}, Arch: "amd64", Labels: map[string]string{"rack": "r7"}, Roles: []string{"master"}},
		Cluster: ClusterFacts{Name: "prod-etcd", Masters: []string{"10.0.0.11", "10.0.0.12", "10.0.0.13"}, Nodes: []string{"10.0.0.14"}, VIP: "10.103.97.2"},
		Env: map[string]string{"ETCD_TOKEN": "flotilla", "ETCD_DATA_DIR": "/var/lib/flotilla-etcd", "ETCD_HEARTBEAT_MS": "100",
			"ETCD_ELECTION_MS": "1000", "GREETING": "hello", "LVSCARE_PORT": "2379", "LVSCARE_BACKEND_PORT": "2379", "LVSCARE_HEALTH": "http",
			"LVSCARE_HEALTH_PATH": "/health", "LVSCARE_INTERVAL": "1s", "LVSCARE_TIMEOUT": "1s", "LVSCARE_FALL": "2", "LVSCARE_RISE": "2",
			"LVSCARE_DATAPLANE": "auto", "LVSCARE_METRICS": "127.0.0.1:9273"},
		VIP:    "10.103.97.2",
		Member: MemberFacts{Role: "master", State: MemberNew, Peers: []string{"10.0.0.11", "10.0.0.12", "10.0.0.13"}},
	}
	files, _ := filepath.Glob("../../examples/*/*.tmpl")
	if len(files) == 0 {
		t.Fatal("no example templates found")
	}
	dests := map[string]string{"flotilla-etcd.service.tmpl": "/etc/systemd/system/flotilla-etcd.service",
		"flotilla-lvscare.service.tmpl": "/etc/systemd/system/flotilla-lvscare.service"}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dest := dests[filepath.Base(f)]
		if dest == "" {
			dest = "/etc/" + strings.TrimSuffix(filepath.Base(f), ".tmpl")
		}
		plain, err := render(f, string(src), data, escapeNone)
		if err != nil {
			t.Fatal(err)
		}
		escaped, err := render(f, string(src), data, escaperForFile(dest))
		if err != nil {
			t.Fatal(err)
		}
		if string(plain) != string(escaped) {
			t.Errorf("%s renders differently with escaping:\n%s\n---\n%s", f, plain, escaped)
		}
	}
	cmd := "/usr/local/bin/flotilla-etcd-health {{ range .Cluster.Masters }}{{ . }} {{ end }}"
	got, err := render("CMD", cmd, data, escapeShell)
	if err != nil || string(got) != "/usr/local/bin/flotilla-etcd-health 10.0.0.11 10.0.0.12 10.0.0.13 " {
		t.Errorf("etcd CMD: %q %v", got, err)
	}
}
