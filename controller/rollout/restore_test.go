package rollout

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/backup"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/protocol"
)

const restoreKubefile = `FROM scratch
ON master RUN echo master
ON node RUN echo node
ON master BACKUP echo backup > "$FLOTILLA_BACKUP"
ON master RESTORE echo stage1
ON master RESTORE echo stage2
ON node RESTORE echo stage3
CMD echo healthy
`

// putBackup stores a backup of cluster made with imageDigest, as the engine would.
func putBackup(t *testing.T, e *env, cluster, imageDigest string, created time.Time) *backup.Backup {
	t.Helper()
	ctx := context.Background()
	tx, err := e.store.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Abort()
	w, err := tx.NewBlob()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("backup of " + cluster + " at " + created.String()))
	h, n, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}
	b, err := backup.Write(ctx, tx, backup.Meta{Cluster: cluster, Image: "bk:1", ImageDigest: imageDigest, Node: "m1", Role: "master", Created: created}, h, n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *env) restore(req protocol.RestoreRequest) (*protocol.ApplyResult, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := e.eng.adminRestore(ctx, call(e.t, protocol.AdminRestore, req))
	if err != nil {
		return nil, err
	}
	return out.(*protocol.ApplyResult), nil
}

func restoreEnv(t *testing.T, f *fakeFleet) (*env, string) {
	e := newEnv(t, f)
	digest := buildImage(t, e.store, "bk:1", restoreKubefile, nil)
	e.mustApply(clusterfileFor("c1", "bk:1", []string{"m1", "m2"}, []string{"n1"}, ""))
	return e, digest
}

// TestRestoreRefusals: what must not be restored is refused with a message that
// says why and what to do; --force accepts another cluster's or image's backup.
func TestRestoreRefusals(t *testing.T) {
	f := newFakeFleet("m1", "m2", "n1")
	e, digest := restoreEnv(t, f)
	e.mustApply(clusterfileFor("plain", "test:1", []string{"m1"}, nil, ""))
	now := time.Now()
	own := putBackup(t, e, "c1", digest, now)
	other := putBackup(t, e, "c2", digest, now)
	oldImage := putBackup(t, e, "c1", "sha256:"+strings.Repeat("0", 64), now.Add(time.Second))
	damaged := putBackup(t, e, "c1", digest, now.Add(2*time.Second))
	p, _ := e.store.BlobPath(damaged.Blob.Digest)
	if err := os.WriteFile(p, []byte("bit rot"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  protocol.RestoreRequest
		want []string
	}{
		{"another cluster", protocol.RestoreRequest{Cluster: "c1", From: other.Ref}, []string{"is of cluster c2, not c1", "--force"}},
		{"another image", protocol.RestoreRequest{Cluster: "c1", From: oldImage.Ref}, []string{"was made with image bk:1 (sha256:000000000000)", "--force"}},
		{"damaged", protocol.RestoreRequest{Cluster: "c1", From: damaged.Ref}, []string{"does not verify"}},
		{"missing", protocol.RestoreRequest{Cluster: "c1", From: "flotilla-backup/c1:19700101T000000Z"}, []string{"flotilla backups c1"}},
		{"no RESTORE in the image", protocol.RestoreRequest{Cluster: "plain", From: own.Ref, Force: true}, []string{"has no RESTORE commands"}},
		{"unknown cluster", protocol.RestoreRequest{Cluster: "nope", From: own.Ref}, []string{"not known"}},
		{"no backup named", protocol.RestoreRequest{Cluster: "c1"}, []string{"--from"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.taskCount()
			_, err := e.restore(tc.req)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if n := f.taskCount(); n != before {
				t.Errorf("%d tasks dispatched by a refused restore", n-before)
			}
		})
	}
	t.Run("while a rollout runs", func(t *testing.T) {
		e.eng.mu.Lock()
		e.eng.active["c1"] = &active{rec: &Record{ID: "r1", Kind: KindApply, Started: time.Now()}, done: make(chan struct{})}
		e.eng.mu.Unlock()
		_, err := e.restore(protocol.RestoreRequest{Cluster: "c1", From: own.Ref})
		e.eng.mu.Lock()
		delete(e.eng.active, "c1")
		e.eng.mu.Unlock()
		if err == nil || !strings.Contains(err.Error(), "apply rollout r1 is running") || !strings.Contains(err.Error(), "flotilla status c1") {
			t.Errorf("restore during a rollout: %v", err)
		}
	})
	t.Run("forced", func(t *testing.T) {
		res, err := e.restore(protocol.RestoreRequest{Cluster: "c1", From: other.Ref, Force: true})
		if err != nil || !res.OK {
			t.Fatalf("forced restore of another cluster's backup: %v %+v", err, res)
		}
	})
}

// TestRestoreStagesAndResume: the stages run in order on the members of their
// role, then the health check; an engine stopped during stage 2 is resumed by the
// next one at stage 2: stage 1 does not run again, and the record says restore.
func TestRestoreStagesAndResume(t *testing.T) {
	f := newFakeFleet("m1", "m2", "n1")
	e, digest := restoreEnv(t, f)
	b := putBackup(t, e, "c1", digest, time.Now())

	res, err := e.restore(protocol.RestoreRequest{Cluster: "c1", From: b.Ref})
	if err != nil || !res.OK || res.Health != "running health: echo healthy" {
		t.Fatalf("restore: %v %+v", err, res)
	}
	for node, stages := range map[string][]string{"m1": {"stage1", "stage2"}, "m2": {"stage1", "stage2"}, "n1": {"stage3"}} {
		for _, s := range stages {
			if got := f.executed(node, "echo "+s); got != 1 {
				t.Errorf("%s ran %s %d times, want 1", node, s, got)
			}
		}
	}
	if got := f.executed("n1", "echo stage1"); got != 0 {
		t.Errorf("the worker ran a master stage")
	}
	rec, _ := e.eng.state.rollout(context.Background(), "c1")
	if rec.Kind != KindRestore || rec.State != StateDone || rec.Restore.Done != 3 {
		t.Errorf("record %+v %+v", rec, rec.Restore)
	}

	// Stage 2 is slow; the engine stops while it runs.
	for _, n := range []string{"m1", "m2"} {
		f.set(n, func(n *fakeNode) { n.delay = 300 * time.Millisecond })
	}
	var once sync.Once
	started := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = e.eng.adminRestore(ctx, call(t, protocol.AdminRestore, protocol.RestoreRequest{Cluster: "c1", From: b.Ref}))
	}()
	if err := poll.Until(context.Background(), 20*time.Second, 10*time.Millisecond, func() bool {
		if f.executed("m1", "echo stage1") == 2 {
			once.Do(func() { close(started) })
			r, _ := e.eng.state.rollout(context.Background(), "c1")
			return r != nil && r.Phase == "restore-2"
		}
		return false
	}); err != nil {
		t.Fatal("the second restore did not reach stage 2")
	}
	<-started
	e.eng.Close()
	rec, _ = e.eng.state.rollout(context.Background(), "c1")
	if rec.State != StateRunning || rec.Restore.Done != 1 {
		t.Fatalf("after the stop: state %s, %d stages done; want running, 1", rec.State, rec.Restore.Done)
	}
	e.eng = e.newEngine()
	if err := e.eng.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := poll.Until(context.Background(), 20*time.Second, 20*time.Millisecond, func() bool {
		r, _ := e.eng.state.rollout(context.Background(), "c1")
		return r != nil && r.State != StateRunning
	}); err != nil {
		t.Fatal("the resumed restore did not end")
	}
	rec, _ = e.eng.state.rollout(context.Background(), "c1")
	if rec.State != StateDone || rec.Resumes != 1 || rec.Restore.Done != 3 {
		t.Errorf("resumed restore: %s, resumes %d, %d stages done", rec.State, rec.Resumes, rec.Restore.Done)
	}
	if got := f.executed("m1", "echo stage1"); got != 2 {
		t.Errorf("stage 1 ran %d times over two restores, want 2 (not again on resume)", got)
	}
	if got := f.executed("n1", "echo stage3"); got != 2 {
		t.Errorf("stage 3 ran %d times over two restores, want 2", got)
	}
}

