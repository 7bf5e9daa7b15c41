package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
)

// HostsTOMLPath is where containerd (config_path = "/etc/containerd/certs.d", the
// default of containerd 2 and of the CRI plugin's registry.config_path) looks for the
// mirror configuration of every registry that has no directory of its own.
const HostsTOMLPath = "etc/containerd/certs.d/_default/hosts.toml"

// HostsCAPath is the copy of the mirror's CA certificate (Identity.CAPEM) beside
// hosts.toml that its ca names (by file name: containerd reads a relative ca from
// the hosts.toml's directory): containerd trusts it for the mirror alone.
const HostsCAPath = "etc/containerd/certs.d/_default/flotilla-mirror-ca.crt"

// hostsHeader starts every hosts.toml flotilla writes: the agent and
// `flotilla agent containerd-mirror` replace or remove only such a file.
const hostsHeader = "# Written by flotilla: pull every registry's images from the node-local registry\n"

// HostsTOML renders containerd's hosts.toml that sends pulls and resolves of every
// registry to the mirror at addr (host:port) first, over HTTPS trusting only the
// mirror's own CA (HostsCAPath): a process that takes the address cannot pose as
// the mirror. It sets no server, so containerd tries the upstream registry itself
// when the mirror answers 404 or cannot be verified. Values are TOML-quoted; addr
// must be a host:port.
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
	url := "https://" + net.JoinHostPort(host, port)
	var b strings.Builder
	b.WriteString(hostsHeader)
	b.WriteString("# mirror first (names and digests unchanged); what it lacks comes from upstream.\n")
	b.WriteString("# The mirror proves itself with a certificate of the agent's own CA, trusted here\n")
	b.WriteString("# for the mirror alone; a process that takes its address gets no pull.\n")
	fmt.Fprintf(&b, "[host.%s]\n", tomlQuote(url))
	b.WriteString("  capabilities = [\"pull\", \"resolve\"]\n")
	// Relative: containerd reads it beside hosts.toml (makeAbsPath, since
	// containerd 1.5), whatever root the node's file system is under.
	fmt.Fprintf(&b, "  ca = %s\n", tomlQuote(path.Base(HostsCAPath)))
	return []byte(b.String()), nil
}

// WriteHostsTOML writes the mirror's CA (caPEM) to root/HostsCAPath and
// HostsTOML(addr) to root/HostsTOMLPath, both atomically, the CA first, and
// returns the hosts.toml path. containerd reads both at every pull: no restart.
func WriteHostsTOML(root, addr string, caPEM []byte) (string, error) {
	b, err := HostsTOML(addr)
	if err != nil {
		return "", err
	}
	if _, err := ClientTLS(caPEM); err != nil {
		return "", err
	}
	p := filepath.Join(root, filepath.FromSlash(HostsTOMLPath))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return "", fmt.Errorf("write %s: %w", p, err)
	}
	if err := atomicfile.Write(filepath.Join(root, filepath.FromSlash(HostsCAPath)), caPEM, 0o644); err != nil {
		return "", err
	}
	if err := atomicfile.Write(p, b, 0o644); err != nil {
		return "", err
	}
	return p, nil
}

// HostsTOMLCurrent reports whether root holds a hosts.toml flotilla wrote
// (ours) and whether it and its CA file are what WriteHostsTOML(root, addr,
// caPEM) would write (current).
func HostsTOMLCurrent(root, addr string, caPEM []byte) (ours, current bool) {
	got, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(HostsTOMLPath)))
	if err != nil || !bytes.HasPrefix(got, []byte(hostsHeader)) {
		return false, false
	}
	want, err := HostsTOML(addr)
	if err != nil || !bytes.Equal(got, want) {
		return true, false
	}
	ca, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(HostsCAPath)))
	return true, err == nil && bytes.Equal(ca, caPEM)
}

// RemoveHostsTOML removes root's hosts.toml and its CA file when flotilla
// wrote them (a hosts.toml of anyone else stays), and reports whether it did.
func RemoveHostsTOML(root string) (bool, error) {
	p := filepath.Join(root, filepath.FromSlash(HostsTOMLPath))
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", p, err)
	}
	if !bytes.HasPrefix(b, []byte(hostsHeader)) {
		return false, nil
	}
	if err := os.Remove(p); err != nil {
		return false, fmt.Errorf("remove %s: %w", p, err)
	}
	ca := filepath.Join(root, filepath.FromSlash(HostsCAPath))
	if err := os.Remove(ca); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return true, fmt.Errorf("remove %s: %w", ca, err)
	}
	return true, nil
}

// CheckServing asks the mirror at addr for /v2/ over TLS trusting caPEM alone,
// as containerd does with HostsTOML: nil only when this node's mirror answers.
func CheckServing(ctx context.Context, addr string, caPEM []byte) error {
	conf, err := ClientTLS(caPEM)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/v2/", nil)
	if err != nil {
		return fmt.Errorf("registry mirror address %q: %w", addr, err)
	}
	tr := &http.Transport{TLSClientConfig: conf, Proxy: nil, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("the registry mirror at %s does not answer with this agent's certificate: %w", addr, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		return fmt.Errorf("the registry mirror at %s answered /v2/ with %s, want 200 and a registry/2.0 header", addr, resp.Status)
	}
	return nil
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

// DialAddr is where a client reaches a mirror listening on listen: the
// listen address, with an unspecified host (0.0.0.0, [::], none) replaced
// by loopback.
func DialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}
