package kubefile

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const good = `# a full Kubefile
ARG  VERSION=3.4.23
FROM scratch                              # a trailing comment
ENV  DATA_DIR=/var/lib/etcd NAME="two words"
ENV  LEGACY some value
LABEL org.opencontainers.image.description="3-member etcd"
COPY bin/ /usr/local/bin/
COPY --chmod=0755 a.sh b.sh /opt/x/
ON master COPY etcd.service.tmpl /etc/systemd/system/etcd.service
ON ci-runner ADD conf/ /etc/ci/
RUN ./fetch.sh \
    --version $VERSION \
    # comment inside a continuation

    --out "$FLOTILLA_WORKSPACE"
IMAGE docker.io/library/nginx:1.27 busybox:1
ON master SERVICE etcd.service
ON master0 RUN etcdctl endpoint health
ON node IMAGE -f images.txt registry.local/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
IMAGE --from _out/images/pause.tar registry.k8s.io/pause:3.10
ON all IMAGE --from=img/dns k8s-dns:v1
CMD ["etcdctl", "--endpoints={{ .VIP }}:2379", "endpoint health"]
ON node CLEANUP kubectl drain {{ .Node.Name }}
CLEANUP rm -rf /var/lib/x
QUORUM master
ON master JOIN flotilla-etcd-member add {{ .Node.IP }}
ON master LEAVE flotilla-etcd-member remove {{ .Node.IP }}
ON master BACKUP etcdctl snapshot save "$FLOTILLA_BACKUP"
ON master RESTORE systemctl stop etcd
ON master RESTORE flotilla-etcd-restore "$FLOTILLA_BACKUP"
`

