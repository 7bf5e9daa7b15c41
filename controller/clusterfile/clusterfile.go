// Package clusterfile loads and validates a Clusterfile: the desired state of one cluster
// (image, hosts and their roles, env, VIP, rollout options) plus Config documents.
//
// A Clusterfile is YAML and may hold several documents separated by "---": exactly one
// `kind: Cluster` and any number of `kind: Config`.
//
//	apiVersion: flotilla.dev/v1
//	kind: Cluster
//	metadata: {name: prod-etcd}
//	spec:
//	  image: registry.local/etcd-cluster:3.4
//	  env: {ETCD_TOKEN: prod-1}          # overrides the image's ENV defaults
//	  vip: 10.103.97.2
//	  hosts:
//	    - names: [10.0.0.11-13, edge-1]  # agent names, IPs, ranges 10.0.0.11-10.0.0.19 or 10.0.0.11-19
//	      roles: [master]
//	    - selector: {rack: r7}           # or agents whose labels all match
//	      roles: [node]
//	      env: {DATA_DISK: /dev/sdb}     # overrides spec.env on these hosts
//	  rollout:
//	    maxUnavailable: 1                # or "25%"
//	    parallelism: {master: 1, node: 5}  # or a single number for every phase
//	    onFailure: halt                  # or continue
//	    stepTimeout: 10m
//	    retries: 2
//	  bandwidth: {upload: 100Mbit, download: 1Gbit}   # per node, for layer distribution
//	  infra:                             # machines created by a provider (see Infra)
//	    provider: sandbox
//	    roles: {master: {count: 3}, node: {count: 2, cpus: 1, memory: 512Mi}}
//
// A Config document overrides one file on the nodes, as Sealer's Config does:
//
//	apiVersion: flotilla.dev/v1
//	kind: Config
//	metadata: {name: etcd-tuning}
//	spec:
//	  path: /etc/etcd/etcd.conf.yml   # absolute path on the node
//	  content: |                      # the whole new content
//	    heartbeat-interval: 200
//	  role: master                    # optional: only hosts with this role (default: every host)
//	  mode: "0600"                    # optional: octal permission bits (default: the template's, else 0644; without group and other bits when a template reads env)
//	  template: true                  # optional: render content like a *.tmpl file (default: false)
//
// If the image has a template at that path, the Config replaces it (keeping its place in
// the image's order); otherwise the file is placed over what the layers put there.
//
// Every error names the file, the line and the field path:
// `Clusterfile:7: spec.hosts[1].roles[0]: unknown role "mastr"`. Roles are checked against
// the image by Cluster.ValidateRoles, since only the image knows its custom roles.
package clusterfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// APIVersion is the only apiVersion this build reads.
const APIVersion = "flotilla.dev/v1"

// Document kinds.
const (
	KindCluster = "Cluster"
	KindConfig  = "Config"
)

// File is a parsed and validated Clusterfile.
type File struct {
	Path    string   // as given to Load, for error messages
	Cluster Cluster  // the one kind: Cluster document
	Configs []Config // kind: Config documents in file order
}

// Cluster is the desired state of one cluster.
type Cluster struct {
	Name      string
	Image     string            // image reference or digest
	Env       map[string]string // overrides the image's ENV defaults
	VIP       string            // virtual IP, empty if none
	Hosts     []Host            // spec.hosts, then one entry per role of spec.infra (Host.Infra)
	Infra     *Infra            // spec.infra, nil if absent
	Rollout   Rollout
	Bandwidth Bandwidth
	Backup    *Backup // spec.backup, nil if absent

	file string // for errors raised after loading (ValidateRoles)
}

// Config overrides one file on the nodes (see the package doc).
type Config struct {
	Name     string
	Path     string // absolute, clean
	Content  string
	Role     string // empty: every host
	Mode     uint32 // 0: keep the template's mode, else 0644
	Template bool   // render Content with the node's template data
	Line     int    // line of the document, for errors
	RoleLine int    // line of spec.role, for errors
}

// nameRe is what a role, cluster or config name may look like.
var nameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// roleRe is what a role may look like (the Kubefile's ON <role>).
var roleRe = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// envKeyRe is a POSIX environment variable name.
var envKeyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Load reads and validates the Clusterfile at path.
func Load(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read Clusterfile: %w", err)
	}
	return Parse(path, b)
}

