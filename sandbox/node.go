package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"golang.org/x/sys/unix"
)

const (
	cgroupUnified = "/sys/fs/cgroup/unified"
	cgroupSystemd = "/sys/fs/cgroup/systemd"
	nodePath      = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// supervisor is the detached shell that owns a node: it moves itself into the
// node's cgroups (so nodes do not share one cgroup and collide), then boots
// nspawn again whenever the node reboots (nspawn exits with 133).
const supervisor = `for cg in $CG_DIRS; do
	echo $$ >"$cg/cgroup.procs" || { echo "flotilla-e2e: cannot join cgroup $cg" >&2; exit 97; }
done
while :; do
	"$@"
	rc=$?
	echo "flotilla-e2e: systemd-nspawn exited with $rc at $(date -u +%H:%M:%S)" >&2
	[ "$rc" = 133 ] || exit "$rc"
done`

// prepareRoot gives the node its own identity in the upper dir and mounts the
// overlay, unless it is mounted already (a restart after Kill or Stop).
// userData, if set, is written with the unit that runs it at first boot.
func (f *Fleet) prepareRoot(n Node, userData []byte) error {
	dir := f.nodeDir(n.Name)
	upper, work, merged := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "merged")
	if isOverlay(merged) {
		return nil
	}
	for _, d := range []string{filepath.Join(upper, "etc"), work, merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	_, err := os.Stat(filepath.Join(upper, "etc", "machine-id"))
	fresh := os.IsNotExist(err)
	if fresh {
		// First boot only, as a cloud's user data; written before the
		// machine-id, which marks the upper dir as complete.
		if userData != nil {
			if err := writeUserData(upper, userData); err != nil {
				return fmt.Errorf("node %s: user data: %w", n.Name, err)
			}
		}
		id := make([]byte, 16)
		_, _ = rand.Read(id)
		if err := os.WriteFile(filepath.Join(upper, "etc", "machine-id"), []byte(hex.EncodeToString(id)+"\n"), 0o444); err != nil {
			return fmt.Errorf("node %s: machine-id: %w", n.Name, err)
		}
	}
	var hosts strings.Builder
	hosts.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	for _, o := range f.Nodes() {
		fmt.Fprintf(&hosts, "%s\t%s\n", o.IP, o.Name)
	}
	files := map[string]string{"hostname": n.Name + "\n", "hosts": hosts.String()}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(upper, "etc", name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("node %s: /etc/%s: %w", n.Name, name, err)
		}
	}
	if err := writeSandboxUnit(upper, f.opts.Kubernetes); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", f.opts.RootFS, upper, work)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return fmt.Errorf("node %s: mount overlay on %s: %w", n.Name, merged, err)
	}
	return nil
}

func isOverlay(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.OVERLAYFS_SUPER_MAGIC
}

// launch starts the node's supervisor shell, detached from this process.
func (f *Fleet) launch(n Node) error {
	u := f.unit(n)
	cgs, err := nodeCgroups(u)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	if err := setLimits(u, n.CPUs, n.MemoryBytes); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	args := []string{"-c", supervisor, "sh",
		"/usr/bin/systemd-nspawn", "-q", "-D", f.Root(n.Name), "-b",
		"--network-namespace-path=" + f.NetnsPath(n.Name),
		"--register=no", "--keep-unit", "--console=pipe", "-M", u,
		// What a real root host has: nspawn drops CAP_NET_ADMIN from a
		// container that joins a network namespace made beforehand, and a
		// node's services (lvscare, kube-proxy, CNI) program its own netns.
		capabilities(f.opts.Kubernetes),
		// Container runtimes join a session keyring (runc); nspawn's seccomp
		// filter refuses that by default.
		"--system-call-filter=@keyring",
		// containerd's overlayfs snapshotter cannot stack on the node's
		// overlay root: its state lives on the host's disk.
		"--bind=" + f.containerdDir(n.Name) + ":/var/lib/containerd",
	}
	if err := os.MkdirAll(f.containerdDir(n.Name), 0o700); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	args = append(args, bindArgs("--bind-ro=", f.opts.BindRO)...)
	args = append(args, bindArgs("--bind=", f.opts.Bind)...)
	logf, err := os.OpenFile(f.ConsoleLog(n.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("node %s: console log: %w", n.Name, err)
	}
	defer logf.Close()
	cmd := exec.Command("/bin/sh", args...)
	cmd.Env = []string{nodePath, "CG_DIRS=" + strings.Join(cgs, " ")}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("node %s: start systemd-nspawn: %w", n.Name, err)
	}
	// Reap it if it ends while we live; otherwise init inherits it.
	go func() { _ = cmd.Wait() }()
	return nil
}

