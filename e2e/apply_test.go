package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/e2e/e2etest"
	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/flotilla-dev/flotilla/sandbox"
)

// The apply scenarios share one fleet of 5 nodes and one controller (fleet fltea,
// 10.77.10.128/27: host .129, node1..node5 = .130-.134, the etcd VIP .150).
const (
	applyFleet  = "fltea"
	applySubnet = "10.77.10.128/27"
	applyVIP    = "10.77.10.150"
	etcdctl     = "/usr/local/bin/etcdctl"
)

// slowKubefile is a one-step image whose run step marks its start, sleeps, then marks
// its end under /var/lib/flotilla-e2e-slow: long enough to reboot or cut off a node
// while it runs.
const slowKubefile = `FROM scratch
COPY --chmod=0755 slow.sh /usr/local/bin/flotilla-e2e-slow
ON all RUN /usr/local/bin/flotilla-e2e-slow
`

const slowScript = `#!/bin/sh
set -eu
d="${FLOTILLA_ROOT:-}/var/lib/flotilla-e2e-slow"
mkdir -p "$d"
rm -f "$d/done"
date +%s.%N > "$d/started"
echo "slow step: started, sleeping ${SLOW_SECONDS:-8}s"
sleep "${SLOW_SECONDS:-8}"
date +%s.%N > "$d/done"
echo "slow step: done"
`

// brokenKubefile is an image whose only service exits 1 at once.
const brokenKubefile = `FROM scratch
ON all COPY flotilla-e2e-broken.service /etc/systemd/system/flotilla-e2e-broken.service
ON all SERVICE flotilla-e2e-broken.service
`

const brokenUnit = `[Unit]
Description=flotilla e2e: a unit that cannot start
[Service]
Type=exec
ExecStart=/bin/sh -c 'echo "flotilla-e2e-broken: missing /etc/flotilla-e2e-broken.conf, giving up" >&2; exit 1'
[Install]
WantedBy=multi-user.target
`

// crashloopKubefile is an image whose only service fails a moment after it starts,
// and systemd restarts it again and again (as a misconfigured lvscare did).
const crashloopKubefile = `FROM scratch
ON all COPY flotilla-e2e-crashloop.service /etc/systemd/system/flotilla-e2e-crashloop.service
ON all SERVICE flotilla-e2e-crashloop.service
`

const crashloopUnit = `[Unit]
Description=flotilla e2e: a unit that keeps crashing
StartLimitIntervalSec=0
[Service]
Type=exec
ExecStart=/bin/sh -c 'sleep 0.3; echo "flotilla-e2e-crashloop: list nftables tables: operation not permitted" >&2; exit 1'
Restart=always
RestartSec=200ms
[Install]
WantedBy=multi-user.target
`

