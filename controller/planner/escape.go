package planner

import (
	"fmt"
	"path"
	"strings"
	"text/template"
	"text/template/parse"
)

// Escaping. Every value a template prints is data: node facts (checked on
// arrival, still data from an untrusted party), cluster facts and env. Where
// the output is code, values are quoted for it by default, as html/template
// does for HTML: in RUN and CMD commands every {{ … }} output goes through
// shq, in systemd unit files through unitq. A value made only of characters
// that need no quoting (an IP, a node name, a path) prints unchanged, so
// ordinary plans and their digests are the same as without escaping.
// Other files print values as they are; their templates may call shq or unitq.

// escaper names the function appended to every output action of a template.
type escaper string

const (
	escapeNone  escaper = ""
	escapeShell escaper = "shq"
	escapeUnit  escaper = "unitq"
)

// templateFuncs are available in every template and command.
var templateFuncs = template.FuncMap{
	string(escapeShell): ShellQuote,
	string(escapeUnit):  UnitQuote,
}

// shellSafe are the bytes a POSIX shell word may hold unquoted with no
// expansion, splitting, globbing, assignment or tilde meaning.
func shellSafe(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' ||
		strings.IndexByte("@%+:,./_-", b) >= 0
}

// ShellQuote prints v (as templates print values) as one inert POSIX shell
// word: unchanged when every byte is safe, else in single quotes.
func ShellQuote(v any) string {
	s := fmt.Sprint(v)
	if s == "" {
		return "''"
	}
	safe := true
	for i := 0; i < len(s); i++ {
		if !shellSafe(s[i]) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// unitSafe are the bytes a systemd unit value may hold unquoted: no
// specifier (%), variable ($), quote, escape, word separator or newline.
func unitSafe(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' ||
		strings.IndexByte("@+:,./_-=", b) >= 0
}

// UnitQuote prints v as one inert word of a systemd unit file value (e.g. an
// ExecStart= argument): unchanged when every byte is safe, else in double
// quotes with C escapes, and % and $ doubled so that systemd expands neither
// a specifier nor a variable in it. A newline never reaches the file, so a
// value cannot add a line (a directive) to the unit.
func UnitQuote(v any) string {
	s := fmt.Sprint(v)
	if s == "" {
		return `""`
	}
	safe := true
	for i := 0; i < len(s); i++ {
		if !unitSafe(s[i]) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' || c == '"':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '%':
			b.WriteString("%%")
		case c == '$':
			b.WriteString("$$")
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\t':
			b.WriteString(`\t`)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// unitSuffixes are the systemd unit types whose files get unitq by default.
var unitSuffixes = map[string]bool{
	".service": true, ".socket": true, ".timer": true, ".mount": true, ".automount": true, ".swap": true,
	".path": true, ".target": true, ".slice": true, ".scope": true,
}

// escaperForFile picks the default escaping of a rendered file by its path:
// systemd units and their drop-ins (…/foo.service.d/x.conf) get unitq.
func escaperForFile(p string) escaper {
	if unitSuffixes[path.Ext(p)] {
		return escapeUnit
	}
	if dir := path.Dir(p); path.Ext(p) == ".conf" && strings.HasSuffix(dir, ".d") && unitSuffixes[path.Ext(strings.TrimSuffix(dir, ".d"))] {
		return escapeUnit
	}
	return escapeNone
}

// autoEscape appends esc to the pipeline of every action that prints, in every
// template of t, unless the pipeline already ends with an escaper.
func autoEscape(t *template.Template, esc escaper) {
	if esc == escapeNone {
		return
	}
	for _, tt := range t.Templates() {
		if tt.Tree != nil {
			escapeList(tt.Tree.Root, esc)
		}
	}
}

func escapeList(l *parse.ListNode, esc escaper) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		switch n := n.(type) {
		case *parse.ActionNode:
			escapePipe(n.Pipe, esc)
		case *parse.IfNode:
			escapeList(n.List, esc)
			escapeList(n.ElseList, esc)
		case *parse.RangeNode:
			escapeList(n.List, esc)
			escapeList(n.ElseList, esc)
		case *parse.WithNode:
			escapeList(n.List, esc)
			escapeList(n.ElseList, esc)
		case *parse.ListNode:
			escapeList(n, esc)
		}
	}
}

func escapePipe(p *parse.PipeNode, esc escaper) {
	if p == nil || len(p.Decl) > 0 || len(p.Cmds) == 0 {
		return // {{ $x := … }} prints nothing
	}
	last := p.Cmds[len(p.Cmds)-1]
	if len(last.Args) > 0 {
		if id, ok := last.Args[0].(*parse.IdentifierNode); ok && templateFuncs[id.Ident] != nil {
			return // already quoted by the author (shq or unitq)
		}
	}
	p.Cmds = append(p.Cmds, &parse.CommandNode{
		NodeType: parse.NodeCommand,
		Pos:      p.Pos,
		Args:     []parse.Node{parse.NewIdentifier(string(esc)).SetTree(nil).SetPos(p.Pos)},
	})
}