// Parse validates a Clusterfile's bytes; name is used in error messages.
func Parse(name string, data []byte) (*File, error) {
	p := &parser{file: name}
	f := &File{Path: name}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var clusters int
	for i := 0; ; i++ {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			continue // an empty document between "---" lines
		}
		kind := p.docKind(root, i)
		switch kind {
		case KindCluster:
			clusters++
			if clusters > 1 {
				p.errf(root, "", "a second kind: Cluster document (document %d): one Clusterfile describes one cluster", i+1)
				continue
			}
			f.Cluster = p.cluster(root)
		case KindConfig:
			f.Configs = append(f.Configs, p.config(root))
		}
	}
	if clusters == 0 && len(p.errs) == 0 {
		p.errs = append(p.errs, &FieldError{File: name, Msg: "no kind: Cluster document: add one (see `flotilla apply --help`)"})
	}
	f.Cluster.file = name
	p.crossCheck(f)
	if len(p.errs) > 0 {
		return nil, p.err()
	}
	return f, nil
}

// FieldError is one problem in a Clusterfile, located by line and field path.
type FieldError struct {
	File  string
	Line  int    // 0 if unknown
	Field string // e.g. spec.hosts[1].roles[0]
	Msg   string
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Field != "" {
		b.WriteString(": ")
		b.WriteString(e.Field)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in one Clusterfile, in file order.
type Errors []*FieldError

func (es Errors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Unwrap lets errors.As find each FieldError.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// crossCheck validates what spans documents: two Configs may not override the same
// file for the same role.
func (p *parser) crossCheck(f *File) {
	seen := map[string]int{}
	for i, c := range f.Configs {
		key := c.Role + "\x00" + c.Path
		if j, dup := seen[key]; dup {
			p.errs = append(p.errs, &FieldError{File: p.file, Line: c.Line, Field: "spec.path",
				Msg: fmt.Sprintf("Config %q overrides %s again (already overridden by Config %q)", c.Name, c.Path, f.Configs[j].Name)})
			continue
		}
		seen[key] = i
	}
}

// ValidateRoles checks every host's roles and the rollout's per-phase parallelism
// against the roles the image declares (plus master and node, always allowed).
func (c *Cluster) ValidateRoles(imageRoles []string) error {
	allowed := []string{"master", "node"}
	for _, r := range imageRoles {
		if r == "all" || r == "master0" || r == "master" || r == "node" {
			continue
		}
		allowed = append(allowed, r)
	}
	ok := func(r string) bool {
		for _, a := range allowed {
			if a == r {
				return true
			}
		}
		return false
	}
	list := strings.Join(allowed, ", ")
	var errs Errors
	for i, h := range c.Hosts {
		for j, r := range h.Roles {
			field := fmt.Sprintf("spec.hosts[%d].roles[%d]", i, j)
			if h.Infra {
				field = "spec.infra.roles." + r
			}
			switch {
			case r == "master0":
				errs = append(errs, &FieldError{File: c.file, Line: h.Line, Field: field,
					Msg: `role "master0" is not assigned by hand: it is the first master in file order; use "master"`})
			case r == "all":
				errs = append(errs, &FieldError{File: c.file, Line: h.Line, Field: field,
					Msg: `role "all" is implied for every host: remove it`})
			case !ok(r):
				errs = append(errs, &FieldError{File: c.file, Line: h.Line, Field: field,
					Msg: fmt.Sprintf("unknown role %q (the image declares: %s)", r, list)})
			}
		}
	}
	for _, phase := range slices.Sorted(maps.Keys(c.Rollout.Parallelism)) {
		if phase != "" && phase != "master0" && !ok(phase) { // "": one number for every phase
			errs = append(errs, &FieldError{File: c.file, Field: "spec.rollout.parallelism." + phase,
				Msg: fmt.Sprintf("unknown phase %q (phases: master0, %s)", phase, list)})
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// File returns the path the Cluster was loaded from.
func (c *Cluster) File() string { return c.file }

// SetFile sets the path used in later error messages (for Clusters built in code).
func (c *Cluster) SetFile(name string) { c.file = name }

func cleanAbs(p string) (string, bool) {
	if !strings.HasPrefix(p, "/") {
		return "", false
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return "", false
		}
	}
	return filepath.Clean(p), true
}
