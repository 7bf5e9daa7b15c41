package agent

import (
	"bufio"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"

	"github.com/flotilla-dev/flotilla/protocol"
)

// CollectFacts describes this host.
func CollectFacts(version string, labels map[string]string) protocol.Facts {
	f := protocol.Facts{Arch: runtime.GOARCH, OS: runtime.GOOS, AgentVersion: version, Labels: labels}
	f.Hostname, _ = os.Hostname()
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && !ipn.IP.IsLinkLocalUnicast() {
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
	return f
}
