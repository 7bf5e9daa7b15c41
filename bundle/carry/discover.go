package carry

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Found is a container image reference found in a build context file.
type Found struct {
	Ref  string // as written
	Name string // normalized (Ref.Name)
	File string // relative to the context
	Line int
}

// Bounds of Discover: files larger than maxScanFile are skipped, and the walk stops
// after maxScanFiles files.
const (
	maxScanFile  = 2 << 20
	maxScanFiles = 20000
)

var (
	imageLineRE = regexp.MustCompile(`^(\s*)(?:-\s+)?["']?image["']?\s*:\s*(.*)$`)
	jsonImageRE = regexp.MustCompile(`"image"\s*:\s*"([^"]*)"`)
	subKeyRE    = regexp.MustCompile(`^(\s*)["']?(registry|repository|tag|digest)["']?\s*:\s*(.*)$`)
)

// Discover scans the YAML, JSON and template files under dir (Kubernetes manifests,
// compose files, Helm charts and values) for `image:` fields and returns each image
// reference once, in file order. Templated values ({{ … }}, $VAR) are skipped: only
// references that are literally there are reported. Helm-style values with
// `image: {registry, repository, tag, digest}` are assembled.
func Discover(dir string) ([]Found, error) {
	var out []Found
	seen := map[string]bool{}
	files := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" || d.Name() == "node_modules" {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !scanned(p) {
			return nil
		}
		if files++; files > maxScanFiles {
			return errStop
		}
		info, err := d.Info()
		if err != nil || info.Size() > maxScanFile {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		found, err := scanFile(p, rel)
		if err != nil {
			return err
		}
		for _, f := range found {
			if !seen[f.Name] {
				seen[f.Name] = true
				out = append(out, f)
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return out, fmt.Errorf("scan %s for image references: %w", dir, err)
	}
	return out, nil
}

var errStop = errors.New("enough files scanned")

func scanned(p string) bool {
	switch strings.ToLower(filepath.Ext(p)) {
	case ".yaml", ".yml", ".json", ".tpl", ".tmpl":
		return true
	}
	return filepath.Base(filepath.Dir(p)) == "templates"
}

func scanFile(path, rel string) ([]Found, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxScanFile)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, nil // a binary or odd file: nothing to find
	}
	var out []Found
	add := func(ref string, line int) {
		r, err := ParseRef(ref)
		if err != nil {
			return
		}
		out = append(out, Found{Ref: ref, Name: r.Name(), File: rel, Line: line})
	}
	for i, l := range lines {
		m := imageLineRE.FindStringSubmatch(l)
		if m == nil {
			for _, jm := range jsonImageRE.FindAllStringSubmatch(l, -1) { // JSON on one line
				if literal(jm[1]) && jm[1] != "" {
					add(jm[1], i+1)
				}
			}
			continue
		}
		if v := scalar(m[2]); v != "" {
			if literal(v) {
				add(v, i+1)
			}
			continue
		}
		if strings.TrimSpace(m[2]) != "" {
			continue // a flow mapping, block scalar or anchor: not a plain reference
		}
		// Helm-style values: image: {registry, repository, tag, digest} on the next lines.
		parts := map[string]string{}
		for _, s := range lines[i+1:] {
			sm := subKeyRE.FindStringSubmatch(s)
			if strings.TrimSpace(s) == "" {
				continue
			}
			if sm == nil || len(sm[1]) <= len(m[1]) {
				if len(leadingSpace(s)) <= len(m[1]) {
					break
				}
				continue
			}
			parts[sm[2]] = scalar(sm[3])
		}
		ref := parts["repository"]
		if ref == "" || !literal(ref) || !literal(parts["registry"]) || !literal(parts["tag"]) || !literal(parts["digest"]) {
			continue
		}
		if parts["registry"] != "" {
			ref = parts["registry"] + "/" + ref
		}
		if parts["tag"] != "" {
			ref += ":" + parts["tag"]
		}
		if parts["digest"] != "" {
			ref += "@" + parts["digest"]
		}
		add(ref, i+1)
	}
	return out, nil
}

func leadingSpace(s string) string { return s[:len(s)-len(strings.TrimLeft(s, " \t"))] }

// scalar returns a plain or quoted scalar value without quotes, a trailing JSON comma
// or a YAML comment; "" for anything else.
func scalar(v string) string {
	v = strings.TrimSpace(v)
	switch {
	case v == "":
		return ""
	case v[0] == '"' || v[0] == '\'':
		if end := strings.IndexByte(v[1:], v[0]); end >= 0 {
			return v[1 : end+1]
		}
		return ""
	case strings.ContainsAny(v[:1], "{[|>&*!"):
		return ""
	}
	if i := strings.Index(v, " #"); i >= 0 {
		v = v[:i]
	}
	return strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), ","))
}

// literal reports whether a value holds no template or variable.
func literal(v string) bool {
	return !strings.Contains(v, "{{") && !strings.Contains(v, "$") && !strings.ContainsAny(v, " \t")
}
