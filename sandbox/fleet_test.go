package sandbox_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/sandbox"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The fleet package's own tests use 10.77.10.0/26 and names starting "fltef".
const testSubnet = "10.77.10.0/26"

func TestFleetLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	share := t.TempDir()
	if err := os.WriteFile(filepath.Join(share, "hello"), []byte("from the host"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := fleettest.New(t, sandbox.Options{Name: "fltef", Subnet: testSubnet, N: 3, BindRO: map[string]string{share: "/opt/share"}})
	nodes := f.Nodes()
	if len(nodes) != 3 || nodes[0].IP != netip.MustParseAddr("10.77.10.2") || f.HostIP() != netip.MustParseAddr("10.77.10.1") {
		t.Fatalf("unexpected layout: host %s nodes %+v", f.HostIP(), nodes)
	}

	ping := func(node string, to netip.Addr) error {
		_, err := f.Exec(ctx, node, "ping", "-c1", "-W2", to.String())
		return err
	}
	ids := map[string]bool{}
	for _, n := range nodes {
		if err := ping(n.Name, f.HostIP()); err != nil {
			t.Errorf("%s cannot reach the host bridge: %v", n.Name, err)
		}
		for _, o := range nodes {
			if o.Name != n.Name {
				if err := ping(n.Name, o.IP); err != nil {
					t.Errorf("%s cannot reach %s: %v", n.Name, o.Name, err)
				}
			}
		}
		out, err := f.Exec(ctx, n.Name, "sh", "-c", "hostname; cat /etc/machine-id")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Fields(string(out))
		if len(lines) != 2 || lines[0] != n.Name {
			t.Errorf("%s: hostname/machine-id = %q", n.Name, out)
		} else {
			ids[lines[1]] = true
		}
	}
	if len(ids) != 3 {
		t.Errorf("machine-ids are not distinct: %v", ids)
	}
	if out, err := f.Exec(ctx, "node2", "cat", "/opt/share/hello"); err != nil || string(out) != "from the host" {
		t.Errorf("BindRO: %q %v", out, err)
	}
	if _, err := f.Exec(ctx, "node2", "touch", "/opt/share/x"); err == nil {
		t.Error("BindRO mount is writable")
	}
	firstPID, err := f.PID("node1")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("KillStart", func(t *testing.T) {
		// A command started in the node dies with it.
		long, err := f.Command(ctx, "node2", "sleep", "600")
		if err != nil {
			t.Fatal(err)
		}
		if err := long.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- long.Wait() }()
		if err := f.Kill("node2"); err != nil {
			t.Fatal(err)
		}
		if f.Running("node2") {
			t.Fatal("node2 still has processes after Kill")
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("a command running in node2 survived Kill")
		}
		if err := f.Start(ctx, "node2"); err != nil {
			t.Fatal(err)
		}
		if err := ping("node2", f.HostIP()); err != nil {
			t.Errorf("node2 after restart: %v", err)
		}
	})
	t.Run("Reboot", func(t *testing.T) {
		if _, err := f.Exec(ctx, "node3", "sh", "-c", "echo kept >/root/marker"); err != nil {
			t.Fatal(err)
		}
		before, _ := f.PID("node3")
		if err := f.Reboot(ctx, "node3"); err != nil {
			t.Fatal(err)
		}
		after, _ := f.PID("node3")
		if after == before || after == 0 {
			t.Errorf("PID %d -> %d: no new boot", before, after)
		}
		out, err := f.Exec(ctx, "node3", "cat", "/root/marker")
		if err != nil || strings.TrimSpace(string(out)) != "kept" {
			t.Errorf("disk state lost across reboot: %q %v", out, err)
		}
	})
	t.Run("PartitionHeal", func(t *testing.T) {
		if err := f.Partition("node1"); err != nil {
			t.Fatal(err)
		}
		if err := ping("node1", f.HostIP()); err == nil {
			t.Error("partitioned node1 still reaches the host")
		}
		if err := ping("node2", nodes[0].IP); err == nil {
			t.Error("node2 still reaches partitioned node1")
		}
		if err := f.Heal("node1"); err != nil {
			t.Fatal(err)
		}
		var err error
		for range 20 { // the bridge port needs a moment to forward again
			if err = ping("node1", f.HostIP()); err == nil {
				break
			}
		}
		if err != nil {
			t.Errorf("healed node1 cannot reach the host: %v", err)
		}
	})
	t.Run("StopStart", func(t *testing.T) {
		if err := f.Stop(ctx, "node1"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.PID("node1"); err == nil {
			t.Fatal("node1 still has a systemd after Stop")
		}
		if err := f.Start(ctx, "node1"); err != nil {
			t.Fatal(err)
		}
	})

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	assertGone(t, "fltef", "fltef0", firstPID)
}

// A run that crashed before Close leaves a fleet behind; Cleanup by name removes it.
func TestCleanupLeftovers(t *testing.T) {
	fleettest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f, err := sandbox.New(ctx, sandbox.Options{Name: "fltefc", Subnet: "10.77.10.32/28", N: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	pid, err := f.PID("node1")
	if err != nil {
		t.Fatal(err)
	}
	if err := sandbox.Cleanup("fltefc"); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "fltefc", "fltefc0", pid)
}

func assertGone(t *testing.T, name, bridge string, pid int) {
	t.Helper()
	for _, pattern := range []string{
		"/run/netns/" + name + "-*",
		filepath.Join(sandbox.NetnsRoot, name),
		"/sys/fs/cgroup/*/" + name + "-*",
		"/run/systemd/nspawn/propagate/" + name + "-*",
		filepath.Join(sandbox.DefaultStateRoot, name),
	} {
		if m, _ := filepath.Glob(pattern); len(m) > 0 {
			t.Errorf("left behind: %v", m)
		}
	}
	links, err := netlink.LinkList()
	for i := 0; errors.Is(err, netlink.ErrDumpInterrupted) && i < 10; i++ {
		links, err = netlink.LinkList()
	}
	for _, l := range links {
		if n := l.Attrs().Name; n == bridge || strings.HasPrefix(n, name+"v") {
			t.Errorf("link %s left behind", n)
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, dir := range []string{filepath.Join(sandbox.DefaultStateRoot, name), filepath.Join(sandbox.NetnsRoot, name)} {
		if strings.Contains(string(mounts), dir+"/") {
			t.Errorf("mounts left behind under %s", dir)
		}
	}
	if out, err := exec.Command("nft", "list", "tables").CombinedOutput(); err == nil && strings.Contains(string(out), name) {
		t.Errorf("nftables tables left behind: %s", out)
	}
	// The node's PID 1 is reaped by its parent a moment after it dies.
	gone := func() bool { _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); return err != nil }
	if err := poll.Until(context.Background(), 5*time.Second, 50*time.Millisecond, gone); err != nil {
		t.Errorf("node systemd (pid %d) still alive: %v", pid, err)
	}
}

// The root cause of issue 11: `ip netns add` (iproute2, run by other tests or an
// operator while a fleet is up) makes /run/netns a recursive bind mount of itself,
// which shadowed the fleet's netns mounts there, so teardown left files that no
// later run could remove. Do the same to the fleet's own netns directory and to
// /run/netns while a node runs, then check Close still removes everything and a
// new fleet of the same name boots.
func TestTeardownAfterForeignBindMounts(t *testing.T) {
	fleettest.Require(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("iproute2 missing: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	boot := func() *sandbox.Fleet {
		f, err := sandbox.New(ctx, sandbox.Options{Name: "fltefr", Subnet: "10.77.13.0/28", N: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = f.Close() })
		return f
	}
	f := boot()
	pid, err := f.PID("node1")
	if err != nil {
		t.Fatal(err)
	}
	// What iproute2 does on its first `ip netns add`, against the fleet's own
	// directory (the worst case: someone remounts it)...
	dir := filepath.Dir(f.NetnsPath("node1"))
	if out, err := exec.Command("mount", "--rbind", dir, dir).CombinedOutput(); err != nil {
		t.Fatalf("rbind %s: %v: %s", dir, err, out)
	}
	// ...and the real thing, as the lvscare tests do in the same `go test ./...`.
	mountedBefore := isMountPoint("/run/netns")
	probe := fmt.Sprintf("fltefr-probe-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", probe).Run()
		// iproute2 left /run/netns a bind mount of itself: undo that too,
		// unless it was one before or someone else keeps namespaces there.
		if entries, _ := os.ReadDir("/run/netns"); !mountedBefore && len(entries) == 0 {
			_ = unix.Unmount("/run/netns", unix.MNT_DETACH)
		}
	})
	if err := f.Close(); err != nil {
		t.Fatalf("Close after foreign bind mounts: %v", err)
	}
	assertGone(t, "fltefr", "fltefr0", pid)
	f2 := boot()
	if _, err := f2.Exec(ctx, "node1", "true"); err != nil {
		t.Fatalf("second boot of the same fleet: %v", err)
	}
	pid2, _ := f2.PID("node1")
	if err := f2.Close(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, "fltefr", "fltefr0", pid2)
}

func isMountPoint(path string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// A node has what a real root host has: it may program nftables in its own
// network namespace (lvscare, kube-proxy and CNI plugins need it), and run
// containers (cgroups of its own, writable).
func TestNodeIsARealHost(t *testing.T) {
	f := fleettest.New(t, sandbox.Options{Name: "fltefn", Subnet: "10.77.13.16/28", N: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := f.Exec(ctx, "node1", "sh", "-c", "grep CapEff /proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	var eff uint64
	if _, err := fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "CapEff:")), "%x", &eff); err != nil {
		t.Fatalf("parse %q: %v", out, err)
	}
	const capNetAdmin = 12
	if eff&(1<<capNetAdmin) == 0 {
		t.Errorf("node1 lacks CAP_NET_ADMIN: %s", out)
	}
	// What container runtimes and kubelet need (shared/HOSTS.md): writable cgroup v1
	// controllers whose root is the node's own cgroup, not the host's, and /dev/kmsg.
	for _, c := range []string{"memory", "cpuset", "pids", "devices"} {
		probe := fmt.Sprintf("/sys/fs/cgroup/%s/flotilla-probe", c)
		if out, err := f.Exec(ctx, "node1", "sh", "-c", "mkdir "+probe+" && echo $$ > "+probe+"/cgroup.procs && rmdir "+probe+" 2>/dev/null; mkdir -p "+probe); err != nil {
			t.Errorf("%s controller inside node1: %v: %s", c, err, out)
			continue
		}
		host, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", c, "fltefn-node1", "**", "flotilla-probe"))
		direct, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", c, "fltefn-node1", "flotilla-probe"))
		if len(host)+len(direct) == 0 {
			t.Errorf("a cgroup made in node1's %s controller is not under the node's host cgroup", c)
		}
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c, "flotilla-probe")); err == nil {
			t.Errorf("a cgroup made in node1's %s controller landed in the host's root", c)
		}
	}
	if out, err := f.Exec(ctx, "node1", "test", "-c", "/dev/kmsg"); err != nil {
		t.Errorf("node1 has no /dev/kmsg: %v %s", err, out)
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    sandbox.Options
		want string
	}{
		{"bad name", sandbox.Options{Name: "Bad-Name", Subnet: testSubnet, N: 1}, "want 1 to 10"},
		{"long name", sandbox.Options{Name: "abcdefghijk", Subnet: testSubnet, N: 1}, "want 1 to 10"},
		{"bad subnet", sandbox.Options{Name: "x", Subnet: "10.77.10.0", N: 1}, "subnet"},
		{"too many nodes", sandbox.Options{Name: "x", Subnet: "10.77.10.0/29", N: 6}, "no room for 6 nodes"},
		{"ipv6", sandbox.Options{Name: "x", Subnet: "fd00::/64", N: 1}, "IPv4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sandbox.New(context.Background(), tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}

// Past about 20 nodes systemd inside the nodes needs more inotify instances
// than Debian's default 128: the fleet raises the limit and puts it back.
func TestManyNodes(t *testing.T) {
	fleettest.Require(t)
	read := func() int {
		b, err := os.ReadFile("/proc/sys/fs/inotify/max_user_instances")
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return n
	}
	before := read()
	f := fleettest.New(t, sandbox.Options{Name: "fltefm", Subnet: "10.77.10.32/27", N: 25})
	if got := read(); got < 8192 {
		t.Errorf("max_user_instances = %d while 25 nodes run", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := f.Exec(ctx, "node25", "ping", "-c1", "-W2", f.Nodes()[0].IP.String()); err != nil {
		t.Error(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := read(); before < 8192 && got != before {
		t.Errorf("max_user_instances = %d after Close, was %d", got, before)
	}
}

// BenchmarkBoot5 is the demo's fleet: bridge, 5 netns, 5 overlays, 5 nspawn
// boots until systemd is running, then everything removed again.
func BenchmarkBoot5(b *testing.B) {
	fleettest.Require(b)
	for b.Loop() {
		f, err := sandbox.New(context.Background(), sandbox.Options{Name: "fltefb", Subnet: "10.77.10.48/28", N: 5})
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// Closing a fleet whose nodes run containers: kubelet and runc leave
// processes in nested cgroups of every v1 controller (kubepods/…/<container>),
// which stay busy for a moment after the node is killed. Close still removes
// every cgroup of the fleet, in every hierarchy, and says nothing failed.
func TestCloseRemovesNestedCgroups(t *testing.T) {
	fleettest.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, err := sandbox.New(ctx, sandbox.Options{Name: "fltefk", Subnet: "10.77.13.32/28", N: 2})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = f.Close()
		}
	})
	// Like runc with the cgroupfs driver: one process per container, placed in
	// a nested cgroup of each controller, several containers per node.
	const script = `set -e
for n in 1 2 3; do
  sleep infinity </dev/null >/dev/null 2>&1 &
  pid=$!
  for c in cpu,cpuacct blkio memory pids devices cpuset; do
    d=/sys/fs/cgroup/$c/kubepods/besteffort/pod$n/ctr
    [ -d /sys/fs/cgroup/$c ] || continue
    mkdir -p "$d"
    case $c in cpuset)
      for p in /sys/fs/cgroup/cpuset/kubepods /sys/fs/cgroup/cpuset/kubepods/besteffort /sys/fs/cgroup/cpuset/kubepods/besteffort/pod$n "$d"; do
        cat /sys/fs/cgroup/cpuset/cpuset.cpus > "$p/cpuset.cpus"; cat /sys/fs/cgroup/cpuset/cpuset.mems > "$p/cpuset.mems"
      done ;;
    esac
    echo $pid > "$d/cgroup.procs"
  done
done`
	var nested []string
	for _, node := range []string{"node1", "node2"} {
		if out, err := f.Exec(ctx, node, "sh", "-c", script); err != nil {
			t.Fatalf("%s: start processes in nested cgroups: %v: %s", node, err, out)
		}
		found, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", "fltefk-"+node, "**", "kubepods", "besteffort", "pod3", "ctr"))
		direct, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", "fltefk-"+node, "kubepods", "besteffort", "pod3", "ctr"))
		nested = append(nested, found...)
		nested = append(nested, direct...)
	}
	if len(nested) < 2 {
		t.Fatalf("found %d nested container cgroups on the host, want them under both nodes' cgroups: %v", len(nested), nested)
	}
	closed = true
	if err := f.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	left, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", "fltefk-*"))
	if len(left) > 0 {
		t.Errorf("cgroups left after Close: %v", left)
	}
}
