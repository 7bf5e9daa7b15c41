// Package kubefile parses Kubefiles: Dockerfile syntax plus role-scoped run-time steps.
//
// The parser only checks syntax and arity; variable expansion and file access happen in
// the builder. Every error names file:line and what is wrong.
package kubefile

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Instruction keywords.
const (
	From    = "FROM"
	Arg     = "ARG"
	Env     = "ENV"
	Label   = "LABEL"
	Copy    = "COPY"
	Add     = "ADD"
	Run     = "RUN"
	Image   = "IMAGE"
	Service = "SERVICE"
	Cmd     = "CMD"
	Cleanup = "CLEANUP"
	On      = "ON"
	// Membership and backup (see bundle/README.md, "Members, backup and restore").
	Quorum  = "QUORUM"  // QUORUM <role>: the role's members form a quorum
	Join    = "JOIN"    // ON <role> JOIN cmd: on an existing member, before a new member's steps
	Leave   = "LEAVE"   // ON <role> LEAVE cmd: on a remaining member, after a member left
	Backup  = "BACKUP"  // ON <role> BACKUP cmd: on one healthy member, writes $FLOTILLA_BACKUP
	Restore = "RESTORE" // ON <role> RESTORE cmd: one restore stage on every member of the role
)

// Kubefile is a parsed Kubefile.
type Kubefile struct {
	File         string        // name used in error messages
	Instructions []Instruction // in file order
}

// KeyValue is one NAME=value pair of ARG, ENV or LABEL.
type KeyValue struct {
	Key   string
	Value string
	Set   bool // false for `ARG NAME` without a default
}

// Instruction is one logical line of a Kubefile.
type Instruction struct {
	Line     int    // 1-based line where the instruction starts
	Role     string // role of an `ON <role> …` instruction; empty otherwise
	Command  string // upper-case keyword (From, Copy, Run, …); for ON, the inner keyword
	Original string // the instruction as written, continuations joined, comment stripped
	// Args depends on Command: FROM [image]; COPY/ADD sources… then destination;
	// RUN/CMD/CLEANUP/JOIN/LEAVE/BACKUP/RESTORE [shell command]; QUORUM [role]; SERVICE [unit]; IMAGE references… and "-f", file
	// pairs (with --from, the one reference).
	Args []string
	// ImageFrom is the PATH of `IMAGE --from PATH REF`: an OCI image layout (directory
	// or tar) in the build context that the image is read from instead of a registry.
	ImageFrom string
	// Pairs holds ARG, ENV and LABEL key/values in order.
	Pairs []KeyValue
	// Chmod is the --chmod value of COPY/ADD as permission bits; HasChmod tells if given.
	Chmod    uint32
	HasChmod bool
}

// RunTime reports whether the instruction runs on the nodes at rollout time.
func (in Instruction) RunTime() bool {
	switch in.Command {
	case Service, Cmd, Cleanup, Join, Leave, Backup, Restore:
		return true
	}
	return in.Role != "" && in.Command == Run
}

// Error is a syntax error at a Kubefile line.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string { return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg) }

var (
	roleRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)
	nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// ValidRole reports whether r is a usable role name: master0, master, node, all or a
// custom lower-case name.
func ValidRole(r string) bool { return roleRE.MatchString(r) }

// maxErrors bounds how many errors one parse reports.
const maxErrors = 10

