package sandbox

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func (f *Fleet) createBridge() error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: f.opts.Bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("fleet %s: create bridge %s: %w", f.opts.Name, f.opts.Bridge, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: f.hostIP.AsSlice(), Mask: net.CIDRMask(f.prefix.Bits(), 32)}}
	if err := netlink.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("fleet %s: address %s on bridge %s: %w", f.opts.Name, f.hostIP, f.opts.Bridge, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("fleet %s: bring up bridge %s: %w", f.opts.Name, f.opts.Bridge, err)
	}
	return nil
}

// createNodeNet creates the node's netns and a veth pair: the host side on the
// bridge, the other side as eth0 in the netns with the node's IP and a default
// route through the host's bridge address.
func (f *Fleet) createNodeNet(n Node) error {
	nsName := f.NetnsPath(n.Name)
	ns, err := newNetnsAt(nsName)
	if err != nil {
		return fmt.Errorf("node %s: create netns %s: %w", n.Name, nsName, err)
	}
	defer ns.Close()
	br, err := netlink.LinkByName(f.opts.Bridge)
	if err != nil {
		return fmt.Errorf("node %s: bridge %s: %w", n.Name, f.opts.Bridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: f.veth(n), MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("node %s: create veth %s: %w", n.Name, veth.Name, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("node %s: bring up %s: %w", n.Name, veth.Name, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("node %s: netlink in netns %s: %w", n.Name, nsName, err)
	}
	defer h.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("node %s: %s in netns %s: %w", n.Name, name, nsName, err)
		}
		if name == "eth0" {
			addr := &netlink.Addr{IPNet: &net.IPNet{IP: n.IP.AsSlice(), Mask: net.CIDRMask(f.prefix.Bits(), 32)}}
			if err := h.AddrAdd(l, addr); err != nil {
				return fmt.Errorf("node %s: address %s: %w", n.Name, n.IP, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("node %s: bring up %s: %w", n.Name, name, err)
		}
	}
	if err := h.RouteAdd(&netlink.Route{Gw: f.hostIP.AsSlice()}); err != nil {
		return fmt.Errorf("node %s: default route via %s: %w", n.Name, f.hostIP, err)
	}
	return nil
}

// The fleet keeps its nodes' network namespaces as bind mounts of nsfs files
// in a directory of its own, NetnsRoot/<fleet>/<boot>, and not in /run/netns.
//
// Why: `ip netns add` (iproute2; the lvscare and bench tests, or an operator)
// makes /run/netns a recursive bind mount of itself the first time it runs.
// Done while a fleet is up, that copies the fleet's netns mounts onto the new
// bind and shadows the originals: a teardown then unmounts the visible copy,
// and the shadowed original keeps the file busy ("device or resource busy")
// in the host's own mount namespace, where nothing can reach it by path, so
// every later run with the same fleet name failed. A directory nobody else
// remounts avoids that; the boot id in its path keeps a run that still finds
// an unremovable leftover from failing; and the directory is a private mount,
// so no mount made under it propagates anywhere.
const NetnsRoot = "/run/flotilla-e2e"

// netnsDir is where this boot of the fleet keeps its nodes' netns files.
func (f *Fleet) netnsDir() string { return filepath.Join(NetnsRoot, f.opts.Name, f.opts.Boot) }

// NetnsPath is the node's network namespace file (for nsenter --net=PATH).
func (f *Fleet) NetnsPath(node string) string { return filepath.Join(f.netnsDir(), node) }

// makeNetnsDir creates the boot's netns directory as a private bind mount of itself.
func (f *Fleet) makeNetnsDir() error {
	dir := f.netnsDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("fleet %s: %w", f.opts.Name, err)
	}
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("fleet %s: bind %s: %w", f.opts.Name, dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("fleet %s: make %s private: %w", f.opts.Name, dir, err)
	}
	return nil
}

// newNetnsAt creates a network namespace and bind-mounts it on path (as
// `ip netns add` does) without leaving the calling thread in it.
func newNetnsAt(path string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return netns.None(), err
	}
	defer orig.Close()
	ns, err := netns.New()
	if err == nil {
		err = bindNetns(path)
	}
	if serr := netns.Set(orig); serr != nil {
		// The thread is stuck in the new namespace: keep it locked so the
		// runtime discards it when this goroutine ends.
		if ns.IsOpen() {
			ns.Close()
		}
		return netns.None(), errors.Join(err, fmt.Errorf("return to the host netns: %w", serr))
	}
	runtime.UnlockOSThread()
	if err != nil {
		if ns.IsOpen() {
			ns.Close()
		}
		_ = os.Remove(path)
		return netns.None(), err
	}
	return ns, nil
}

// bindNetns pins the calling thread's network namespace on path.
func bindNetns(path string) error {
	fh, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	fh.Close()
	src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
	if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", src, path, err)
	}
	return nil
}

// setLink brings the host side of a node's veth down (partition) or up (heal).
func (f *Fleet) setLink(node string, up bool) error {
	n, err := f.node(node)
	if err != nil {
		return err
	}
	l, err := netlink.LinkByName(f.veth(n))
	if err != nil {
		return fmt.Errorf("node %s: link %s: %w", node, f.veth(n), err)
	}
	if up {
		err = netlink.LinkSetUp(l)
	} else {
		err = netlink.LinkSetDown(l)
	}
	if err != nil {
		return fmt.Errorf("node %s: set %s up=%v: %w", node, f.veth(n), up, err)
	}
	return nil
}

// Partition cuts the node off the bridge (its link goes down); the node keeps running.
func (f *Fleet) Partition(node string) error { return f.setLink(node, false) }

// Heal reconnects a partitioned node.
func (f *Fleet) Heal(node string) error { return f.setLink(node, true) }
