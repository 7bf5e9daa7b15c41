package mirror_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-dev/flotilla/agent/mirror"
)

func TestHostsTOML(t *testing.T) {
	const head = "# Written by flotilla: pull every registry's images from the node-local registry\n# mirror first (names and digests unchanged); what it lacks comes from upstream.\n" +
		"# The mirror proves itself with a certificate of the agent's own CA, trusted here\n# for the mirror alone; a process that takes its address gets no pull.\n"
	const tail = "  capabilities = [\"pull\", \"resolve\"]\n  ca = \"flotilla-mirror-ca.crt\"\n"
	cases := []struct{ addr, want string }{
		{"127.0.0.1:505", head + "[host.\"https://127.0.0.1:505\"]\n" + tail},
		{"[::1]:505", head + "[host.\"https://[::1]:505\"]\n" + tail},
		{"mirror.local:80", head + "[host.\"https://mirror.local:80\"]\n" + tail},
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
	if _, err := mirror.WriteHostsTOML(t.TempDir(), mirror.DefaultListen, []byte("not a certificate")); err == nil {
		t.Error("hosts.toml written with a CA that is no certificate")
	}
}

// TestWriteAndRemoveHostsTOML: the CA lands beside hosts.toml; only a
// hosts.toml flotilla wrote is reported as ours and removed.
func TestWriteAndRemoveHostsTOML(t *testing.T) {
	id, err := mirror.LoadIdentity(t.TempDir(), mirror.DefaultListen)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	p, err := mirror.WriteHostsTOML(root, mirror.DefaultListen, id.CAPEM())
	if err != nil {
		t.Fatal(err)
	}
	if p != filepath.Join(root, "etc/containerd/certs.d/_default/hosts.toml") {
		t.Errorf("written to %s", p)
	}
	b, _ := os.ReadFile(p)
	if !strings.Contains(string(b), `[host."https://127.0.0.1:505"]`) || !strings.Contains(string(b), `ca = "flotilla-mirror-ca.crt"`) {
		t.Errorf("file:\n%s", b)
	}
	if ca, _ := os.ReadFile(filepath.Join(root, mirror.HostsCAPath)); !bytes.Equal(ca, id.CAPEM()) {
		t.Errorf("CA file %q, want the identity's CA", ca)
	}
	if ours, current := mirror.HostsTOMLCurrent(root, mirror.DefaultListen, id.CAPEM()); !ours || !current {
		t.Errorf("HostsTOMLCurrent = %v %v, want ours and current", ours, current)
	}
	if ours, current := mirror.HostsTOMLCurrent(root, "127.0.0.1:5050", id.CAPEM()); !ours || current {
		t.Errorf("another address: HostsTOMLCurrent = %v %v, want ours, not current", ours, current)
	}
	if removed, err := mirror.RemoveHostsTOML(root); !removed || err != nil {
		t.Errorf("RemoveHostsTOML = %v %v", removed, err)
	}
	for _, f := range []string{mirror.HostsTOMLPath, mirror.HostsCAPath} {
		if _, err := os.Stat(filepath.Join(root, f)); !os.IsNotExist(err) {
			t.Errorf("%s still there: %v", f, err)
		}
	}
	// An operator's own hosts.toml is never touched.
	own := []byte("[host.\"https://registry.example\"]\n  capabilities = [\"pull\"]\n")
	os.WriteFile(p, own, 0o644)
	if ours, _ := mirror.HostsTOMLCurrent(root, mirror.DefaultListen, id.CAPEM()); ours {
		t.Error("an operator's hosts.toml counts as flotilla's")
	}
	if removed, err := mirror.RemoveHostsTOML(root); removed || err != nil {
		t.Errorf("RemoveHostsTOML of an operator's file = %v %v", removed, err)
	}
	if b, _ := os.ReadFile(p); !bytes.Equal(b, own) {
		t.Errorf("operator's hosts.toml changed:\n%s", b)
	}
}

func TestDialAddr(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:505": "127.0.0.1:505",
		"0.0.0.0:505":   "127.0.0.1:505",
		":505":          "127.0.0.1:505",
		"[::]:505":      "[::1]:505",
		"10.0.0.5:505":  "10.0.0.5:505",
	} {
		if got := mirror.DialAddr(in); got != want {
			t.Errorf("DialAddr(%q) = %q, want %q", in, got, want)
		}
	}
}
