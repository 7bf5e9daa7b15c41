package sandbox

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const inotifyPath = "/proc/sys/fs/inotify/max_user_instances"

// Cleanup removes everything a fleet of this name left behind (processes,
// cgroups, overlay mounts, netns, links, state dir), for example after a test
// that was killed before it could Close. It does nothing if nothing is left.
func Cleanup(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("fleet name %q: want 1 to 10 of [a-z0-9]", name)
	}
	root := stateRoot()
	bridge := name + "0"
	if b, err := os.ReadFile(filepath.Join(root, name, "fleet.json")); err == nil {
		var o Options
		if json.Unmarshal(b, &o) == nil {
			if o.Bridge != "" {
				bridge = o.Bridge
			}
			if o.StateRoot != "" {
				root = o.StateRoot
			}
		}
	}
	return cleanup(root, name, bridge, slog.Default().With("fleet", name))
}

// cleanup removes what it can and returns the errors that leave the host
// unusable for a new fleet of this name. What cannot be removed but does not
// block a new boot (a netns file of an earlier boot that another mount
// namespace shadows) is logged as a leftover.
func cleanup(root, name, bridge string, log *slog.Logger) error {
	var errs []error
	prefix := name + "-"
	// 1. Processes: every node's cgroup tree, killed at once.
	units, _ := filepath.Glob(filepath.Join(cgroupUnified, prefix+"*"))
	for _, u := range units {
		if err := killCgroup(u); err != nil {
			errs = append(errs, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, u := range units {
		for len(cgroupProcs(u)) > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if pids := cgroupProcs(u); len(pids) > 0 {
			errs = append(errs, fmt.Errorf("cgroup %s: processes %v still alive", u, pids))
		}
	}
	// 2. Cgroups in every hierarchy (systemd inside a node may create some in v1 controllers too).
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	seen := map[string]bool{}
	for _, h := range hierarchies {
		cgs, _ := filepath.Glob(filepath.Join(h, prefix+"*"))
		for _, cg := range cgs {
			if u := filepath.Base(cg); !seen[u] {
				seen[u] = true
				if err := removeNodeCgroups(context.Background(), u, 20*time.Second); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	// 3. nspawn's lock files (named after the node root's device and inode,
	// left behind when a node is killed), then the mounts under the fleet's
	// state dir, deepest first.
	dir := filepath.Join(root, name)
	merged, _ := filepath.Glob(filepath.Join(dir, "nodes", "*", "merged"))
	for _, m := range merged {
		var st unix.Stat_t
		if unix.Stat(m, &st) == nil {
			_ = os.Remove(fmt.Sprintf("/run/systemd/nspawn/locks/inode-%d:%d", st.Dev, st.Ino))
		}
	}
	for _, m := range mountsUnder(dir) {
		if err := unix.Unmount(m, 0); err != nil {
			if err2 := unix.Unmount(m, unix.MNT_DETACH); err2 != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
			}
		}
	}
	// 4. Network namespaces (every boot's directory, then files an older
	// flotilla left in /run/netns) and links.
	for _, left := range removeNetnsTree(filepath.Join(NetnsRoot, name)) {
		log.Warn("leftover network namespace file: it does not block a new boot of this fleet (each boot has its own directory); it goes away with the mount namespace that holds it, or at reboot", "path", left)
	}
	legacy, _ := filepath.Glob(filepath.Join("/run/netns", prefix+"*"))
	for _, p := range legacy {
		if err := removeNetnsFile(p); err != nil {
			log.Warn("leftover network namespace file of an older flotilla in /run/netns", "path", p, "err", err)
		}
	}
	vethRE := regexp.MustCompile("^" + regexp.QuoteMeta(name) + `v[0-9]+$`)
	links, err := listLinks()
	if err != nil {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	for _, l := range links {
		if n := l.Attrs().Name; n == bridge || vethRE.MatchString(n) {
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete link %s: %w", n, err))
			}
		}
	}
	// 5. nspawn's per-machine leftovers, inotify limit, state dir.
	props, _ := filepath.Glob(filepath.Join("/run/systemd/nspawn/propagate", prefix+"*"))
	for _, p := range props {
		_ = os.RemoveAll(p)
	}
	if err := restoreInotify(root, dir); err != nil {
		errs = append(errs, err)
	}
	if len(mountsUnder(dir)) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// removeNetnsTree unmounts every mount at or under dir, also the ones a later
// mount shadowed (each pass uncovers them), then removes dir. It returns the
// paths it could not remove.
func removeNetnsTree(dir string) []string {
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		return nil
	}
	for range 16 {
		ms := mountsUnder(dir)
		if len(ms) == 0 {
			break
		}
		for _, m := range ms {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
	}
	if err := os.RemoveAll(dir); err == nil {
		return nil
	}
	var left []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) == 0 {
		left = []string{dir}
	}
	return left
}

// removeNetnsFile unmounts a netns file (every mount stacked on it) and removes it.
func removeNetnsFile(p string) error {
	for range 8 {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			break
		}
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// listLinks retries a link dump that other processes' link changes interrupted.
func listLinks() ([]netlink.Link, error) {
	var (
		links []netlink.Link
		err   error
	)
	for range 10 {
		links, err = netlink.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return links, err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return links, err
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	fh, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer fh.Close()
	var out []string
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Past about 20 nodes, systemd inside the nodes runs out of inotify instances
// (HOSTS.md); raise the limit and remember the old value for Close.
const inotifyWanted = 8192

func raiseInotify(dir string, nodes int) error {
	if nodes < 16 {
		return nil
	}
	cur, err := readInt(inotifyPath)
	if err != nil || cur >= inotifyWanted {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "inotify.orig"), []byte(strconv.Itoa(cur)), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(inotifyPath, []byte(strconv.Itoa(inotifyWanted)), 0o644); err != nil {
		return fmt.Errorf("raise fs.inotify.max_user_instances to %d for %d nodes: %w", inotifyWanted, nodes, err)
	}
	return nil
}

// restoreInotify puts back the limit this fleet raised, unless another fleet
// that also needed it is still up.
func restoreInotify(root, dir string) error {
	orig, err := readInt(filepath.Join(dir, "inotify.orig"))
	if err != nil {
		return nil
	}
	others, _ := filepath.Glob(filepath.Join(root, "*", "inotify.orig"))
	for _, o := range others {
		if filepath.Dir(o) != dir {
			return nil
		}
	}
	if cur, _ := readInt(inotifyPath); cur != inotifyWanted {
		return nil // someone else changed it since: leave theirs
	}
	if err := os.WriteFile(inotifyPath, []byte(strconv.Itoa(orig)), 0o644); err != nil {
		return fmt.Errorf("restore fs.inotify.max_user_instances to %d: %w", orig, err)
	}
	return nil
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
