// Package sandbox boots a sandbox fleet of real systemd hosts on one machine:
// systemd-nspawn containers, each in its own network namespace on a bridge,
// booted from a cached Debian rootfs (e2e/rootfs.sh) through a per-node overlay.
//
// Every host-side object carries the fleet's Name as a prefix (bridge, netns,
// veth, cgroups, state dir), so Cleanup(name) can remove the leftovers of a
// crashed run, and Close removes everything a Fleet created. Node supervision
// (the restart loop that turns nspawn's reboot exit code 133 into a new boot)
// runs in a detached shell, so a fleet outlives the process that booted it
// (the people CLI relies on that) and Open can pick it up again by name.
package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"
)

// DefaultStateRoot holds one directory per fleet (overlays, logs, fleet.json).
const DefaultStateRoot = "/var/lib/flotilla-e2e"

// DefaultRootFS is where e2e/rootfs.sh caches the Debian rootfs.
const DefaultRootFS = "/var/cache/flotilla-e2e/rootfs"

// Options describe a fleet. Name and Subnet must not collide with another
// fleet that runs at the same time.
type Options struct {
	// Name prefixes every host-side object: 1 to 10 of [a-z0-9].
	Name string `json:"name"`
	// Subnet (CIDR) of the bridge: the host side gets the first address,
	// node i (0-based) the address after it plus i.
	Subnet string `json:"subnet"`
	// N is the number of nodes.
	N int `json:"n"`
	// NodePrefix names the nodes NodePrefix1..NodePrefixN (default "node").
	NodePrefix string `json:"nodePrefix,omitempty"`
	// Bridge is the bridge's name (default Name+"0").
	Bridge string `json:"bridge,omitempty"`
	// RootFS is the cached rootfs, the overlay's lower dir (default
	// $FLOTILLA_E2E_CACHE/rootfs or DefaultRootFS).
	RootFS string `json:"rootfs,omitempty"`
	// StateRoot holds the fleet's directory (default DefaultStateRoot or $FLOTILLA_E2E_STATE).
	StateRoot string `json:"stateRoot,omitempty"`
	// BindRO and Bind map host paths to paths inside every node.
	BindRO map[string]string `json:"bindRO,omitempty"`
	Bind   map[string]string `json:"bind,omitempty"`
	// Boot names this boot of the fleet (set by New): its netns files live in
	// NetnsRoot/<Name>/<Boot>, so an unremovable leftover of an earlier boot
	// never blocks a new one.
	Boot string `json:"boot,omitempty"`
	// Kubernetes gives every node what kubelet and kube-proxy need on top of
	// running containers (shared/HOSTS.md, "Kubernetes inside nspawn nodes"):
	// all capabilities (--capability=all; kube-proxy and kubelet write sysctls
	// and iptables of the node's own network namespace) and, in the sandbox
	// unit, files holding the values kubelet expects bound over the read-only
	// vm.overcommit_memory, kernel.panic and kernel.panic_on_oops (the kernel is
	// shared, so kubelet must not change them, and cannot).
	Kubernetes bool `json:"kubernetes,omitempty"`
	// BootTimeout bounds the wait for one node's systemd to be running (default 60s).
	BootTimeout time.Duration `json:"bootTimeout,omitempty"`
	// Logger receives progress (default slog.Default()).
	Logger *slog.Logger `json:"-"`
}

// Node is one host of the fleet.
type Node struct {
	Name  string     `json:"name"`
	Index int        `json:"index"`
	IP    netip.Addr `json:"ip"`
	// Tags are the caller's key/value marks on a node added with AddNode
	// (e.g. which cluster it belongs to).
	Tags map[string]string `json:"tags,omitempty"`
	// CPUs and MemoryBytes limit the node (cgroup v1 cpu quota and memory
	// limit on its cgroups); zero means no limit.
	CPUs        float64 `json:"cpus,omitempty"`
	MemoryBytes int64   `json:"memoryBytes,omitempty"`
}

// Fleet is a running sandbox fleet.
type Fleet struct {
	opts   Options
	prefix netip.Prefix
	hostIP netip.Addr
	log    *slog.Logger

	mu    sync.Mutex // guards nodes
	nodes []Node

	closeOnce sync.Once
	closeErr  error
}

var nameRE = regexp.MustCompile(`^[a-z0-9]{1,10}$`)

