package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NodeSpec is one node to add to a running fleet (AddNode): what a cloud's
// "run instance" call takes.
type NodeSpec struct {
	// Name is the node's host name and the key AddNode is idempotent on:
	// 1 to 50 of [a-z0-9-], starting with a letter or digit.
	Name string
	// UserData is a shell script the node runs as root at its first boot (a
	// systemd unit runs it until it succeeds, then deletes it), like a
	// cloud's user data. It is stored mode 0700 inside the node.
	UserData []byte
	// Tags are kept with the node (Node.Tags) so that callers find their nodes again.
	Tags map[string]string
	// CPUs (cgroup v1 cpu.cfs_quota_us) and MemoryBytes (memory.limit_in_bytes)
	// limit the node; zero means no limit.
	CPUs        float64
	MemoryBytes int64
	// NoWait returns once the node is launched, without waiting for its
	// systemd to be running (as a cloud answers while the instance boots).
	NoWait bool
}

// nodeNameRE bounds a node name so that the nspawn machine name (fleet name,
// '-', node name) stays a valid host name of at most 64 characters.
var nodeNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?$`)

// userDataDir is where a node keeps its user data until it ran once.
const userDataDir = "/var/lib/flotilla-sandbox"

// userDataUnit runs the user data at first boot, in the background (boot does
// not wait for it), again every 2 s until it succeeds.
const userDataUnit = "flotilla-sandbox-userdata.service"

// userDataRun is fixed text: the user data is a file, never part of the command.
const userDataRun = `sh ` + userDataDir + `/user-data && rm -f ` + userDataDir + `/user-data`

// AddNode adds one node to the fleet, boots it and waits until its systemd is
// running (unless spec.NoWait). It is idempotent: a node of that name that exists already is
// completed if an earlier call was interrupted (its network, overlay, boot)
// and returned as it is, with its first spec (tags, limits, user data).
// Concurrent calls, also from other processes, are safe (a lock file
// serialises changes to fleet.json).
func (f *Fleet) AddNode(ctx context.Context, spec NodeSpec) (Node, error) {
	if !nodeNameRE.MatchString(spec.Name) {
		return Node{}, fmt.Errorf("fleet %s: node name %q: want 1 to 50 of [a-z0-9-], not starting or ending with '-'", f.opts.Name, spec.Name)
	}
	if spec.CPUs < 0 || spec.MemoryBytes < 0 {
		return Node{}, fmt.Errorf("fleet %s: node %s: negative limits", f.opts.Name, spec.Name)
	}
	n, err := f.reserve(spec)
	if err != nil {
		return Node{}, err
	}
	if err := f.ensureNodeNet(n); err != nil {
		return n, err
	}
	if err := f.prepareRoot(n, spec.UserData); err != nil {
		return n, err
	}
	if !f.Running(n.Name) {
		if err := f.launch(n); err != nil {
			return n, err
		}
	}
	if spec.NoWait {
		return n, nil
	}
	if err := f.WaitRunning(ctx, n.Name); err != nil {
		return n, err
	}
	return n, nil
}

// reserve records the node in fleet.json (a free index and IP), or returns
// the one recorded under that name.
func (f *Fleet) reserve(spec NodeSpec) (Node, error) {
	unlock, err := f.lock()
	if err != nil {
		return Node{}, err
	}
	defer unlock()
	if err := f.reload(); err != nil {
		return Node{}, err
	}
	if n, err := f.node(spec.Name); err == nil {
		return n, nil
	}
	f.mu.Lock()
	used := map[int]bool{}
	for _, n := range f.nodes {
		used[n.Index] = true
	}
	idx := 0
	for used[idx] {
		idx++
	}
	ip := f.hostIP
	for range idx + 1 {
		ip = ip.Next()
	}
	if !f.prefix.Contains(ip) || ip == lastAddr(f.prefix) {
		f.mu.Unlock()
		return Node{}, fmt.Errorf("fleet %s: subnet %s has no free address for node %s", f.opts.Name, f.prefix, spec.Name)
	}
	if idx >= 9999 {
		f.mu.Unlock()
		return Node{}, fmt.Errorf("fleet %s: too many nodes", f.opts.Name)
	}
	n := Node{Name: spec.Name, Index: idx, IP: ip, Tags: spec.Tags, CPUs: spec.CPUs, MemoryBytes: spec.MemoryBytes}
	f.nodes = append(f.nodes, n)
	f.mu.Unlock()
	if err := f.save(); err != nil {
		return Node{}, fmt.Errorf("fleet %s: record node %s: %w", f.opts.Name, spec.Name, err)
	}
	return n, nil
}

// RemoveNode stops the node and removes everything of it: processes,
// cgroups, overlay, netns, veth, state dir, and its entry in fleet.json (last,
// so an interrupted removal is finished by the next call). Removing a node
// that does not exist is not an error.
func (f *Fleet) RemoveNode(ctx context.Context, name string) error {
	unlock, err := f.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := f.reload(); err != nil {
		return err
	}
	n, err := f.node(name)
	if err != nil {
		return nil // gone already
	}
	u := f.unit(n)
	var errs []error
	if err := killCgroup(filepath.Join(cgroupUnified, u)); err != nil {
		errs = append(errs, err)
	}
	if err := f.waitGone(ctx, name, 10*time.Second); err != nil {
		errs = append(errs, err)
	}
	if err := removeNodeCgroups(ctx, u, 20*time.Second); err != nil {
		errs = append(errs, err)
	}
	merged := f.Root(name)
	var st unix.Stat_t
	if unix.Stat(merged, &st) == nil {
		_ = os.Remove(fmt.Sprintf("/run/systemd/nspawn/locks/inode-%d:%d", st.Dev, st.Ino))
	}
	for _, m := range mountsUnder(f.nodeDir(name)) {
		if err := unix.Unmount(m, 0); err != nil {
			if err2 := unix.Unmount(m, unix.MNT_DETACH); err2 != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
			}
		}
	}
	if err := removeNetnsFile(f.NetnsPath(name)); err != nil {
		errs = append(errs, fmt.Errorf("netns %s: %w", f.NetnsPath(name), err))
	}
	if l, err := netlink.LinkByName(f.veth(n)); err == nil {
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", f.veth(n), err))
		}
	}
	_ = os.RemoveAll(filepath.Join("/run/systemd/nspawn/propagate", u))
	if len(errs) == 0 && len(mountsUnder(f.nodeDir(name))) == 0 {
		if err := os.RemoveAll(f.nodeDir(name)); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("fleet %s: remove node %s: %w", f.opts.Name, name, errors.Join(errs...))
	}
	f.mu.Lock()
	for i, o := range f.nodes {
		if o.Name == name {
			f.nodes = append(f.nodes[:i:i], f.nodes[i+1:]...)
			break
		}
	}
	f.mu.Unlock()
	if err := f.save(); err != nil {
		return fmt.Errorf("fleet %s: forget node %s: %w", f.opts.Name, name, err)
	}
	f.log.Info("node removed", "node", name)
	return nil
}

// ensureNodeNet creates the node's netns and veth, or keeps them when both
// are there (an AddNode again); half of them (an interrupted call) is removed
// and made again.
func (f *Fleet) ensureNodeNet(n Node) error {
	_, linkErr := netlink.LinkByName(f.veth(n))
	if linkErr == nil && isNsfs(f.NetnsPath(n.Name)) {
		return nil
	}
	if linkErr == nil {
		if l, err := netlink.LinkByName(f.veth(n)); err == nil {
			_ = netlink.LinkDel(l)
		}
	}
	if err := removeNetnsFile(f.NetnsPath(n.Name)); err != nil {
		return fmt.Errorf("node %s: remove half-made netns: %w", n.Name, err)
	}
	return f.createNodeNet(n)
}

func isNsfs(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.NSFS_MAGIC
}

// lock takes the fleet's lock file (flock: other processes and other
// goroutines of this one wait).
func (f *Fleet) lock() (func(), error) {
	fh, err := os.OpenFile(filepath.Join(f.dir(), "fleet.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("fleet %s: lock: %w (is it up?)", f.opts.Name, err)
	}
	if err := unix.Flock(int(fh.Fd()), unix.LOCK_EX); err != nil {
		fh.Close()
		return nil, fmt.Errorf("fleet %s: lock: %w", f.opts.Name, err)
	}
	return func() { _ = unix.Flock(int(fh.Fd()), unix.LOCK_UN); fh.Close() }, nil
}

// reload reads the node list from fleet.json (another process may have changed it).
func (f *Fleet) reload() error {
	g, err := Open(f.opts.Name)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.nodes = g.nodes
	f.mu.Unlock()
	return nil
}

// writeUserData stores the script and enables the unit that runs it.
func writeUserData(upper string, script []byte) error {
	dir := filepath.Join(upper, userDataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "user-data"), script, 0o700); err != nil {
		return err
	}
	opts := []*unit.UnitOption{
		unit.NewUnitOption("Unit", "Description", "flotilla sandbox: run the machine's user data once (first boot)"),
		unit.NewUnitOption("Unit", "After", "network.target "+sandboxUnit),
		unit.NewUnitOption("Unit", "ConditionPathExists", userDataDir+"/user-data"),
		unit.NewUnitOption("Unit", "StartLimitIntervalSec", "0"),
		unit.NewUnitOption("Service", "Type", "simple"),
		unit.NewUnitOption("Service", "ExecStart", "/bin/sh -c "+systemdQuote(userDataRun)),
		unit.NewUnitOption("Service", "Restart", "on-failure"),
		unit.NewUnitOption("Service", "RestartSec", "2"),
		unit.NewUnitOption("Install", "WantedBy", "multi-user.target"),
	}
	b, err := io.ReadAll(unit.Serialize(opts))
	if err != nil {
		return err
	}
	sys := filepath.Join(upper, "etc", "systemd", "system")
	if err := os.MkdirAll(filepath.Join(sys, "multi-user.target.wants"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(sys, userDataUnit), b, 0o644); err != nil {
		return err
	}
	link := filepath.Join(sys, "multi-user.target.wants", userDataUnit)
	_ = os.Remove(link)
	return os.Symlink("/etc/systemd/system/"+userDataUnit, link)
}

// setLimits writes the node's CPU and memory limits on its fresh v1 cgroups
// (before the supervisor joins them). Where this host has no such hierarchy,
// a limit that was asked for is an error.
func setLimits(u string, cpus float64, mem int64) error {
	if cpus > 0 {
		dir := filepath.Join("/sys/fs/cgroup/cpu", u)
		const period = 100000
		if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_period_us"), []byte(strconv.Itoa(period)), 0o644); err != nil {
			return fmt.Errorf("cpu limit: %w", err)
		}
		quota := max(int64(cpus*period), 1000)
		if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_quota_us"), []byte(strconv.FormatInt(quota, 10)), 0o644); err != nil {
			return fmt.Errorf("cpu limit: %w", err)
		}
	}
	if mem > 0 {
		dir := filepath.Join("/sys/fs/cgroup/memory", u)
		if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), []byte(strconv.FormatInt(mem, 10)), 0o644); err != nil {
			return fmt.Errorf("memory limit: %w", err)
		}
	}
	return nil
}

// Limits reads back the limits in force on a running node's cgroups: CPUs
// (quota/period, 0 if none) and memory in bytes (0 if none).
func (f *Fleet) Limits(node string) (cpus float64, mem int64, err error) {
	n, err := f.node(node)
	if err != nil {
		return 0, 0, err
	}
	u := f.unit(n)
	read := func(p string) (int64, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return 0, err
		}
		return strconv.ParseInt(string(trimNL(b)), 10, 64)
	}
	q, err := read(filepath.Join("/sys/fs/cgroup/cpu", u, "cpu.cfs_quota_us"))
	if err != nil {
		return 0, 0, err
	}
	p, err := read(filepath.Join("/sys/fs/cgroup/cpu", u, "cpu.cfs_period_us"))
	if err != nil {
		return 0, 0, err
	}
	if q > 0 && p > 0 {
		cpus = float64(q) / float64(p)
	}
	m, err := read(filepath.Join("/sys/fs/cgroup/memory", u, "memory.limit_in_bytes"))
	if err != nil {
		return 0, 0, err
	}
	if m < 1<<60 { // "no limit" is a page-rounded huge number
		mem = m
	}
	return cpus, mem, nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
