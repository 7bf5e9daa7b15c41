package bench

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"golang.org/x/sys/unix"
)

// cpuGroup is a cgroup2 group every process the benchmark starts is born in
// (clone into the group's fd), so the CPU seconds all of them spent (user +
// system, children included: sshd's sessions, scp's ssh) can be read off its
// cpu.stat before and after each run. cgroup2 keeps these base counters in
// every group, with no controller enabled (this host binds cpu to v1).
type cpuGroup struct {
	dir string
	fd  *os.File
}

func newCPUGroup(t *testing.T) *cpuGroup {
	t.Helper()
	dir := filepath.Join("/sys/fs/cgroup/unified", fmt.Sprintf("fltb-bench-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("benchmark cgroup: %v", err)
	}
	fd, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	g := &cpuGroup{dir: dir, fd: fd}
	t.Cleanup(func() {
		fd.Close()
		// Processes are gone by now (each start registered its own stop first).
		// A killed process leaves its cgroup a moment after it is reaped.
		gone := func() bool { err := unix.Rmdir(dir); return err == nil || err != unix.EBUSY }
		if err := poll.Until(context.Background(), 5*time.Second, 100*time.Millisecond, gone); err != nil {
			t.Errorf("cgroup %s: still busy: %v", dir, err)
		}
	})
	return g
}

// adopt makes cmd start inside the group (nil group: unchanged).
func (g *cpuGroup) adopt(cmd *exec.Cmd) {
	if g == nil {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(g.fd.Fd())
}

// seconds is the CPU time (user + system) of every process that ever ran in the group.
func (g *cpuGroup) seconds() float64 {
	if g == nil {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(g.dir, "cpu.stat"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, _ := strconv.ParseFloat(v, 64)
			return us / 1e6
		}
	}
	return 0
}

// cpuProbe is a short CPU-speed probe printed with each table, so tables from
// two days can be compared: MB/s of sha256 over 256 MiB on one core.
func cpuProbe() string {
	buf := make([]byte, 1<<20)
	h := sha256.New()
	start := time.Now()
	for range 256 {
		h.Write(buf)
	}
	return fmt.Sprintf("sha256 %.0f MB/s on one core", 256*1.048576/time.Since(start).Seconds())
}

// cpuModel is the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
