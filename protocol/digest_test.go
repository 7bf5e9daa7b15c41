package protocol

import (
	"strings"
	"testing"
)

func TestDigest(t *testing.T) {
	full := "sha256:" + strings.Repeat("ab", 32)
	if _, err := ParseDigest(full); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "sha256:", "sha256:" + strings.Repeat("AB", 32), "sha512:" + strings.Repeat("ab", 32), full + "0", "ab"} {
		if _, err := ParseDigest(bad); err == nil {
			t.Errorf("ParseDigest(%q): no error", bad)
		}
	}
	for in, want := range map[string]string{
		full:                 "sha256:abababababab",
		"sha256:0123":        "sha256:0123",
		"/etc/systemd/x.svc": "/etc/systemd/x.svc",
		"etcd.service":       "etcd.service",
		"":                   "",
	} {
		if got := ShortDigest(in); got != want {
			t.Errorf("ShortDigest(%q) = %q, want %q", in, got, want)
		}
	}
	if Digest(full).Hex() != strings.Repeat("ab", 32) {
		t.Error("Hex")
	}
}
