package clusterfile

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// parser walks yaml nodes by hand so that every error carries a line and a field path
// and unknown fields are refused.
type parser struct {
	file string
	errs Errors
}

func (p *parser) errf(n *yaml.Node, field, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.errs = append(p.errs, &FieldError{File: p.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) err() error {
	if len(p.errs) == 0 {
		return nil
	}
	return p.errs
}

// fields iterates a mapping node; it reports unknown keys and duplicate keys.
func (p *parser) fields(n *yaml.Node, field string, known map[string]func(v *yaml.Node, f string)) {
	if n.Kind != yaml.MappingNode {
		p.errf(n, field, "must be a mapping, not %s", describe(n))
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f := join(field, k.Value)
		if seen[k.Value] {
			p.errf(k, f, "appears twice")
			continue
		}
		seen[k.Value] = true
		fn, ok := known[k.Value]
		if !ok {
			p.errf(k, f, "unknown field (known: %s)", strings.Join(slices.Sorted(maps.Keys(known)), ", "))
			continue
		}
		fn(v, f)
	}
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	if n.Tag == "!!null" {
		return "empty"
	}
	return fmt.Sprintf("%q", n.Value)
}

func (p *parser) str(n *yaml.Node, field string) string {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		p.errf(n, field, "must be a string, not %s", describe(n))
		return ""
	}
	return n.Value
}

func (p *parser) integer(n *yaml.Node, field string, min int) int {
	if n.Kind != yaml.ScalarNode {
		p.errf(n, field, "must be a number, not %s", describe(n))
		return 0
	}
	v, err := strconv.Atoi(n.Value)
	if err != nil {
		p.errf(n, field, "must be a whole number, not %q", n.Value)
		return 0
	}
	if v < min {
		p.errf(n, field, "must be at least %d, not %d", min, v)
		return 0
	}
	return v
}

func (p *parser) boolean(n *yaml.Node, field string) bool {
	if n.Kind == yaml.ScalarNode {
		switch n.Value {
		case "true":
			return true
		case "false":
			return false
		}
	}
	p.errf(n, field, "must be true or false, not %s", describe(n))
	return false
}

// strList accepts a list of strings (or one string, as a list of one).
func (p *parser) strList(n *yaml.Node, field string) []string {
	if n.Kind == yaml.ScalarNode && n.Tag != "!!null" {
		return []string{n.Value}
	}
	if n.Kind != yaml.SequenceNode {
		p.errf(n, field, "must be a list, not %s", describe(n))
		return nil
	}
	out := make([]string, 0, len(n.Content))
	for i, c := range n.Content {
		out = append(out, p.str(c, fmt.Sprintf("%s[%d]", field, i)))
	}
	return out
}

// strMap reads a mapping of scalars; numbers and booleans are kept as written.
func (p *parser) strMap(n *yaml.Node, field string, keyRe func(string) bool, keyWhat string) map[string]string {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		p.errf(n, field, "must be a mapping, not %s", describe(n))
		return nil
	}
	out := map[string]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f := join(field, k.Value)
		if _, dup := out[k.Value]; dup {
			p.errf(k, f, "appears twice")
			continue
		}
		if keyRe != nil && !keyRe(k.Value) {
			p.errf(k, f, "%q is not a valid %s", k.Value, keyWhat)
			continue
		}
		if v.Kind != yaml.ScalarNode {
			p.errf(v, f, "must be a string, not %s", describe(v))
			continue
		}
		if v.Tag == "!!null" {
			out[k.Value] = ""
			continue
		}
		out[k.Value] = v.Value
	}
	return out
}

// docKind checks apiVersion and kind, the two fields every document shares.
func (p *parser) docKind(n *yaml.Node, index int) string {
	if n.Kind != yaml.MappingNode {
		p.errf(n, "", "document %d must be a mapping with apiVersion and kind, not %s", index+1, describe(n))
		return ""
	}
	var api, kind string
	var kindNode *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		switch n.Content[i].Value {
		case "apiVersion":
			api = n.Content[i+1].Value
			if api != APIVersion {
				p.errf(n.Content[i+1], "apiVersion", "unsupported apiVersion %q: use %s", api, APIVersion)
			}
		case "kind":
			kind = n.Content[i+1].Value
			kindNode = n.Content[i+1]
		}
	}
	if api == "" {
		p.errf(n, "apiVersion", "missing: add apiVersion: %s", APIVersion)
	}
	switch {
	case kindNode == nil:
		p.errf(n, "kind", "missing: add kind: %s (or %s)", KindCluster, KindConfig)
	case kind != KindCluster && kind != KindConfig:
		p.errf(kindNode, "kind", "unknown kind %q (known: %s, %s)", kind, KindCluster, KindConfig)
		return ""
	}
	return kind
}