// v1Controllers are the cgroup v1 hierarchies a node gets a cgroup of its own
// in, besides systemd's and the unified one. Without them the node's root in
// those hierarchies is the host's, and a container runtime inside the node
// (runc) would create its cgroups on the host (shared/HOSTS.md).
func v1Controllers() []string {
	return []string{"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"}
}

// nodeCgroups creates the node's fresh cgroup in every hierarchy this host
// has and returns their directories; the supervisor joins them all.
func nodeCgroups(u string) ([]string, error) {
	dirs := []string{filepath.Join(cgroupSystemd, u), filepath.Join(cgroupUnified, u)}
	for _, c := range v1Controllers() {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c, "cgroup.procs")); err == nil {
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", c, u))
		}
	}
	for _, cg := range dirs {
		// A fresh cgroup each boot: subgroups of an earlier boot would confuse
		// nspawn's --keep-unit, and this kernel kills processes cloned into a
		// cgroup that was once cgroup.kill'ed (its kill sequence differs).
		_ = removeCgroupTree(cg, true)
		if err := os.MkdirAll(cg, 0o755); err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", cg, err)
		}
		if filepath.Base(filepath.Dir(cg)) == "cpuset" {
			// A new cpuset has no CPUs and no memory nodes: nothing could join it.
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(filepath.Dir(cg), f))
				if err != nil {
					return nil, fmt.Errorf("cgroup %s: %w", cg, err)
				}
				if err := os.WriteFile(filepath.Join(cg, f), b, 0o644); err != nil {
					return nil, fmt.Errorf("cgroup %s: %s: %w", cg, f, err)
				}
			}
		}
	}
	return dirs, nil
}

// containerdDir is the host directory bound to the node's /var/lib/containerd.
func (f *Fleet) containerdDir(node string) string {
	return filepath.Join(f.nodeDir(node), "containerd")
}

func bindArgs(flag string, m map[string]string) []string {
	var out []string
	for host, node := range m {
		out = append(out, flag+host+":"+node)
	}
	sort.Strings(out)
	return out
}

// PID is the host PID of the node's systemd (PID 1 inside the node).
func (f *Fleet) PID(node string) (int, error) {
	n, err := f.node(node)
	if err != nil {
		return 0, err
	}
	for _, pid := range cgroupProcs(filepath.Join(cgroupUnified, f.unit(n))) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if fields := strings.Fields(line); len(fields) >= 3 && fields[0] == "NSpid:" && fields[len(fields)-1] == "1" {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("node %s is not running (no systemd in cgroup %s)", node, f.unit(n))
}

// Running reports whether any process of the node is alive.
func (f *Fleet) Running(node string) bool {
	n, err := f.node(node)
	return err == nil && len(cgroupProcs(filepath.Join(cgroupUnified, f.unit(n)))) > 0
}

// Command returns a command that runs argv inside the node (all its
// namespaces, its root), with a plain PATH.
func (f *Fleet) Command(ctx context.Context, node string, argv ...string) (*exec.Cmd, error) {
	pid, err := f.PID(node)
	if err != nil {
		return nil, err
	}
	n, _ := f.node(node)
	args := append([]string{"-t", fmt.Sprint(pid), "-a", "--"}, argv...)
	cmd := exec.CommandContext(ctx, "/usr/bin/nsenter", args...)
	cmd.Env = []string{nodePath, "LANG=C.UTF-8", "HOME=/root"}
	// Its own process group: a `kill 0` inside the node must not reach the caller.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Born in the node's cgroup, so that Kill and Close end it with the node.
	// The Cancel closure keeps the directory open as long as cmd lives; the
	// os.File closes it when both are collected (Exec closes it right away).
	if cg, err := os.Open(filepath.Join(cgroupUnified, f.unit(n))); err == nil {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cg.Fd())
		cmd.Cancel = func() error {
			_ = cg // referenced to keep it open
			return cmd.Process.Kill()
		}
	}
	return cmd, nil
}

