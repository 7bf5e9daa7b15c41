package planner

import (
	"fmt"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/flotilla-dev/flotilla/bundle/recipe"
)

// File modes. Env values (the image's ENV defaults, the Clusterfile's env, a host's
// env) may be secrets: nothing marks which ones are, so a rendered file that reads any
// of them must not be readable by every local user of the node. The mode of a rendered
// file is decided here, from what the template reads, not from the rendered bytes:
//
//   - a mode the image or the Clusterfile chose (COPY --chmod, a Config's spec.mode)
//     is kept as it is;
//   - otherwise a template that reads env loses its group and other bits (a 0644
//     template file in the build context renders 0600, a 0755 one 0700), except a
//     systemd unit or drop-in: systemd shows every unit's settings to every local
//     user (systemctl show, over D-Bus), so a private mode would hide nothing, and
//     systemd logs "is marked world-inaccessible" at every reload; the reason says
//     to keep secrets in a file the unit reads (EnvironmentFile=, LoadCredential=);
//   - otherwise the file keeps its mode (the template file's mode in the build
//     context, 0644 for a Config).
//
// What a template reads is found by walking its parse tree (every named template it
// invokes too) with the kind of value dot and each variable hold, not by matching
// text: `.Env.KEY`, `$.Env.KEY`, `index .Env "KEY"`, `with .Env`, `range .Env`, and
// the whole data (`{{ . }}`, `printf "%v" $`) all read env; `.Node.Name` or
// `range .Cluster.Masters` do not.

// EnvUse is what a template reads of the env.
type EnvUse struct {
	Keys  []string // env keys it names (.Env.KEY, index .Env "KEY"), sorted, each once
	Whole bool     // the env map, or the whole data holding it, reaches output, a function or a range
}

// Reads reports whether the template reads any env value.
func (u EnvUse) Reads() bool { return u.Whole || len(u.Keys) > 0 }

// String says what is read, for `flotilla inspect` and plan reasons.
func (u EnvUse) String() string {
	switch {
	case u.Whole && len(u.Keys) > 0:
		return "the whole env (and " + strings.Join(u.Keys, ", ") + ")"
	case u.Whole:
		return "the whole env"
	case len(u.Keys) > 0:
		return "env " + strings.Join(u.Keys, ", ")
	}
	return "no env"
}

// TemplateEnv parses src as the planner renders it and returns what it reads of the
// env. A template that does not parse is an error naming name and the line.
func TemplateEnv(name, src string) (EnvUse, error) {
	t, err := parseTemplate(name, src)
	if err != nil {
		return EnvUse{}, err
	}
	return envOf(t), nil
}

// envOf returns what the parsed template t reads of the env when executed (before
// autoEscape: the escapers it adds read nothing).
func envOf(t *template.Template) EnvUse {
	name := t.Name()
	w := &envWalker{t: t, keys: map[string]bool{}, seen: map[string]bool{}}
	w.template(name, kindRoot)
	use := EnvUse{Whole: w.whole}
	for k := range w.keys {
		use.Keys = append(use.Keys, k)
	}
	slices.Sort(use.Keys)
	return use
}

// ModeChoice is the mode a rendered file gets and why.
type ModeChoice struct {
	Mode uint32 `json:"mode"`
	Why  string `json:"why"`
}

// modeInput is what decides a rendered file's mode.
type modeInput struct {
	mode     uint32 // the mode it was given (the build context's, a Config's default, or an explicit one)
	explicit string // what chose mode ("COPY --chmod", "spec.mode of Config x"); "" if nothing did
	template bool   // rendered as a template (a Config may be literal)
	unit     bool   // a systemd unit or drop-in (escaperForFile)
	env      EnvUse // what the template reads
}

// modeInputFor is the input for a file at path given mode.
func modeInputFor(path string, mode uint32) modeInput {
	return modeInput{mode: mode, template: true, unit: escaperForFile(path) == escapeUnit}
}