func TestParseGood(t *testing.T) {
	kf, err := Parse("Kubefile", strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		line int
		role string
		cmd  string
		args []string
	}
	want := []row{
		{2, "", Arg, nil},
		{3, "", From, []string{"scratch"}},
		{4, "", Env, nil},
		{5, "", Env, nil},
		{6, "", Label, nil},
		{7, "", Copy, []string{"bin/", "/usr/local/bin/"}},
		{8, "", Copy, []string{"a.sh", "b.sh", "/opt/x/"}},
		{9, "master", Copy, []string{"etcd.service.tmpl", "/etc/systemd/system/etcd.service"}},
		{10, "ci-runner", Add, []string{"conf/", "/etc/ci/"}},
		{11, "", Run, []string{`./fetch.sh     --version $VERSION     --out "$FLOTILLA_WORKSPACE"`}},
		{16, "", Image, []string{"docker.io/library/nginx:1.27", "busybox:1"}},
		{17, "master", Service, []string{"etcd.service"}},
		{18, "master0", Run, []string{"etcdctl endpoint health"}},
		{19, "node", Image, []string{"-f", "images.txt", "registry.local/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}},
		{20, "", Image, []string{"registry.k8s.io/pause:3.10"}},
		{21, "all", Image, []string{"k8s-dns:v1"}},
		{22, "", Cmd, []string{`etcdctl '--endpoints={{ .VIP }}:2379' 'endpoint health'`}},
		{23, "node", Cleanup, []string{"kubectl drain {{ .Node.Name }}"}},
		{24, "", Cleanup, []string{"rm -rf /var/lib/x"}},
		{25, "", Quorum, []string{"master"}},
		{26, "master", Join, []string{"flotilla-etcd-member add {{ .Node.IP }}"}},
		{27, "master", Leave, []string{"flotilla-etcd-member remove {{ .Node.IP }}"}},
		{28, "master", Backup, []string{`etcdctl snapshot save "$FLOTILLA_BACKUP"`}},
		{29, "master", Restore, []string{"systemctl stop etcd"}},
		{30, "master", Restore, []string{`flotilla-etcd-restore "$FLOTILLA_BACKUP"`}},
	}
	if len(kf.Instructions) != len(want) {
		t.Fatalf("got %d instructions, want %d: %+v", len(kf.Instructions), len(want), kf.Instructions)
	}
	for i, w := range want {
		in := kf.Instructions[i]
		if in.Line != w.line || in.Role != w.role || in.Command != w.cmd || (w.args != nil && !reflect.DeepEqual(in.Args, w.args)) {
			t.Errorf("instruction %d: got line %d role %q %s %q, want line %d role %q %s %q", i, in.Line, in.Role, in.Command, in.Args, w.line, w.role, w.cmd, w.args)
		}
	}
	env := kf.Instructions[2].Pairs
	if len(env) != 2 || env[1] != (KeyValue{"NAME", "two words", true}) {
		t.Errorf("ENV pairs = %+v", env)
	}
	if p := kf.Instructions[3].Pairs; len(p) != 1 || p[0].Value != "some value" {
		t.Errorf("legacy ENV = %+v", p)
	}
	if in := kf.Instructions[6]; !in.HasChmod || in.Chmod != 0o755 {
		t.Errorf("chmod = %o %v", in.Chmod, in.HasChmod)
	}
	if a, b := kf.Instructions[14].ImageFrom, kf.Instructions[15].ImageFrom; a != "_out/images/pause.tar" || b != "img/dns" || kf.Instructions[13].ImageFrom != "" {
		t.Errorf("IMAGE --from paths = %q %q", a, b)
	}
	if !kf.Instructions[12].RunTime() || kf.Instructions[9].RunTime() || kf.Instructions[13].RunTime() || !kf.Instructions[16].RunTime() || kf.Instructions[15].RunTime() {
		t.Error("RunTime() wrong for ON RUN / RUN / ON IMAGE / CMD")
	}
	if !kf.Instructions[17].RunTime() || !kf.Instructions[18].RunTime() {
		t.Error("RunTime() false for CLEANUP")
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, src, want string
	}{
		{"unknown instruction", "FROM scratch\nFOO bar\n", "Kubefile:2: unknown instruction \"FOO\""},
		{"no FROM", "# nothing\nCOPY a /b\n", "Kubefile:2: COPY before FROM"},
		{"empty file", "", "Kubefile:1: no FROM instruction"},
		{"FROM without image", "FROM\n", "Kubefile:1: FROM needs an image"},
		{"multi-stage", "FROM scratch AS build\n", "Kubefile:1: FROM … AS"},
		{"second FROM", "FROM scratch\nCOPY a /a\nFROM scratch\n", "Kubefile:3: second FROM (first at line 1)"},
		{"COPY one arg", "FROM scratch\n\nCOPY a\n", "Kubefile:3: COPY needs at least one source and a destination"},
		{"COPY bad flag", "FROM scratch\nCOPY --from=x a /b\n", "Kubefile:2: COPY: flag --from is not supported"},
		{"COPY bad chmod", "FROM scratch\nADD --chmod=9x a /b\n", "Kubefile:2: ADD: --chmod=\"9x\" is not an octal mode"},
		{"COPY many to file", "FROM scratch\nCOPY a b /c\n", "Kubefile:2: COPY with several sources needs a directory destination"},
		{"COPY relative dest", "FROM scratch\nCOPY a etc/a\n", "Kubefile:2: COPY destination \"etc/a\" must be an absolute path"},
		{"ADD URL", "FROM scratch\nADD https://x/y.tgz /opt/\n", "Kubefile:2: ADD https://x/y.tgz: remote sources are not supported"},
		{"ON no role", "FROM scratch\nON\n", "Kubefile:2: ON needs a role"},
		{"ON bad role", "FROM scratch\nON Master RUN x\n", "Kubefile:2: invalid role \"Master\""},
		{"ON no instruction", "FROM scratch\nON node\n", "Kubefile:2: ON node needs an instruction"},
		{"ON FROM", "FROM scratch\nON node FROM x\n", "Kubefile:2: ON node FROM: only COPY, ADD, RUN, SERVICE, IMAGE, CLEANUP, JOIN, LEAVE, BACKUP and RESTORE"},
		{"JOIN without role", "FROM scratch\nJOIN etcdctl member add x\n", "Kubefile:2: JOIN needs a role: ON <role> JOIN <command>"},
		{"JOIN on master0", "FROM scratch\nON master0 JOIN x\n", "Kubefile:2: ON master0 JOIN: JOIN runs on the members of a role with several hosts"},
		{"LEAVE on all", "FROM scratch\nON all LEAVE x\n", "Kubefile:2: ON all LEAVE: LEAVE runs on the members"},
		{"RESTORE empty", "FROM scratch\nON master RESTORE\n", "Kubefile:2: RESTORE needs a command"},
		{"BACKUP twice", "FROM scratch\nON master BACKUP a\nON master BACKUP b\n", "Kubefile:3: second BACKUP (first at line 2)"},
		{"QUORUM no role", "FROM scratch\nQUORUM\n", "Kubefile:2: QUORUM takes one role, got 0 words"},
		{"QUORUM two roles", "FROM scratch\nQUORUM master node\n", "Kubefile:2: QUORUM takes one role, got 2 words"},
		{"QUORUM master0", "FROM scratch\nQUORUM master0\n", "Kubefile:2: QUORUM master0: a quorum role is master, node or a custom"},
		{"QUORUM bad role", "FROM scratch\nQUORUM Master\n", "Kubefile:2: QUORUM Master: a quorum role"},
		{"SERVICE without role", "FROM scratch\nSERVICE a.service\n", "Kubefile:2: SERVICE needs a role"},
		{"SERVICE two units", "FROM scratch\nON node SERVICE a b\n", "Kubefile:2: ON node SERVICE takes one unit name, got 2"},
		{"ENV no value", "FROM scratch\nENV FOO\n", "Kubefile:2: ENV FOO has no value"},
		{"ENV bad name", "FROM scratch\nENV 1X=y\n", "Kubefile:2: ENV: invalid name \"1X\""},
		{"LABEL no equals", "FROM scratch\nLABEL a b\n", "Kubefile:2: LABEL a: want key=value"},
		{"ARG bad", "ARG A=1 B=2\nFROM scratch\n", "Kubefile:1: ARG takes one NAME"},
		{"RUN empty", "FROM scratch\nRUN\n", "Kubefile:2: RUN needs a command"},
		{"CLEANUP empty", "FROM scratch\nON node CLEANUP\n", "Kubefile:2: CLEANUP needs a command"},
		{"CMD twice", "FROM scratch\nCMD a\nCMD b\n", "Kubefile:3: second CMD (first at line 2)"},
		{"CMD bad JSON", "FROM scratch\nCMD [\"a\",\n", "Kubefile:2: CMD: invalid JSON array"},
		{"IMAGE empty", "FROM scratch\nIMAGE\n", "Kubefile:2: IMAGE needs at least one"},
		{"IMAGE -f without file", "FROM scratch\nIMAGE nginx -f\n", "Kubefile:2: IMAGE -f needs a file"},
		{"IMAGE unknown flag", "FROM scratch\nON node IMAGE --platform=x nginx\n", "Kubefile:2: IMAGE: flag --platform=x is not supported"},
		{"IMAGE --from without path", "FROM scratch\nIMAGE --from\n", "Kubefile:2: IMAGE --from needs a path"},
		{"IMAGE --from= empty", "FROM scratch\nIMAGE --from= x:1\n", "Kubefile:2: IMAGE --from needs a path"},
		{"IMAGE --from path is a flag", "FROM scratch\nIMAGE --from -f x:1\n", "Kubefile:2: IMAGE --from needs a path"},
		{"IMAGE --from without ref", "FROM scratch\nIMAGE --from a.tar\n", "Kubefile:2: IMAGE --from a.tar takes exactly one container image reference after the path, got 0"},
		{"IMAGE --from two refs", "FROM scratch\n\nON node IMAGE --from a.tar x:1 y:2\n", "Kubefile:3: IMAGE --from a.tar takes exactly one container image reference after the path, got 2"},
		{"IMAGE --from then -f", "FROM scratch\nIMAGE --from=a.tar -f list\n", "Kubefile:2: IMAGE --from a.tar takes exactly one"},
		{"IMAGE --from not first", "FROM scratch\nIMAGE x:1 --from a.tar y:1\n", "Kubefile:2: IMAGE --from must come first"},
		{"continuation at EOF", "FROM scratch\nRUN a \\\n", "Kubefile:2: line continuation"},
		{"unterminated quote", "FROM scratch\nENV A=\"x\n", "Kubefile:2: ENV: unterminated \" quote"},
		{"Dockerfile-only", "FROM scratch\nWORKDIR /x\n", "Kubefile:2: WORKDIR is a Dockerfile instruction"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("Kubefile", strings.NewReader(c.src))
			if err == nil {
				t.Fatalf("parsed without error, want %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
			var ke *Error
			if !errors.As(err, &ke) || ke.File != "Kubefile" || ke.Line == 0 {
				t.Fatalf("error %v is not a *kubefile.Error with file:line", err)
			}
		})
	}
}

func TestParseReportsSeveralErrors(t *testing.T) {
	_, err := Parse("K", strings.NewReader("FROM scratch\nBAD 1\nENV X\nRUN ok\nON X RUN y\n"))
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"K:2:", "K:3:", "K:5:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q missing %s", err, want)
		}
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "1", "B_2": "two", "E": ""}
	cases := []struct{ in, want string }{
		{"plain", "plain"},
		{"$A/x", "1/x"},
		{"${B_2}x", "twox"},
		{"$UNSET-y", "-y"},
		{"${E:-dflt} ${A:-no}", "dflt 1"},
		{"${A:+yes}${E:+no}", "yes"},
		{`\$A`, "$A"},
		{"cost $", "cost $"},
		{"$1", "$1"},
	}
	for _, c := range cases {
		got, err := Expand(c.in, vars)
		if err != nil || got != c.want {
			t.Errorf("Expand(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"${A", "${A:?x}", "${1A}"} {
		if _, err := Expand(bad, vars); err == nil {
			t.Errorf("Expand(%q): want error", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(good)
	f.Add("FROM scratch\nON master COPY a.tmpl /etc/\n")
	f.Add("ARG X=${Y:-z}\nFROM $X\nRUN a \\\n b\n")
	f.Add("FROM scratch\nCMD [\"a\", \"b\"]\nLABEL \"a b\"=c\n")
	f.Fuzz(func(t *testing.T, src string) {
		kf, err := Parse("Kubefile", strings.NewReader(src))
		if err != nil {
			var ke *Error
			if !errors.As(err, &ke) {
				t.Fatalf("error without file:line: %v", err)
			}
			return
		}
		for _, in := range kf.Instructions {
			if in.Line < 1 || in.Command == "" {
				t.Fatalf("bad instruction %+v", in)
			}
			for _, a := range in.Args {
				_, _ = Expand(a, map[string]string{"A": "b"})
			}
		}
	})
}