// Parse reads a Kubefile. file names it in errors. It returns every syntax error found
// (up to ten), joined; each is an *Error.
func Parse(file string, r io.Reader) (*Kubefile, error) {
	lines, err := logicalLines(file, r)
	if err != nil {
		return nil, err
	}
	kf := &Kubefile{File: file}
	var errs []error
	fail := func(line int, format string, a ...any) {
		if len(errs) < maxErrors {
			errs = append(errs, &Error{File: file, Line: line, Msg: fmt.Sprintf(format, a...)})
		}
	}
	fromLine, cmdLine, backupLine := 0, 0, 0
	for _, l := range lines {
		in, msg := parseInstruction(l)
		if msg != "" {
			fail(l.num, "%s", msg)
			continue
		}
		switch {
		case in.Command == From && fromLine != 0:
			fail(l.num, "second FROM (first at line %d): multi-stage builds are not supported", fromLine)
			continue
		case in.Command == From:
			fromLine = l.num
		case in.Command != Arg && fromLine == 0:
			fail(l.num, "%s before FROM: a Kubefile starts with FROM (only ARG may precede it)", in.Command)
		case in.Command == Cmd && cmdLine != 0:
			fail(l.num, "second CMD (first at line %d): a Kubefile has at most one CMD", cmdLine)
			continue
		case in.Command == Cmd:
			cmdLine = l.num
		case in.Command == Backup && backupLine != 0:
			fail(l.num, "second BACKUP (first at line %d): a Kubefile has at most one BACKUP", backupLine)
			continue
		case in.Command == Backup:
			backupLine = l.num
		}
		kf.Instructions = append(kf.Instructions, in)
	}
	if fromLine == 0 && len(errs) == 0 {
		last := 1
		if len(lines) > 0 {
			last = lines[len(lines)-1].num
		}
		fail(last, "no FROM instruction: start with FROM scratch or FROM <cluster image>")
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return kf, nil
}

type line struct {
	num  int
	text string
}

// logicalLines joins continuation lines and drops comments and blank lines.
func logicalLines(file string, r io.Reader) ([]line, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	var out []line
	var cur strings.Builder
	start, n := 0, 0
	for sc.Scan() {
		n++
		raw := strings.TrimRight(sc.Text(), " \t\r")
		trimmed := strings.TrimSpace(raw)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && start != 0) {
			continue // comments and blank lines, also inside a continuation
		}
		if trimmed == "" {
			continue
		}
		raw = stripComment(raw)
		if start == 0 {
			start = n
			raw = strings.TrimLeft(raw, " \t")
		}
		if strings.HasSuffix(raw, `\`) {
			cur.WriteString(strings.TrimSuffix(raw, `\`))
			continue
		}
		cur.WriteString(raw)
		out = append(out, line{num: start, text: strings.TrimSpace(cur.String())})
		cur.Reset()
		start = 0
	}
	if err := sc.Err(); err != nil {
		return nil, &Error{File: file, Line: n + 1, Msg: fmt.Sprintf("read: %v", err)}
	}
	if start != 0 {
		return nil, &Error{File: file, Line: start, Msg: `line continuation ("\") at end of file: the instruction is unfinished`}
	}
	return out, nil
}

// stripComment removes a trailing " # comment" that is outside quotes.
func stripComment(s string) string {
	var quote rune
	prevSpace := false
	for i, c := range s {
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#' && prevSpace:
			return strings.TrimRight(s[:i], " \t")
		}
		prevSpace = c == ' ' || c == '\t'
	}
	return s
}

// parseInstruction parses one logical line; a non-empty message is a syntax error.
func parseInstruction(l line) (Instruction, string) {
	in := Instruction{Line: l.num, Original: l.text}
	kw, rest := splitWord(l.text)
	kwU := strings.ToUpper(kw)
	if kwU == On {
		role, inner := splitWord(rest)
		if role == "" {
			return in, "ON needs a role and an instruction: ON <role> COPY|ADD|RUN|SERVICE|IMAGE|CLEANUP|JOIN|LEAVE|BACKUP|RESTORE …"
		}
		if !ValidRole(role) {
			return in, fmt.Sprintf("invalid role %q: use master0, master, node, all or a lower-case name ([a-z][a-z0-9_-]*)", role)
		}
		in.Role = role
		kw, rest = splitWord(inner)
		kwU = strings.ToUpper(kw)
		switch kwU {
		case Copy, Add, Run, Service, Image, Cleanup:
		case Join, Leave, Backup, Restore:
			if role == "master0" || role == "all" {
				return in, fmt.Sprintf("ON %s %s: %s runs on the members of a role with several hosts (master, node or a custom role), not %s", role, kwU, kwU, role)
			}
		case "":
			return in, fmt.Sprintf("ON %s needs an instruction: COPY, ADD, RUN, SERVICE, IMAGE, CLEANUP, JOIN, LEAVE, BACKUP or RESTORE", role)
		default:
			return in, fmt.Sprintf("ON %s %s: only COPY, ADD, RUN, SERVICE, IMAGE, CLEANUP, JOIN, LEAVE, BACKUP and RESTORE can be scoped to a role", role, kw)
		}
	}
	in.Command = kwU
	switch kwU {
	case From:
		args := strings.Fields(rest)
		switch {
		case len(args) == 0:
			return in, "FROM needs an image: FROM scratch or FROM <cluster image>"
		case len(args) > 1 && strings.EqualFold(args[1], "as"):
			return in, "FROM … AS: multi-stage builds are not supported"
		case len(args) > 1:
			return in, fmt.Sprintf("FROM takes one image, got %d words", len(args))
		case strings.HasPrefix(args[0], "--"):
			return in, fmt.Sprintf("FROM: flag %s is not supported (use build --platform)", args[0])
		}
		in.Args = args
	case Arg:
		words, msg := splitWords(rest)
		if msg != "" {
			return in, "ARG: " + msg
		}
		if len(words) != 1 {
			return in, "ARG takes one NAME or NAME=default"
		}
		k, v, set := strings.Cut(words[0], "=")
		if !nameRE.MatchString(k) {
			return in, fmt.Sprintf("ARG: invalid name %q (letters, digits, _; not starting with a digit)", k)
		}
		in.Pairs = []KeyValue{{Key: k, Value: v, Set: set}}
	case Env, Label:
		pairs, msg := parsePairs(kwU, rest)
		if msg != "" {
			return in, msg
		}
		in.Pairs = pairs
	case Copy, Add:
		return parseCopy(in, kwU, rest)
	case Quorum:
		args := strings.Fields(rest)
		if len(args) != 1 {
			return in, fmt.Sprintf("QUORUM takes one role, got %d words: QUORUM master", len(args))
		}
		if !ValidRole(args[0]) || args[0] == "master0" || args[0] == "all" {
			return in, fmt.Sprintf("QUORUM %s: a quorum role is master, node or a custom lower-case role ([a-z][a-z0-9_-]*), not master0 or all", args[0])
		}
		in.Args = args
	case Run, Cmd, Cleanup, Join, Leave, Backup, Restore:
		if in.Role == "" && (kwU == Join || kwU == Leave || kwU == Backup || kwU == Restore) {
			return in, fmt.Sprintf("%s needs a role: ON <role> %s <command>", kwU, kwU)
		}
		cmd, msg := shellCommand(rest)
		if msg != "" {
			return in, kwU + ": " + msg
		}
		if cmd == "" {
			return in, kwU + " needs a command"
		}
		in.Args = []string{cmd}
		if kwU == Cmd {
			in.Role = "" // CMD always runs on master0
		}
	case Service:
		if in.Role == "" {
			return in, "SERVICE needs a role: ON <role> SERVICE <unit>"
		}
		args := strings.Fields(rest)
		if len(args) != 1 {
			return in, fmt.Sprintf("ON %s SERVICE takes one unit name, got %d", in.Role, len(args))
		}
		in.Args = args
	case Image:
		args := strings.Fields(rest)
		if len(args) == 0 {
			return in, "IMAGE needs at least one container image reference (or -f FILE, or --from PATH REF)"
		}
		if from, ok := strings.CutPrefix(args[0], "--from="); ok || args[0] == "--from" {
			if !ok {
				if len(args) < 2 || strings.HasPrefix(args[1], "-") {
					return in, "IMAGE --from needs a path: IMAGE --from images/pause.tar registry.k8s.io/pause:3.10"
				}
				from, args = args[1], args[1:]
			}
			if from == "" {
				return in, "IMAGE --from needs a path: IMAGE --from images/pause.tar registry.k8s.io/pause:3.10"
			}
			if len(args) != 2 || strings.HasPrefix(args[1], "-") {
				return in, fmt.Sprintf("IMAGE --from %s takes exactly one container image reference after the path, got %d words: IMAGE --from PATH REF", from, len(args)-1)
			}
			in.ImageFrom, in.Args = from, args[1:]
			break
		}
		for i := 0; i < len(args); i++ {
			switch {
			case args[i] == "-f" && i+1 < len(args):
				i++
			case args[i] == "-f":
				return in, "IMAGE -f needs a file: IMAGE -f images.txt"
			case args[i] == "--from" || strings.HasPrefix(args[i], "--from="):
				return in, "IMAGE --from must come first: IMAGE --from PATH REF (one image per instruction)"
			case strings.HasPrefix(args[i], "-"):
				return in, fmt.Sprintf("IMAGE: flag %s is not supported (only -f FILE, or --from PATH REF)", args[i])
			}
		}
		in.Args = args
	case "":
		return in, "empty instruction"
	case "WORKDIR", "USER", "EXPOSE", "VOLUME", "ENTRYPOINT", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "ONBUILD", "MAINTAINER":
		return in, fmt.Sprintf("%s is a Dockerfile instruction a Kubefile does not support", kwU)
	default:
		return in, fmt.Sprintf("unknown instruction %q: want FROM, ARG, ENV, LABEL, COPY, ADD, RUN, IMAGE, CMD, CLEANUP, QUORUM or ON <role> …", kw)
	}
	return in, ""
}

func parseCopy(in Instruction, kw, rest string) (Instruction, string) {
	words, msg := splitWords(rest)
	if strings.HasPrefix(strings.TrimSpace(rest), "[") {
		words, msg = jsonArray(rest)
	}
	if msg != "" {
		return in, kw + ": " + msg
	}
	for len(words) > 0 && strings.HasPrefix(words[0], "--") {
		flag := words[0]
		words = words[1:]
		name, val, _ := strings.Cut(flag, "=")
		if name != "--chmod" {
			return in, fmt.Sprintf("%s: flag %s is not supported (only --chmod)", kw, name)
		}
		m, err := strconv.ParseUint(val, 8, 32)
		if err != nil || m > 0o7777 {
			return in, fmt.Sprintf("%s: --chmod=%q is not an octal mode like 0755", kw, val)
		}
		in.Chmod, in.HasChmod = uint32(m), true
	}
	if len(words) < 2 {
		return in, fmt.Sprintf("%s needs at least one source and a destination", kw)
	}
	dest := words[len(words)-1]
	for _, src := range words[:len(words)-1] {
		if kw == Add && (strings.Contains(src, "://") || strings.HasPrefix(src, "git@")) {
			return in, fmt.Sprintf("ADD %s: remote sources are not supported; fetch them in a build-time RUN into $FLOTILLA_WORKSPACE", src)
		}
	}
	if len(words) > 2 && !strings.HasSuffix(dest, "/") {
		return in, fmt.Sprintf("%s with several sources needs a directory destination ending in /, got %q", kw, dest)
	}
	if !strings.HasPrefix(dest, "/") && !strings.HasPrefix(dest, "$") {
		return in, fmt.Sprintf("%s destination %q must be an absolute path on the node", kw, dest)
	}
	in.Args = words
	return in, ""
}

// parsePairs reads `K=V K2="V 2"` or the legacy `K V…` form.
func parsePairs(kw, rest string) ([]KeyValue, string) {
	words, msg := splitWords(rest)
	if msg != "" {
		return nil, kw + ": " + msg
	}
	if len(words) == 0 {
		return nil, kw + " needs NAME=value"
	}
	if !strings.Contains(words[0], "=") {
		if kw == Label {
			return nil, fmt.Sprintf("LABEL %s: want key=value", words[0])
		}
		if len(words) < 2 {
			return nil, fmt.Sprintf("ENV %s has no value: want ENV NAME=value", words[0])
		}
		if !nameRE.MatchString(words[0]) {
			return nil, fmt.Sprintf("ENV: invalid name %q", words[0])
		}
		_, v, _ := strings.Cut(strings.TrimSpace(rest), " ")
		return []KeyValue{{Key: words[0], Value: unquote(strings.TrimSpace(v)), Set: true}}, ""
	}
	var out []KeyValue
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			return nil, fmt.Sprintf("%s %s: want key=value", kw, w)
		}
		if kw == Env && !nameRE.MatchString(k) {
			return nil, fmt.Sprintf("ENV: invalid name %q (letters, digits, _; not starting with a digit)", k)
		}
		if kw == Label && k == "" {
			return nil, "LABEL: empty key"
		}
		out = append(out, KeyValue{Key: k, Value: v, Set: true})
	}
	return out, ""
}