// decideMode is the rule above: an explicit mode wins; a template that reads env
// loses its group and other bits; anything else keeps its mode.
func decideMode(in modeInput) ModeChoice {
	switch {
	case in.explicit != "":
		return ModeChoice{in.mode, "set by " + in.explicit}
	case in.template && in.env.Reads() && in.unit:
		return ModeChoice{in.mode, fmt.Sprintf("reads %s, but a systemd unit's settings are shown to every user (systemctl show) whatever its mode: "+
			"keep secrets in a file it reads (EnvironmentFile=, LoadCredential=)", in.env)}
	case in.template && in.env.Reads():
		m := in.mode &^ 0o077
		why := fmt.Sprintf("reads %s, so only its owner may read it", in.env)
		if m != in.mode {
			why += fmt.Sprintf(" (%04o less group and other bits; COPY --chmod or a Config's spec.mode chooses a mode)", in.mode)
		}
		return ModeChoice{m, why}
	case in.template:
		return ModeChoice{in.mode, "reads no env: the mode it was given"}
	}
	return ModeChoice{in.mode, "not a template: its mode"}
}

// TemplateMode is the mode a node gets t's file with when no Config replaces it.
func TemplateMode(t recipe.Template) (ModeChoice, error) {
	use, err := TemplateEnv(t.Path, t.Content)
	if err != nil {
		return ModeChoice{}, err
	}
	in := modeInputFor(t.Path, t.Mode)
	in.env = use
	if t.ExplicitMode {
		in.explicit = "COPY --chmod"
	}
	return decideMode(in), nil
}

// valueKind is what a template value may hold, as far as env is concerned.
type valueKind int

const (
	kindOther valueKind = iota // no env value (a fact, a literal, a function's result)
	kindRoot                   // the whole template data: .Env is one of its fields
	kindEnv                    // the env map itself
)

func (k valueKind) sensitive() bool { return k != kindOther }

// envWalker walks a parsed template set recording what of the env it reads.
type envWalker struct {
	t     *template.Template
	keys  map[string]bool
	whole bool
	seen  map[string]bool // named template and dot kind already walked (templates may recurse)
}

// scope is the kind of dot and of each variable at a point of a template.
type scope struct {
	dot  valueKind
	vars map[string]valueKind
}

func (s scope) child(dot valueKind) scope {
	vars := make(map[string]valueKind, len(s.vars))
	for k, v := range s.vars {
		vars[k] = v
	}
	return scope{dot: dot, vars: vars}
}

// template walks the named template executed with dot of kind dot ($ is dot there).
func (w *envWalker) template(name string, dot valueKind) {
	key := fmt.Sprintf("%s\x00%d", name, dot)
	if w.seen[key] {
		return
	}
	w.seen[key] = true
	t := w.t.Lookup(name)
	if t == nil || t.Tree == nil {
		return // executing it fails, so nothing is rendered
	}
	w.list(t.Tree.Root, scope{dot: dot, vars: map[string]valueKind{"$": dot}})
}

func (w *envWalker) list(l *parse.ListNode, s scope) {
	if l == nil {
		return
	}
	for _, n := range l.Nodes {
		w.node(n, s)
	}
}

