package rollout

import (
	"context"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/backup"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/protocol"
)

// StartBackupSchedule runs the scheduled backups (spec.backup) every
// Options.BackupTick until the engine closes. The engine runs on the leader
// only (with HA), so only the leader backs up.
func (e *Engine) StartBackupSchedule() {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		t := time.NewTicker(e.opts.BackupTick)
		defer t.Stop()
		for {
			select {
			case <-e.ctx.Done():
				return
			case <-t.C:
				e.backupTick(e.ctx)
			}
		}
	}()
}

// backupTick runs the backups that are due, one cluster after another: a
// cluster with spec.backup whose newest backup (scheduled or not) is at least
// spec.backup.every old, or that has none. After a success it keeps the newest
// spec.backup.keep backups of the cluster; a failure is logged and kept for
// `flotilla backups`, and the backup is tried again at the next tick. It
// returns the clusters it backed up.
func (e *Engine) backupTick(ctx context.Context) []string {
	names, err := e.state.clusterNames(ctx)
	if err != nil {
		e.log.Warn("scheduled backups: list clusters", "err", err)
		return nil
	}
	var done []string
	for _, name := range names {
		if ctx.Err() != nil {
			return done
		}
		sched, err := e.schedule(ctx, name)
		if err != nil || sched == nil {
			continue
		}
		now := e.now()
		list, err := backup.List(e.store, name)
		if err != nil {
			e.log.Warn("scheduled backups: list backups", "cluster", name, "err", err)
			continue
		}
		if len(list) > 0 && now.Sub(list[0].Meta.Created) < sched.Every {
			continue
		}
		e.log.Info("scheduled backup", "cluster", name, "every", sched.Every, "keep", sched.Keep)
		run := e.Backup
		if e.backupFn != nil {
			run = e.backupFn
		}
		res, err := run(ctx, protocol.BackupRequest{Cluster: name}, nil)
		if err != nil {
			e.log.Error("scheduled backup failed; tried again at the next tick", "cluster", name, "err", err)
			e.schedMu.Lock()
			e.failures[name] = protocol.BackupFailure{Cluster: name, Time: now.UTC(), Error: err.Error()}
			e.schedMu.Unlock()
			continue
		}
		e.schedMu.Lock()
		delete(e.failures, name)
		e.schedMu.Unlock()
		done = append(done, name)
		removed, err := backup.Prune(ctx, e.store, name, sched.Keep)
		if err != nil {
			e.log.Warn("scheduled backup: drop old backups", "cluster", name, "err", err)
		}
		e.log.Info("scheduled backup stored", "cluster", name, "ref", res.Backup.Ref, "removed", removed)
	}
	return done
}

// schedule is the cluster's spec.backup from its stored desired state (nil: none).
func (e *Engine) schedule(ctx context.Context, name string) (*clusterfile.Backup, error) {
	cr, err := e.state.cluster(ctx, name)
	if err != nil || cr == nil {
		return nil, err
	}
	cf, err := clusterfile.Parse(cr.Path, cr.Clusterfile)
	if err != nil {
		return nil, err
	}
	return cf.Cluster.Backup, nil
}
