package kubefile

import (
	"fmt"
	"strings"
)

// Expand replaces $NAME, ${NAME}, ${NAME:-default} and ${NAME:+alt} in s with values
// from vars, as Dockerfile does for FROM, COPY, ENV, LABEL and IMAGE. `\$` is a literal $.
// An unset variable expands to the empty string.
func Expand(s string, vars map[string]string) (string, error) {
	if !strings.Contains(s, "$") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) && s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		if c != '$' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		if s[i+1] == '{' {
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return "", fmt.Errorf("unterminated ${ in %q", s)
			}
			expr := s[i+2 : i+end]
			i += end
			name, op, word := expr, "", ""
			if j := strings.Index(expr, ":"); j >= 0 {
				name, op = expr[:j], expr[j:]
				if len(op) < 2 || (op[1] != '-' && op[1] != '+') {
					return "", fmt.Errorf("unsupported substitution ${%s} in %q: use ${NAME}, ${NAME:-default} or ${NAME:+alt}", expr, s)
				}
				op, word = op[:2], op[2:]
			}
			if !nameRE.MatchString(name) {
				return "", fmt.Errorf("invalid variable name ${%s} in %q", expr, s)
			}
			v, ok := vars[name]
			switch op {
			case ":-":
				if !ok || v == "" {
					v = word
				}
			case ":+":
				if ok && v != "" {
					v = word
				} else {
					v = ""
				}
			}
			b.WriteString(v)
			continue
		}
		j := i + 1
		for j < len(s) && (s[j] == '_' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z' || j > i+1 && s[j] >= '0' && s[j] <= '9') {
			j++
		}
		if j == i+1 {
			b.WriteByte('$')
			continue
		}
		b.WriteString(vars[s[i+1:j]])
		i = j - 1
	}
	return b.String(), nil
}