func (w *envWalker) node(n parse.Node, s scope) {
	switch n := n.(type) {
	case *parse.ActionNode:
		k := w.pipe(n.Pipe, s)
		if len(n.Pipe.Decl) == 0 && k.sensitive() {
			w.whole = true // printed: fmt prints the env map, or the data with it
		}
	case *parse.IfNode:
		// Variables declared in the condition live until {{ end }}.
		inner := s.child(s.dot)
		w.pipe(n.Pipe, inner)
		w.list(n.List, inner)
		w.list(n.ElseList, inner.child(s.dot))
	case *parse.WithNode:
		inner := s.child(s.dot)
		k := w.pipe(n.Pipe, inner)
		inner.dot = k
		w.list(n.List, inner)
		w.list(n.ElseList, inner.child(s.dot))
	case *parse.RangeNode:
		inner := s.child(s.dot)
		k := w.pipe(n.Pipe, inner)
		if k.sensitive() {
			w.whole = true // every key and value of the env in turn
		}
		inner.dot = k // an element: sensitive only if the collection is, and then whole is set
		w.list(n.List, inner)
		w.list(n.ElseList, inner.child(s.dot))
	case *parse.TemplateNode:
		dot := kindOther
		if n.Pipe != nil {
			dot = w.pipe(n.Pipe, s.child(s.dot))
		}
		w.template(n.Name, dot)
	case *parse.ListNode:
		w.list(n, s)
	}
	// Text, comments, break and continue read nothing.
}

// pipe returns the kind of a pipeline's value and declares or assigns its variables in s.
func (w *envWalker) pipe(p *parse.PipeNode, s scope) valueKind {
	if p == nil {
		return kindOther
	}
	k := kindOther
	for i, c := range p.Cmds {
		var final *valueKind
		if i > 0 {
			final = &k
		}
		k = w.command(c, s, final)
	}
	for _, v := range p.Decl {
		name := v.Ident[0]
		if old, ok := s.vars[name]; p.IsAssign && ok && old != k && (old.sensitive() || k.sensitive()) {
			// A variable that holds env in one branch and data in another: give up on
			// following it field by field.
			w.whole = true
		}
		s.vars[name] = k
	}
	return k
}

// command returns the kind of one command's value; final is the value piped into it.
func (w *envWalker) command(c *parse.CommandNode, s scope, final *valueKind) valueKind {
	if len(c.Args) == 0 {
		return kindOther
	}
	if fn, ok := c.Args[0].(*parse.IdentifierNode); ok {
		args := make([]valueKind, 0, len(c.Args))
		for _, a := range c.Args[1:] {
			args = append(args, w.arg(a, s))
		}
		if final != nil {
			args = append(args, *final)
		}
		// index .Env "KEY" reads one key.
		if fn.Ident == "index" && len(c.Args) == 3 && final == nil && args[0] == kindEnv {
			if str, ok := c.Args[2].(*parse.StringNode); ok {
				w.keys[str.Text] = true
				return kindOther
			}
		}
		for _, a := range args {
			if a.sensitive() {
				w.whole = true // a function of the env or of the data may print any of it
			}
		}
		return kindOther
	}
	// An operand alone (a field chain may take arguments: the data has no methods, so
	// they never run, but they are walked all the same).
	k := w.arg(c.Args[0], s)
	for _, a := range c.Args[1:] {
		if w.arg(a, s).sensitive() {
			w.whole = true
		}
	}
	if final != nil && final.sensitive() {
		w.whole = true
	}
	return k
}

// arg returns the kind of one operand.
func (w *envWalker) arg(n parse.Node, s scope) valueKind {
	switch n := n.(type) {
	case *parse.DotNode:
		return s.dot
	case *parse.FieldNode:
		return w.fields(s.dot, n.Ident)
	case *parse.VariableNode:
		return w.fields(s.vars[n.Ident[0]], n.Ident[1:])
	case *parse.ChainNode:
		return w.fields(w.arg(n.Node, s), n.Field)
	case *parse.PipeNode:
		return w.pipe(n, s.child(s.dot))
	}
	// Literals, nil, booleans and function names.
	return kindOther
}

// fields returns the kind of base.f1.f2…, recording env keys read on the way.
func (w *envWalker) fields(base valueKind, idents []string) valueKind {
	k := base
	for _, id := range idents {
		switch k {
		case kindRoot:
			if id == "Env" {
				k = kindEnv
			} else {
				k = kindOther // Node, Cluster, VIP: facts, no env
			}
		case kindEnv:
			w.keys[id] = true
			k = kindOther
		default:
			return kindOther
		}
	}
	return k
}