// shellCommand returns the command of RUN/CMD: shell form as written, exec (JSON) form
// joined into a quoted shell command.
func shellCommand(rest string) (string, string) {
	rest = strings.TrimSpace(rest)
	if !strings.HasPrefix(rest, "[") {
		return rest, ""
	}
	words, msg := jsonArray(rest)
	if msg != "" {
		return "", msg
	}
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = ShellQuote(w)
	}
	return strings.Join(q, " "), ""
}

func jsonArray(s string) ([]string, string) {
	var words []string
	if err := json.Unmarshal([]byte(strings.TrimSpace(s)), &words); err != nil {
		return nil, fmt.Sprintf("invalid JSON array %s: %v", s, err)
	}
	return words, ""
}

// ShellQuote quotes s for sh when it holds anything but safe characters.
func ShellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// splitWord returns the first whitespace-separated word and the trimmed rest.
func splitWord(s string) (string, string) {
	s = strings.TrimSpace(s)
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimSpace(s[i:])
}

// splitWords splits on whitespace, honouring double and single quotes and backslash
// escapes, and removes the quotes.
func splitWords(s string) ([]string, string) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	escaped := false
	for _, c := range s {
		switch {
		case escaped:
			cur.WriteRune(c)
			escaped = false
		case c == '\\' && quote != '\'':
			escaped, inWord = true, true
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				cur.WriteRune(c)
			}
		case c == '"' || c == '\'':
			quote, inWord = c, true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Sprintf("unterminated %c quote", quote)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, ""
}

func unquote(s string) string {
	if w, msg := splitWords(s); msg == "" && len(w) == 1 {
		return w[0]
	}
	return s
}
