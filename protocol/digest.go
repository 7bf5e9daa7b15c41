package protocol

import (
	"fmt"
	"strings"
)

// Digest is a content digest as OCI writes it: "sha256:" and 64 lower-case hex
// digits. Layers, blobs, images, steps and files are named by one.
type Digest string

// ParseDigest checks that s is a sha256 digest in canonical form.
func ParseDigest(s string) (Digest, error) {
	hex, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", fmt.Errorf("digest %q: want sha256: and 64 lower-case hex digits", s)
	}
	return Digest(s), nil
}

// Hex is the digest without its algorithm.
func (d Digest) Hex() string { _, h, _ := strings.Cut(string(d), ":"); return h }

// Short is how people see a digest: the algorithm and 12 hex digits
// ("sha256:0123456789ab"). What is not a digest is returned unchanged.
func (d Digest) Short() string {
	algo, hex, ok := strings.Cut(string(d), ":")
	if !ok || algo == "" || len(hex) <= 12 || strings.ContainsAny(string(d), "/ ") {
		return string(d)
	}
	return algo + ":" + hex[:12]
}

// ShortDigest is Digest(s).Short(), for the many places that hold digests as strings.
func ShortDigest(s string) string { return Digest(s).Short() }
