package mirror_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/agent/mirror"
)

func TestHostsTOML(t *testing.T) {
	const head = "# Written by flotilla: pull every registry's images from the node-local registry\n# mirror first (names and digests unchanged); what it lacks comes from upstream.\n"
	cases := []struct{ addr, want string }{
		{"127.0.0.1:5050", head + "[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\", \"resolve\"]\n"},
		{"[::1]:5050", head + "[host.\"http://[::1]:5050\"]\n  capabilities = [\"pull\", \"resolve\"]\n"},
		{"mirror.local:80", head + "[host.\"http://mirror.local:80\"]\n  capabilities = [\"pull\", \"resolve\"]\n"},
	}
	for _, c := range cases {
		got, err := mirror.HostsTOML(c.addr)
		if err != nil || string(got) != c.want {
			t.Errorf("%s:\n%s%v\nwant\n%s", c.addr, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "h\"]\n[x:1", "a b:1", "host:port", "-x:1", "\x00:1"} {
		if b, err := mirror.HostsTOML(bad); err == nil {
			t.Errorf("%q rendered:\n%s", bad, b)
		}
	}
	root := t.TempDir()
	p, err := mirror.WriteHostsTOML(root, mirror.DefaultListen)
	if err != nil {
		t.Fatal(err)
	}
	if p != filepath.Join(root, "etc/containerd/certs.d/_default/hosts.toml") {
		t.Errorf("written to %s", p)
	}
	b, _ := os.ReadFile(p)
	if !strings.Contains(string(b), `[host."http://127.0.0.1:5050"]`) {
		t.Errorf("file:\n%s", b)
	}
}
