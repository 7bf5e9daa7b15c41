package mirror

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
)

// HostsTOMLPath is where containerd (config_path = "/etc/containerd/certs.d", the
// default of containerd 2 and of the CRI plugin's registry.config_path) looks for the
// mirror configuration of every registry that has no directory of its own.
const HostsTOMLPath = "etc/containerd/certs.d/_default/hosts.toml"

// HostsTOML renders containerd's hosts.toml that sends pulls and resolves of every
// registry to the mirror at addr (host:port) first. It sets no server, so containerd
// tries the upstream registry itself when the mirror answers 404. Values are
// TOML-quoted; addr must be a host:port.
func HostsTOML(addr string) ([]byte, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("registry mirror address %q: %w (want host:port, e.g. %s)", addr, err, DefaultListen)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return nil, fmt.Errorf("registry mirror address %q: port %q is not 1-65535", addr, port)
	}
	if host == "" || (!nsRE.MatchString(host) && net.ParseIP(host) == nil) {
		return nil, fmt.Errorf("registry mirror address %q: %q is not a host name or IP address", addr, host)
	}
	url := "http://" + net.JoinHostPort(host, port)
	var b strings.Builder
	b.WriteString("# Written by flotilla: pull every registry's images from the node-local registry\n")
	b.WriteString("# mirror first (names and digests unchanged); what it lacks comes from upstream.\n")
	fmt.Fprintf(&b, "[host.%s]\n", tomlQuote(url))
	b.WriteString("  capabilities = [\"pull\", \"resolve\"]\n")
	return []byte(b.String()), nil
}

// WriteHostsTOML writes HostsTOML(addr) to root/etc/containerd/certs.d/_default/hosts.toml
// atomically and returns the path. containerd reads hosts.toml at every pull: no restart.
func WriteHostsTOML(root, addr string) (string, error) {
	b, err := HostsTOML(addr)
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, filepath.FromSlash(HostsTOMLPath))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("write %s: %w", p, err)
	}
	if err := atomicfile.Write(p, b, 0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", p, err)
	}
	return p, nil
}

// tomlQuote returns s as a TOML basic string.
func tomlQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