func (o *Options) setDefaults() error {
	if !nameRE.MatchString(o.Name) {
		return fmt.Errorf("fleet name %q: want 1 to 10 of [a-z0-9] (it prefixes interface names, max 15 chars)", o.Name)
	}
	if o.NodePrefix == "" {
		o.NodePrefix = "node"
	}
	if o.Bridge == "" {
		o.Bridge = o.Name + "0"
	}
	if len(o.Bridge) > 15 {
		return fmt.Errorf("fleet %s: bridge name %q is longer than 15 characters", o.Name, o.Bridge)
	}
	if o.RootFS == "" {
		o.RootFS = DefaultRootFS
		if c := os.Getenv("FLOTILLA_E2E_CACHE"); c != "" {
			o.RootFS = filepath.Join(c, "rootfs")
		}
	}
	if o.StateRoot == "" {
		o.StateRoot = stateRoot()
	}
	if o.BootTimeout == 0 {
		o.BootTimeout = 60 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

func stateRoot() string {
	if s := os.Getenv("FLOTILLA_E2E_STATE"); s != "" {
		return s
	}
	return DefaultStateRoot
}

func newFleet(o Options) (*Fleet, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	p, err := netip.ParsePrefix(o.Subnet)
	if err != nil {
		return nil, fmt.Errorf("fleet %s: subnet %q: %w", o.Name, o.Subnet, err)
	}
	p = p.Masked()
	if !p.Addr().Is4() {
		return nil, fmt.Errorf("fleet %s: subnet %s: only IPv4 is supported", o.Name, p)
	}
	f := &Fleet{opts: o, prefix: p, hostIP: p.Addr().Next(), log: o.Logger.With("fleet", o.Name)}
	ip := f.hostIP
	for i := range o.N {
		ip = ip.Next()
		if !p.Contains(ip) || ip == lastAddr(p) {
			return nil, fmt.Errorf("fleet %s: subnet %s has no room for %d nodes", o.Name, p, o.N)
		}
		f.nodes = append(f.nodes, Node{Name: fmt.Sprintf("%s%d", o.NodePrefix, i+1), Index: i, IP: ip})
	}
	return f, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := 32 - p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= (1 << host) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// New removes leftovers of an earlier fleet with the same name, then creates
// the bridge, one netns and overlay per node, boots all nodes and waits until
// each node's systemd is running. On error everything is removed again.
func New(ctx context.Context, o Options) (*Fleet, error) {
	o.Boot = time.Now().UTC().Format("20060102T150405.000000000")
	f, err := newFleet(o)
	if err != nil {
		return nil, err
	}
	if err := CheckHost(f.opts.RootFS); err != nil {
		return nil, err
	}
	if err := Cleanup(f.opts.Name); err != nil {
		return nil, fmt.Errorf("fleet %s: remove leftovers of an earlier run: %w", f.opts.Name, err)
	}
	start := time.Now()
	if err := f.create(ctx); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	f.log.Info("fleet up", "nodes", len(f.nodes), "subnet", f.prefix, "host", f.hostIP, "took", time.Since(start).Round(time.Millisecond))
	return f, nil
}

func (f *Fleet) create(ctx context.Context) error {
	if err := os.MkdirAll(f.dir(), 0o755); err != nil {
		return err
	}
	if err := f.save(); err != nil {
		return err
	}
	if err := raiseInotify(f.dir(), len(f.nodes)); err != nil {
		return err
	}
	if err := f.makeNetnsDir(); err != nil {
		return err
	}
	if err := f.createBridge(); err != nil {
		return err
	}
	nodes := f.Nodes()
	for _, n := range nodes {
		if err := f.createNodeNet(n); err != nil {
			return err
		}
		if err := f.prepareRoot(n, nil); err != nil {
			return err
		}
	}
	for _, n := range nodes {
		if err := f.launch(n); err != nil {
			return err
		}
	}
	for _, n := range nodes {
		if err := f.WaitRunning(ctx, n.Name); err != nil {
			return err
		}
	}
	return nil
}

// Open returns the fleet that New booted under this name (possibly in another
// process), from its fleet.json.
func Open(name string) (*Fleet, error) {
	path := filepath.Join(stateRoot(), name, "fleet.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("open fleet %s: %w (is it up?)", name, err)
	}
	var sv savedFleet
	if err := json.Unmarshal(b, &sv); err != nil {
		return nil, fmt.Errorf("open fleet %s: %s: %w", name, path, err)
	}
	f, err := newFleet(sv.Options)
	if err != nil {
		return nil, err
	}
	if sv.Nodes != nil {
		f.nodes = sv.Nodes
	}
	return f, nil
}

// savedFleet is fleet.json: the options and the nodes as they are now (nodes
// added and removed one by one change the list New derived from N).
type savedFleet struct {
	Options
	Nodes []Node `json:"nodes"`
}

// save writes fleet.json atomically (callers that change nodes hold the fleet lock).
func (f *Fleet) save() error {
	f.mu.Lock()
	sv := savedFleet{Options: f.opts, Nodes: append([]Node{}, f.nodes...)}
	f.mu.Unlock()
	b, err := json.MarshalIndent(sv, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(f.dir(), ".fleet.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(f.dir(), "fleet.json"))
}

// Close stops every node and removes everything the fleet created. It is
// idempotent and safe to call after a failed New.
func (f *Fleet) Close() error {
	f.closeOnce.Do(func() {
		start := time.Now()
		f.closeErr = cleanup(f.opts.StateRoot, f.opts.Name, f.opts.Bridge, f.log)
		f.log.Info("fleet removed", "took", time.Since(start).Round(time.Millisecond), "err", f.closeErr)
	})
	return f.closeErr
}

// Name is the fleet's name.
func (f *Fleet) Name() string { return f.opts.Name }

// Nodes lists the nodes in index order.
func (f *Fleet) Nodes() []Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Node(nil), f.nodes...)
}

// HostIP is the host side of the bridge: a controller for the fleet listens there.
func (f *Fleet) HostIP() netip.Addr { return f.hostIP }

// Subnet is the bridge's subnet.
func (f *Fleet) Subnet() netip.Prefix { return f.prefix }

// Bridge is the bridge's interface name.
func (f *Fleet) Bridge() string { return f.opts.Bridge }

// IP returns a node's address.
func (f *Fleet) IP(node string) (netip.Addr, error) {
	n, err := f.node(node)
	if err != nil {
		return netip.Addr{}, err
	}
	return n.IP, nil
}

// Root is the node's root filesystem as seen from the host (its merged overlay).
func (f *Fleet) Root(node string) string { return filepath.Join(f.nodeDir(node), "merged") }

// ConsoleLog is the file that collects the node's console output.
func (f *Fleet) ConsoleLog(node string) string { return filepath.Join(f.nodeDir(node), "console.log") }

// DBusSocket is the path of the node's system bus socket, reachable from the host.
func (f *Fleet) DBusSocket(node string) (string, error) {
	pid, err := f.PID(node)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("/proc/%d/root/run/dbus/system_bus_socket", pid), nil
}

func (f *Fleet) node(name string) (Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return Node{}, fmt.Errorf("fleet %s has no node %q", f.opts.Name, name)
}

func (f *Fleet) dir() string                { return filepath.Join(f.opts.StateRoot, f.opts.Name) }
func (f *Fleet) nodeDir(node string) string { return filepath.Join(f.dir(), "nodes", node) }

// unit is the per-node name of host objects: netns, cgroup, nspawn machine.
func (f *Fleet) unit(n Node) string { return f.opts.Name + "-" + n.Name }

// veth is the host side of the node's veth pair.
func (f *Fleet) veth(n Node) string { return fmt.Sprintf("%sv%d", f.opts.Name, n.Index+1) }

// CheckHost says what this machine lacks to run a fleet (root, systemd-nspawn,
// the cached rootfs, cgroup2), or nil. An empty rootfs means the default.
func CheckHost(rootfs string) error {
	if rootfs == "" {
		o := Options{Name: "x"}
		_ = o.setDefaults()
		rootfs = o.RootFS
	}
	if os.Geteuid() != 0 {
		return errors.New("the sandbox fleet needs root (network namespaces, mounts, cgroups)")
	}
	for _, bin := range []string{"/usr/bin/systemd-nspawn", "/usr/bin/nsenter"} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("%s is missing: apt-get install -y systemd-container util-linux", bin)
		}
	}
	if _, err := os.Stat(filepath.Join(rootfs, ".flotilla-e2e-stamp")); err != nil {
		return fmt.Errorf("no cached rootfs at %s: run e2e/rootfs.sh ensure (needs debootstrap)", rootfs)
	}
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err != nil {
		return errors.New("no cgroup2 at /sys/fs/cgroup/unified: the fleet expects the hybrid cgroup layout described in HOSTS.md")
	}
	return nil
}