// TestApply runs examples/etcd and the failure scenarios of issue 5 on real systemd
// nodes joined with the one-liner.
func TestApply(t *testing.T) {
	fleettest.Require(t)
	e2etest.UseStore(t)
	e2etest.BuildImage(t, "../examples/etcd", "e2e/etcd:3.4")
	e2etest.BuildImage(t, e2etest.WriteContext(t, map[string]string{"Kubefile": slowKubefile, "slow.sh": slowScript}), "e2e/slow:1")
	e2etest.BuildImage(t, e2etest.WriteContext(t, map[string]string{"Kubefile": brokenKubefile, "flotilla-e2e-broken.service": brokenUnit}), "e2e/broken:1")
	e2etest.BuildImage(t, e2etest.WriteContext(t, map[string]string{"Kubefile": crashloopKubefile, "flotilla-e2e-crashloop.service": crashloopUnit}), "e2e/crashloop:1")

	start := time.Now()
	env := e2etest.Start(t, sandbox.Options{Name: applyFleet, Subnet: applySubnet, N: 5})
	t.Logf("fleet of 5 booted and joined in %s", time.Since(start).Round(time.Millisecond))
	f, c := env.Fleet, env.Controller
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	clusterfile := func(name, image, hosts string, extra string) string {
		p := filepath.Join(dir, name+".yaml")
		doc := fmt.Sprintf("apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: %s}\nspec:\n  image: %s\n%s  hosts:\n%s", name, image, extra, hosts)
		if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	etcdCF := clusterfile("e2e-etcd", "e2e/etcd:3.4",
		"    - names: [node1, node2, node3]\n      roles: [master]\n    - names: [node4, node5]\n      roles: [node]\n",
		"  vip: "+applyVIP+"\n  rollout: {stepTimeout: 1m}\n")
	run := func(node string, argv ...string) (string, error) {
		out, err := f.Exec(ctx, node, argv...)
		return strings.TrimSpace(string(out)), err
	}

	ok := t.Run("EtcdAcrossMembers", func(t *testing.T) {
		start := time.Now()
		res, progress, err := c.Apply(ctx, etcdCF)
		if err != nil || res == nil || !res.OK {
			t.Fatalf("apply: %v\n%+v\n%s", err, res, progress)
		}
		t.Logf("etcd applied to 3 masters and 2 nodes in %s (health: %s)", time.Since(start).Round(time.Millisecond), res.Health)
		for _, n := range []string{"node1", "node2", "node3", "node4", "node5"} {
			if o := e2etest.Outcome(res, n); o.Status != protocol.NodeOK || o.Ran == 0 {
				t.Errorf("%s: %+v", n, o)
			}
		}
		if !strings.Contains(res.Health, "healthy") {
			t.Errorf("health check output: %q", res.Health)
		}
		value := "e2e-" + time.Now().Format("150405.000")
		if out, err := run("node1", etcdctl, "--endpoints", "http://127.0.0.1:2379", "put", "e2e-key", value); err != nil || out != "OK" {
			t.Fatalf("put on node1: %v %q", err, out)
		}
		for _, n := range []string{"node2", "node3"} {
			if out, err := run(n, etcdctl, "--endpoints", "http://127.0.0.1:2379", "get", "--print-value-only", "e2e-key"); err != nil || out != value {
				t.Errorf("get on %s: %v %q, want %q", n, err, out, value)
			}
		}
		// Through lvscare's VIP from a worker; lvscare needs a health round or two.
		var out string
		var getErr error
		viaVIP := func() bool {
			out, getErr = run("node4", etcdctl, "--dial-timeout", "2s", "--endpoints", "http://"+applyVIP+":2379", "get", "--print-value-only", "e2e-key")
			return getErr == nil && out == value
		}
		if poll.Until(ctx, 20*time.Second, time.Second, viaVIP) != nil {
			j, _ := run("node4", "journalctl", "-u", "flotilla-lvscare", "-n", "20", "--no-pager")
			t.Fatalf("get through the VIP on node4: %v %q\n%s", getErr, out, j)
		}
	})
	if !ok {
		t.FailNow()
	}

	t.Run("ApplyAgainRunsNothing", func(t *testing.T) {
		res, progress, err := c.Apply(ctx, etcdCF)
		if err != nil || res == nil || !res.OK {
			t.Fatalf("apply: %v\n%+v\n%s", err, res, progress)
		}
		for _, o := range res.Nodes {
			if o.Status != protocol.NodeNoop || o.Ran != 0 {
				t.Errorf("second apply did something on %s: %+v", o.Node, o)
			}
		}
		if len(res.Nodes) != 5 {
			t.Errorf("second apply reported %d nodes, want 5", len(res.Nodes))
		}
	})

	// The remaining scenarios touch other nodes and clusters: the partition waits out
	// the controller's unreachable timeout (e2etest.UnreachableTimeout), so the others run meanwhile.
	t.Run("Faults", func(t *testing.T) {
		t.Run("PartitionedNodeReported", func(t *testing.T) {
			t.Parallel()
			cf := clusterfile("e2e-part", "e2e/slow:1", "    - names: [node5]\n      roles: [master]\n", "  env: {SLOW_SECONDS: \"6\"}\n  rollout: {stepTimeout: 1m}\n")
			done := applyAsync(ctx, c, cf)
			waitFile(t, filepath.Join(f.Root("node5"), "var/lib/flotilla-e2e-slow/started"), 30*time.Second)
			if err := f.Partition("node5"); err != nil {
				t.Fatal(err)
			}
			healed := false
			t.Cleanup(func() {
				if !healed {
					_ = f.Heal("node5")
				}
			})
			r := <-done
			o := e2etest.Outcome(r.res, "node5")
			t.Logf("apply with node5 cut off ended after %s: %+v", r.took.Round(time.Second), o)
			if r.err == nil || o.Status != protocol.NodeUnreachable {
				t.Fatalf("want node5 reported %s and a failing apply, got err=%v outcome=%+v\n%s", protocol.NodeUnreachable, r.err, o, r.progress)
			}
			if err := f.Heal("node5"); err != nil {
				t.Fatal(err)
			}
			healed = true
			c.WaitOnline(60*time.Second, "node5")
			res, progress, err := c.Apply(ctx, cf)
			if err != nil || res == nil || !res.OK {
				t.Fatalf("second apply after heal: %v\n%+v\n%s", err, res, progress)
			}
			t.Logf("second apply after heal: %+v", e2etest.Outcome(res, "node5"))
			if _, err := os.Stat(filepath.Join(f.Root("node5"), "var/lib/flotilla-e2e-slow/done")); err != nil {
				t.Errorf("the step never completed on node5: %v", err)
			}
		})
		t.Run("Sequential", func(t *testing.T) {
			t.Parallel()
			t.Run("RebootedNodeCompletes", func(t *testing.T) {
				cf := clusterfile("e2e-reboot", "e2e/slow:1", "    - names: [node4]\n      roles: [master]\n", "  env: {SLOW_SECONDS: \"6\"}\n  rollout: {stepTimeout: 1m}\n")
				done := applyAsync(ctx, c, cf)
				marker := filepath.Join(f.Root("node4"), "var/lib/flotilla-e2e-slow")
				waitFile(t, filepath.Join(marker, "started"), 30*time.Second)
				if err := f.Reboot(ctx, "node4"); err != nil {
					t.Fatal(err)
				}
				r := <-done
				o := e2etest.Outcome(r.res, "node4")
				switch {
				case r.err == nil && r.res != nil && r.res.OK:
					t.Logf("node4 rebooted mid-apply: the same apply completed it after %s (attempts %d)", r.took.Round(time.Second), o.Attempts)
				default:
					t.Logf("node4 rebooted mid-apply: the first apply ended %v (%+v); applying again", r.err, o)
					c.WaitOnline(60*time.Second, "node4")
					res, progress, err := c.Apply(ctx, cf)
					if err != nil || res == nil || !res.OK {
						t.Fatalf("second apply after the reboot: %v\n%+v\n%s\nfirst apply:\n%s", err, res, progress, r.progress)
					}
					t.Logf("node4 rebooted mid-apply: a second apply completed it: %+v", e2etest.Outcome(res, "node4"))
				}
				if _, err := os.Stat(filepath.Join(marker, "done")); err != nil {
					t.Errorf("the step never completed on node4: %v", err)
				}
			})
			t.Run("FailingServiceShowsJournal", func(t *testing.T) {
				cf := clusterfile("e2e-broken", "e2e/broken:1", "    - names: [node3]\n      roles: [master]\n", "  rollout: {stepTimeout: 30s}\n")
				out, _, err := c.CLI(ctx, "apply", "-f", cf)
				if err == nil {
					t.Fatalf("apply of a unit that exits 1 succeeded:\n%s", out)
				}
				for _, want := range []string{"FAILED", "service flotilla-e2e-broken.service", "flotilla-e2e-broken: missing /etc/flotilla-e2e-broken.conf, giving up"} {
					if !strings.Contains(out, want) {
						t.Errorf("apply output lacks %q:\n%s", want, out)
					}
				}
				res, _, _ := c.Apply(ctx, cf)
				if o := e2etest.Outcome(res, "node3"); o.Status != protocol.NodeFailed || !strings.Contains(strings.Join(o.LastOutput, "\n")+o.Error, "giving up") {
					t.Errorf("outcome of node3: %+v", o)
				}
			})
			t.Run("CrashLoopingServiceShowsJournal", func(t *testing.T) {
				cf := clusterfile("e2e-crashloop", "e2e/crashloop:1", "    - names: [node2]\n      roles: [master]\n", "  rollout: {stepTimeout: 8s}\n")
				out, _, err := c.CLI(ctx, "apply", "-f", cf)
				if err == nil {
					t.Fatalf("apply of a crash-looping unit succeeded:\n%s", out)
				}
				for _, want := range []string{"FAILED", "keeps crashing", "flotilla-e2e-crashloop: list nftables tables: operation not permitted"} {
					if !strings.Contains(out, want) {
						t.Errorf("apply output lacks %q:\n%s", want, out)
					}
				}
				if _, _, err := c.CLI(ctx, "delete", "-f", cf, "--yes"); err != nil {
					t.Errorf("delete the crash-looping cluster: %v", err)
				}
			})
		})
	})
}

type applyRun struct {
	res      *protocol.ApplyResult
	progress string
	err      error
	took     time.Duration
}

// applyAsync runs an apply in the background and delivers its result.
func applyAsync(ctx context.Context, c *e2etest.Controller, cf string) <-chan applyRun {
	ch := make(chan applyRun, 1)
	var once sync.Once
	go once.Do(func() {
		start := time.Now()
		res, progress, err := c.Apply(ctx, cf)
		ch <- applyRun{res, progress, err, time.Since(start)}
	})
	return ch
}

// waitFile waits until path exists (a marker a step writes inside a node's root).
func waitFile(t *testing.T, path string, timeout time.Duration) {
	t.Helper()
	exists := func() bool { _, err := os.Stat(path); return err == nil }
	if err := poll.Until(context.Background(), timeout, 100*time.Millisecond, exists); err != nil {
		t.Fatalf("%s did not appear: %v", path, err)
	}
}

// The lvscare templates of examples/etcd are copies of lvscare/'s (a cluster image's
// sources must be inside its context): they must not drift.
func TestEtcdExampleLvscareTemplatesMatch(t *testing.T) {
	for _, name := range []string{"flotilla-lvscare.service.tmpl", "lvscare.yaml.tmpl"} {
		want, err := os.ReadFile(filepath.Join("../lvscare", name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("../examples/etcd", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("examples/etcd/%s differs from lvscare/%s: copy it again (cp lvscare/%s examples/etcd/)", name, name, name)
		}
	}
}
