package agent

import (
	"bufio"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"unicode"
	"unicode/utf8"

	"github.com/flotilla-dev/flotilla/protocol"
)

// CollectFacts describes this host.
func CollectFacts(version string, labels map[string]string) protocol.Facts {
	f := protocol.Facts{Arch: runtime.GOARCH, OS: runtime.GOOS, AgentVersion: version, Labels: labels}
	f.Hostname, _ = os.Hostname()
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			// Only what the controller accepts (protocol.ValidateIP): one odd
			// interface must not get the whole registration refused.
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && !ipn.IP.IsLinkLocalUnicast() &&
				protocol.ValidateIP(ipn.IP.String()) == nil && len(f.IPs) < protocol.MaxIPs {
				f.IPs = append(f.IPs, ipn.IP.String())
			}
		}
	}
	if b, err := os.ReadFile("/etc/machine-id"); err == nil {
		f.MachineID = strings.TrimSpace(string(b))
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var sb strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			sb.WriteByte(byte(c))
		}
		f.Kernel = sb.String()
	}
	if fh, err := os.Open("/etc/os-release"); err == nil {
		defer fh.Close()
		s := bufio.NewScanner(fh)
		for s.Scan() {
			if v, ok := strings.CutPrefix(s.Text(), "PRETTY_NAME="); ok {
				f.OS = runtime.GOOS + " (" + strings.Trim(v, `"`) + ")"
			}
		}
	}
	f.Hostname = printable(f.Hostname, protocol.MaxHostnameLen)
	f.MachineID = printable(f.MachineID, protocol.MaxMachineIDLen)
	f.Kernel = printable(f.Kernel, protocol.MaxFreeTextLen)
	f.OS = printable(f.OS, protocol.MaxFreeTextLen)
	f.AgentVersion = printable(f.AgentVersion, protocol.MaxFreeTextLen)
	return f
}

// printable keeps the printable characters of s, at most max bytes of them,
// as protocol.ValidateFacts wants free-text facts.
func printable(s string, max int) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "") {
		if !unicode.IsPrint(r) {
			continue
		}
		if b.Len()+utf8.RuneLen(r) > max {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}
