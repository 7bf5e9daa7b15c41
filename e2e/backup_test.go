package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/e2e/e2etest"
	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/flotilla-dev/flotilla/sandbox"
)

// Backup and restore of examples/etcd on three real masters (fleet flteu,
// 10.77.14.0/28).
const (
	backupFleet  = "flteu"
	backupSubnet = "10.77.14.0/28"
)

// TestEtcdBackupRestore: keys written, about 100 MiB of values, flotilla backup,
// more keys, flotilla restore: every member has the keys from before the backup and
// not the one written after; the cluster has three members again and is healthy.
// It logs how long the backup and the restore took.
func TestEtcdBackupRestore(t *testing.T) {
	fleettest.Require(t)
	e2etest.UseStore(t)
	e2etest.BuildImage(t, "../examples/etcd", "e2e/etcd:3.4")
	env := e2etest.Start(t, sandbox.Options{Name: backupFleet, Subnet: backupSubnet, N: 3})
	f, c := env.Fleet, env.Controller
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cf := filepath.Join(t.TempDir(), "etcd.yaml")
	doc := "apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: e2e-bk}\nspec:\n  image: e2e/etcd:3.4\n" +
		"  rollout: {stepTimeout: 2m}\n  hosts:\n    - names: [node1, node2, node3]\n      roles: [master]\n"
	if err := os.WriteFile(cf, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	res, progress, err := c.Apply(ctx, cf)
	if err != nil || res == nil || !res.OK {
		t.Fatalf("apply: %v\n%+v\n%s", err, res, progress)
	}
	run := func(node string, argv ...string) (string, error) {
		out, err := f.Exec(ctx, node, argv...)
		return strings.TrimSpace(string(out)), err
	}
	etcd := func(node string, args ...string) (string, error) {
		return run(node, append([]string{etcdctl, "--endpoints", "http://127.0.0.1:2379"}, args...)...)
	}
	for i := 1; i <= 3; i++ {
		if out, err := etcd("node1", "put", fmt.Sprintf("before-%d", i), fmt.Sprintf("v%d", i)); err != nil || out != "OK" {
			t.Fatalf("put: %v %q", err, out)
		}
	}
	// About 100 MiB of values: 100 keys of 1 MiB (base64 of 768 KiB random bytes).
	fill := `head -c 786432 /dev/urandom | base64 -w0 > /tmp/v && i=0 && while [ $i -lt 100 ]; do ` + etcdctl +
		` --endpoints http://127.0.0.1:2379 put big-$i < /tmp/v >/dev/null || exit 1; i=$((i+1)); done && rm /tmp/v && ` + etcdctl +
		` --endpoints http://127.0.0.1:2379 endpoint status -w json`
	start := time.Now()
	if out, err := run("node1", "sh", "-c", fill); err != nil {
		t.Fatalf("fill: %v %s", err, out)
	} else {
		t.Logf("wrote 100 values of 1 MiB in %s: %s", time.Since(start).Round(time.Millisecond), out)
	}

	start = time.Now()
	out, errOut, err := c.CLI(ctx, "backup", "e2e-bk", "-o", "json")
	backupTook := time.Since(start)
	if err != nil {
		t.Fatalf("backup: %v\n%s\n%s", err, out, errOut)
	}
	var b protocol.BackupResult
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatalf("backup -o json: %v: %q", err, out)
	}
	t.Logf("backup %s: %d bytes from %s in %s (CLI %s)", b.Backup.Ref, b.Backup.Size, b.Backup.Node, b.Duration.Round(time.Millisecond), backupTook.Round(time.Millisecond))
	if b.Backup.Size < 100<<20 {
		t.Errorf("the snapshot is %d bytes, want about 100 MiB or more", b.Backup.Size)
	}

	if out, err := etcd("node2", "put", "after", "x"); err != nil || out != "OK" {
		t.Fatalf("put after: %v %q", err, out)
	}
	if out, err := etcd("node3", "del", "before-3"); err != nil || out != "1" {
		t.Fatalf("del before-3: %v %q", err, out)
	}

	start = time.Now()
	out, errOut, err = c.CLI(ctx, "restore", "e2e-bk", "--from", b.Backup.Ref, "-o", "json")
	restoreTook := time.Since(start)
	var r protocol.ApplyResult
	if jerr := json.Unmarshal([]byte(out), &r); jerr != nil || err != nil || !r.OK {
		t.Fatalf("restore: %v %v %+v\n%s", err, jerr, r, errOut)
	}
	t.Logf("restore on 3 members in %s (CLI %s); health: %s", r.Duration.Round(time.Millisecond), restoreTook.Round(time.Millisecond), r.Health)

	for _, n := range []string{"node1", "node2", "node3"} {
		for i := 1; i <= 3; i++ {
			if out, err := etcd(n, "get", "--print-value-only", fmt.Sprintf("before-%d", i)); err != nil || out != fmt.Sprintf("v%d", i) {
				t.Errorf("%s: before-%d = %q (%v), want v%d", n, i, out, err, i)
			}
		}
		if out, err := etcd(n, "get", "--print-value-only", "after"); err != nil || out != "" {
			t.Errorf("%s: after = %q (%v), want gone", n, out, err)
		}
		if out, err := etcd(n, "get", "--keys-only", "--prefix", "big-"); err != nil || strings.Count(out, "big-") != 100 {
			t.Errorf("%s: %d big values (%v), want 100", n, strings.Count(out, "big-"), err)
		}
	}
	if out, err := etcd("node1", "member", "list"); err != nil || strings.Count(out, "started") != 3 {
		t.Errorf("member list: %v\n%s", err, out)
	}
	// A write after the restore reaches every member (the new cluster works).
	if out, err := etcd("node1", "put", "after-restore", "y"); err != nil || out != "OK" {
		t.Errorf("put after the restore: %v %q", err, out)
	}
	if out, err := etcd("node3", "get", "--print-value-only", "after-restore"); err != nil || out != "y" {
		t.Errorf("get after the restore on node3: %v %q", err, out)
	}
	var st []protocol.ClusterStatus
	if out, _, err := c.CLI(ctx, "status", "e2e-bk", "-o", "json"); err != nil || json.Unmarshal([]byte(out), &st) != nil || len(st) != 1 || st[0].Rollout != r.Rollout {
		t.Errorf("status does not show the restore %s: %v %s", r.Rollout, err, out)
	}
}
