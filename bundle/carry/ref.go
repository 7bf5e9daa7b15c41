// Package carry puts container images inside cluster images: it pulls each image a
// Kubefile's IMAGE names byte for byte (every manifest, index and blob keeps its
// digest) from a registry (Pull) or from an OCI image layout directory or tar
// (PullLayout, for IMAGE --from), both through one verifying walker, lays them out as extra descriptors of the cluster image's OCI index, lists
// them back, walks an image's manifests and blobs for one platform (what a node needs),
// and finds image references in a build context that the Kubefile forgot.
package carry

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// DockerHub is Docker Hub's registry name as containerd spells it (the ns query
// parameter a mirror gets for it).
const DockerHub = "docker.io"

// repoRE is the OCI distribution name grammar for a repository path: lower-case
// components separated by "/", each starting and ending with a letter or digit.
var repoRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)

// Ref is a container image reference normalized the way containerd names it.
type Ref struct {
	Registry string // "docker.io", "registry.local:5000"
	Repo     string // "library/nginx"
	Tag      string // "1.27"; empty for a digest-only reference
	Digest   string // "sha256:…"; empty for a tag reference
}

// ParseRef parses and normalizes a reference: "nginx" is docker.io/library/nginx:latest,
// "nginx:1.27@sha256:…" keeps both the tag and the digest (the digest is what is pulled).
func ParseRef(s string) (Ref, error) {
	r, err := name.ParseReference(s)
	if err != nil {
		return Ref{}, fmt.Errorf("invalid container image reference %q: %w", s, err)
	}
	ctx := r.Context()
	out := Ref{Registry: ctx.RegistryStr(), Repo: ctx.RepositoryStr()}
	if out.Registry == name.DefaultRegistry {
		out.Registry = DockerHub
	}
	if !repoRE.MatchString(out.Repo) || len(out.Repo) > 255 {
		return Ref{}, fmt.Errorf("invalid container image reference %q: repository %q does not match the OCI name grammar", s, out.Repo)
	}
	switch v := r.(type) {
	case name.Tag:
		out.Tag = v.TagStr()
	case name.Digest:
		out.Digest = v.DigestStr()
		if _, err := v1.NewHash(out.Digest); err != nil || !strings.HasPrefix(out.Digest, "sha256:") {
			return Ref{}, fmt.Errorf("invalid container image reference %q: want a sha256 digest", s)
		}
		// name.Digest drops a tag written before the digest; keep it for the mirror.
		base := s[:strings.LastIndex(s, "@")]
		if i := strings.LastIndex(base, ":"); i > strings.LastIndex(base, "/") {
			out.Tag = base[i+1:]
		}
	}
	return out, nil
}

// Name is the normalized reference: registry/repo[:tag][@digest].
func (r Ref) Name() string {
	s := r.Registry + "/" + r.Repo
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}

// Repository is registry/repo.
func (r Ref) Repository() string { return r.Registry + "/" + r.Repo }

// remote is what to ask the registry for: the digest when there is one, else the tag.
func (r Ref) remote(opts ...name.Option) (name.Reference, error) {
	if r.Digest != "" {
		return name.NewDigest(r.Repository()+"@"+r.Digest, opts...)
	}
	return name.NewTag(r.Repository()+":"+r.Tag, opts...)
}