// TestScheduledBackups: with spec.backup {every: 1h, keep: 2} and a clock the test
// moves, a backup is made when none exists or the newest is an hour old, not
// before; only the newest two are kept; a failure is reported by Backups and
// tried again at the next tick.
func TestScheduledBackups(t *testing.T) {
	f := newFakeFleet("m1", "m2", "n1")
	e := newEnv(t, f)
	digest := buildImage(t, e.store, "bk:1", restoreKubefile, nil)
	var mu sync.Mutex
	clock := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	e.opts.Now = now
	e.eng.Close()
	e.eng = e.newEngine()
	fail := false
	made := 0
	e.eng.backupFn = func(ctx context.Context, req protocol.BackupRequest, _ func(protocol.RolloutEvent)) (*protocol.BackupResult, error) {
		if fail {
			return nil, errors.New("etcd is down")
		}
		made++
		b := putBackup(t, e, req.Cluster, digest, now())
		return &protocol.BackupResult{Backup: protocol.BackupInfo{Ref: b.Ref}}, nil
	}
	cf := clusterfileFor("c1", "bk:1", []string{"m1", "m2"}, []string{"n1"}, "") + "  backup: {every: 1h, keep: 2}\n"
	e.mustApply(cf)
	e.mustApply(clusterfileFor("nosched", "bk:1", []string{"m1"}, nil, ""))
	ctx := context.Background()

	if done := e.eng.backupTick(ctx); len(done) != 1 || done[0] != "c1" {
		t.Fatalf("first tick backed up %v, want [c1]", done)
	}
	advance(59 * time.Minute)
	if done := e.eng.backupTick(ctx); len(done) != 0 {
		t.Fatalf("tick 59m after the last backup backed up %v", done)
	}
	for i := range 3 {
		advance(time.Hour)
		if done := e.eng.backupTick(ctx); len(done) != 1 {
			t.Fatalf("tick %d: backed up %v", i, done)
		}
	}
	list, err := backup.List(e.store, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if made != 4 || len(list) != 2 || !list[0].Meta.Created.Equal(now()) {
		t.Fatalf("made %d, kept %d (newest %v), want 4 made, 2 kept, newest now", made, len(list), list[0].Meta.Created)
	}

	fail = true
	advance(time.Hour)
	e.eng.backupTick(ctx)
	bl, _ := e.eng.Backups("c1")
	if len(bl.Failures) != 1 || !strings.Contains(bl.Failures[0].Error, "etcd is down") || len(bl.Backups) != 2 {
		t.Fatalf("after a failed scheduled backup: %+v", bl)
	}
	fail = false
	advance(time.Minute) // the next tick, not the next hour
	if done := e.eng.backupTick(ctx); len(done) != 1 {
		t.Fatalf("the tick after a failure backed up %v", done)
	}
	if bl, _ = e.eng.Backups("c1"); len(bl.Failures) != 0 {
		t.Errorf("failure still reported after a success: %+v", bl.Failures)
	}
}