// Exec runs argv inside the node and returns its combined output. A non-zero
// exit is an error that carries the output.
func (f *Fleet) Exec(ctx context.Context, node string, argv ...string) ([]byte, error) {
	cmd, err := f.Command(ctx, node, argv...)
	if err != nil {
		return nil, err
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("node %s: %s: %w: %s", node, strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// WaitRunning waits (at most Options.BootTimeout) until the node's systemd
// says running or degraded.
func (f *Fleet) WaitRunning(ctx context.Context, node string) error {
	ctx, cancel := context.WithTimeout(ctx, f.opts.BootTimeout)
	defer cancel()
	state := "not started"
	for {
		if pid, err := f.PID(node); err == nil {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			out, _ := f.execPID(cctx, pid, "systemctl", "is-system-running")
			ccancel()
			state = strings.TrimSpace(string(out))
			if state == "running" || state == "degraded" {
				return nil
			}
		} else if !f.Running(node) {
			state = "not running"
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: systemd not running after %s (state %q): %w; console: %s",
				node, f.opts.BootTimeout, state, ctx.Err(), tail(f.ConsoleLog(node), 10))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (f *Fleet) execPID(ctx context.Context, pid int, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "/usr/bin/nsenter", append([]string{"-t", fmt.Sprint(pid), "-a", "--"}, argv...)...)
	cmd.Env = []string{nodePath}
	return cmd.CombinedOutput()
}

// Start boots a stopped or killed node and waits until it is running.
func (f *Fleet) Start(ctx context.Context, node string) error {
	n, err := f.node(node)
	if err != nil {
		return err
	}
	if f.Running(node) {
		return fmt.Errorf("node %s is already running", node)
	}
	if err := f.prepareRoot(n, nil); err != nil {
		return err
	}
	if err := f.launch(n); err != nil {
		return err
	}
	return f.WaitRunning(ctx, node)
}

// Stop powers the node off cleanly (systemctl poweroff) and waits until all its
// processes are gone; after 30 s it kills what is left.
func (f *Fleet) Stop(ctx context.Context, node string) error {
	pid, err := f.PID(node)
	if err != nil {
		return err
	}
	_, _ = f.execPID(ctx, pid, "systemctl", "poweroff", "--no-block")
	if f.waitGone(ctx, node, 30*time.Second) == nil {
		return nil
	}
	f.log.Warn("node did not power off in time; killing it", "node", node)
	return f.Kill(node)
}

// Kill is a power cut: every process of the node dies at once (cgroup.kill).
func (f *Fleet) Kill(node string) error {
	n, err := f.node(node)
	if err != nil {
		return err
	}
	if err := killCgroup(filepath.Join(cgroupUnified, f.unit(n))); err != nil {
		return fmt.Errorf("node %s: %w", node, err)
	}
	return f.waitGone(context.Background(), node, 10*time.Second)
}

// Reboot reboots the node from inside (systemctl reboot) and waits until its new
// systemd is running. The node's PID (and D-Bus socket path) change.
func (f *Fleet) Reboot(ctx context.Context, node string) error {
	old, err := f.PID(node)
	if err != nil {
		return err
	}
	_, _ = f.execPID(ctx, old, "systemctl", "reboot", "--no-block")
	deadline := time.Now().Add(f.opts.BootTimeout)
	for {
		if pid, err := f.PID(node); err == nil && pid != old {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: no new boot within %s after reboot; console: %s", node, f.opts.BootTimeout, tail(f.ConsoleLog(node), 10))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: reboot: %w", node, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return f.WaitRunning(ctx, node)
}

func (f *Fleet) waitGone(ctx context.Context, node string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for f.Running(node) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: processes still alive after %s: %w", node, timeout, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// cgroupProcs lists the PIDs in a cgroup and all its descendants.
func cgroupProcs(dir string) []int {
	var pids []int
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, _ := os.ReadFile(path)
		for _, f := range strings.Fields(string(b)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

func killCgroup(dir string) error {
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o200); err != nil {
		// Kernels before 5.14 have no cgroup.kill: signal each process.
		for _, pid := range cgroupProcs(dir) {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		if len(cgroupProcs(dir)) > 0 {
			return fmt.Errorf("kill cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// removeCgroupTree removes a cgroup's descendants, and the cgroup itself when self is set.
func removeCgroupTree(dir string, self bool) error {
	var dirs []string
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && (self || path != dir) {
			dirs = append(dirs, path)
		}
		return nil
	})
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("rmdir %s: %w", dirs[i], err))
		}
	}
	return errors.Join(errs...)
}

// removeNodeCgroups removes the cgroups named unit in every hierarchy,
// descendants first. A killed process no longer shows in the unified tree's
// cgroup.procs, but it keeps its v1 cgroups populated (rmdir: EBUSY) until it
// has been reaped, which for a node with many processes (etcd, apiservers,
// kubelet's pods) comes a moment after the node's PID namespace died: CI saw
// exactly that. So each round kills whatever any hierarchy still lists and
// tries again until timeout. The error names what is left and who holds it.
func removeNodeCgroups(ctx context.Context, unit string, timeout time.Duration) error {
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	var last error
	err := poll.Until(ctx, timeout, 50*time.Millisecond, func() bool {
		var errs []error
		for _, h := range hierarchies {
			dir := filepath.Join(h, unit)
			for _, pid := range cgroupProcs(dir) {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
			if err := removeCgroupTree(dir, true); err != nil {
				errs = append(errs, err)
			}
		}
		last = errors.Join(errs...)
		return last == nil
	})
	if err == nil {
		return nil
	}
	var held []string
	for _, h := range hierarchies {
		for _, pid := range cgroupProcs(filepath.Join(h, unit)) {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			held = append(held, fmt.Sprintf("%d (%s) in %s", pid, strings.TrimSpace(string(comm)), filepath.Base(h)))
		}
	}
	if len(held) > 0 {
		return fmt.Errorf("cgroups of %s still busy after %s, held by %s: %w", unit, timeout, strings.Join(slices.Compact(held), ", "), last)
	}
	return fmt.Errorf("cgroups of %s still busy after %s: %w", unit, timeout, last)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no console log)"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// sandboxUnit is the oneshot that gives a node what a real host has and nspawn
// withholds: its cgroup v1 controllers writable (nspawn mounts them read-only;
// containerd, runc and kubelet create cgroups there) and /dev/kmsg (kubelet
// refuses to start without it). It runs before anything that needs them.
const sandboxUnit = "flotilla-sandbox-host.service"

// sandboxScript is fixed text: no value from outside goes into it.
const sandboxScript = `for d in /sys/fs/cgroup/*/; do
  case "$(stat -f -c %T "$d")" in cgroupfs) mount -o remount,bind,rw "$d" "$d" ;; esac
done
[ -e /dev/kmsg ] || mknod -m 600 /dev/kmsg c 1 11`

// kubernetesScript makes /proc/sys/net writable (nspawn mounts /proc/sys
// read-only also for a node in a network namespace of its own, which the fleet
// makes beforehand; ip_forward, bridge-nf-call-iptables and route_localnet are
// the node's own there) and binds files holding the values kubelet insists on
// over the node's read-only /proc/sys entries of the shared kernel (kubelet
// writes them when they differ). Fixed text, like sandboxScript.
const kubernetesScript = `mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net
mkdir -p /run/flotilla-sandbox
for kv in vm/overcommit_memory=1 kernel/panic=10 kernel/panic_on_oops=1; do
  k=${kv%%=*}; v=${kv#*=}
  [ "$(cat /proc/sys/$k)" = "$v" ] && continue
  f=/run/flotilla-sandbox/$(echo $k | tr / _)
  echo $v >$f
  mount --bind $f /proc/sys/$k
done`

// capabilities is the nspawn flag that sets what the node's processes may do.
func capabilities(kubernetes bool) string {
	if kubernetes {
		return "--capability=all"
	}
	return "--capability=CAP_NET_ADMIN"
}

func writeSandboxUnit(upper string, kubernetes bool) error {
	script := sandboxScript
	if kubernetes {
		script += "\n" + kubernetesScript
	}
	opts := []*unit.UnitOption{
		unit.NewUnitOption("Unit", "Description", "flotilla sandbox: cgroup v1 controllers writable, /dev/kmsg (what a real host has)"),
		unit.NewUnitOption("Unit", "DefaultDependencies", "no"),
		unit.NewUnitOption("Unit", "After", "local-fs.target"),
		unit.NewUnitOption("Unit", "Before", "sysinit.target containerd.service kubelet.service"),
		unit.NewUnitOption("Service", "Type", "oneshot"),
		unit.NewUnitOption("Service", "RemainAfterExit", "yes"),
		unit.NewUnitOption("Service", "ExecStart", "/bin/sh -c "+systemdQuote(script)),
		unit.NewUnitOption("Install", "WantedBy", "sysinit.target"),
	}
	b, err := io.ReadAll(unit.Serialize(opts))
	if err != nil {
		return err
	}
	dir := filepath.Join(upper, "etc", "systemd", "system")
	if err := os.MkdirAll(filepath.Join(dir, "sysinit.target.wants"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, sandboxUnit), b, 0o644); err != nil {
		return err
	}
	link := filepath.Join(dir, "sysinit.target.wants", sandboxUnit)
	_ = os.Remove(link)
	return os.Symlink("/etc/systemd/system/"+sandboxUnit, link)
}

// systemdQuote quotes s as one argument of a unit's Exec line: double quotes,
// with backslash, double quote, newline and systemd's % and $ specifiers escaped.
func systemdQuote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "%", "%%", "$", "$$")
	return `"` + r.Replace(s) + `"`
}