func (p *parser) header(known map[string]func(*yaml.Node, string), name *string, spec func(*yaml.Node, string)) map[string]func(*yaml.Node, string) {
	known["apiVersion"] = func(*yaml.Node, string) {}
	known["kind"] = func(*yaml.Node, string) {}
	known["metadata"] = func(v *yaml.Node, f string) {
		p.fields(v, f, map[string]func(*yaml.Node, string){
			"name": func(v *yaml.Node, f string) {
				*name = p.str(v, f)
				if *name != "" && !nameRe.MatchString(*name) {
					p.errf(v, f, "%q is not a valid name: lower-case letters, digits, '.', '-' and '_', at most 63", *name)
				}
			},
			"labels":      func(v *yaml.Node, f string) { p.strMap(v, f, nil, "") },
			"annotations": func(v *yaml.Node, f string) { p.strMap(v, f, nil, "") },
		})
	}
	known["spec"] = spec
	return known
}

func (p *parser) cluster(n *yaml.Node) Cluster {
	c := Cluster{Rollout: defaultRollout()}
	var sawSpec, sawImage bool
	p.fields(n, "", p.header(map[string]func(*yaml.Node, string){}, &c.Name, func(v *yaml.Node, f string) {
		sawSpec = true
		p.fields(v, f, map[string]func(*yaml.Node, string){
			"image": func(v *yaml.Node, f string) {
				sawImage = true
				c.Image = p.str(v, f)
			},
			"env": func(v *yaml.Node, f string) {
				c.Env = p.strMap(v, f, envKeyRe.MatchString, "environment variable name")
			},
			"vip": func(v *yaml.Node, f string) {
				c.VIP = p.str(v, f)
				if c.VIP != "" {
					if a, err := parseAddr(c.VIP); err != nil {
						p.errf(v, f, "%q is not an IP address", c.VIP)
					} else {
						c.VIP = a.String()
					}
				}
			},
			"hosts":     func(v *yaml.Node, f string) { c.Hosts = p.hosts(v, f) },
			"infra":     func(v *yaml.Node, f string) { c.Infra = p.infra(v, f) },
			"rollout":   func(v *yaml.Node, f string) { c.Rollout = p.rollout(v, f) },
			"bandwidth": func(v *yaml.Node, f string) { c.Bandwidth = p.bandwidth(v, f) },
			"backup":    func(v *yaml.Node, f string) { c.Backup = p.backup(v, f) },
		})
	}))
	if c.Name == "" {
		p.errf(n, "metadata.name", "missing: every cluster needs a name")
	}
	if !sawSpec {
		p.errf(n, "spec", "missing")
		return c
	}
	if !sawImage {
		p.errf(n, "spec.image", "missing: name the cluster image to apply")
	}
	p.addInfraHosts(&c)
	if len(c.Hosts) == 0 && sawSpec {
		if c.Infra != nil {
			p.errf(n, "spec.infra.roles", "no machines: give a role a count above 0, list hosts in spec.hosts, or delete the cluster (flotilla delete)")
		} else {
			p.errf(n, "spec.hosts", "missing: list at least one host (or ask for machines in spec.infra)")
		}
	}
	return c
}

func (p *parser) config(n *yaml.Node) Config {
	c := Config{Line: n.Line}
	var sawPath, sawContent bool
	p.fields(n, "", p.header(map[string]func(*yaml.Node, string){}, &c.Name, func(v *yaml.Node, f string) {
		p.fields(v, f, map[string]func(*yaml.Node, string){
			"path": func(v *yaml.Node, f string) {
				sawPath = true
				raw := p.str(v, f)
				if raw == "" {
					return
				}
				clean, ok := cleanAbs(raw)
				if !ok {
					p.errf(v, f, "%q must be an absolute path without '..'", raw)
					return
				}
				c.Path = clean
			},
			"content": func(v *yaml.Node, f string) {
				sawContent = true
				if v.Kind != yaml.ScalarNode {
					p.errf(v, f, "must be a string, not %s", describe(v))
					return
				}
				c.Content = v.Value
			},
			"role": func(v *yaml.Node, f string) {
				c.Role, c.RoleLine = p.str(v, f), v.Line
				if c.Role != "" && !roleRe.MatchString(c.Role) {
					p.errf(v, f, "%q is not a valid role name", c.Role)
				}
			},
			"mode": func(v *yaml.Node, f string) {
				s := p.str(v, f)
				m, err := strconv.ParseUint(s, 8, 32)
				if err != nil || m > 0o7777 || m == 0 {
					p.errf(v, f, "%q is not an octal file mode like \"0644\"", s)
					return
				}
				c.Mode = uint32(m)
			},
			"template": func(v *yaml.Node, f string) { c.Template = p.boolean(v, f) },
		})
	}))
	if c.Name == "" {
		p.errf(n, "metadata.name", "missing: every Config needs a name")
	}
	if !sawPath {
		p.errf(n, "spec.path", "missing: name the file this Config overrides")
	}
	if !sawContent {
		p.errf(n, "spec.content", "missing (use content: \"\" for an empty file)")
	}
	return c
}
