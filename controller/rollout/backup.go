package rollout

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/backup"
	"github.com/flotilla-dev/flotilla/controller/blobserver"
	"github.com/flotilla-dev/flotilla/controller/clusterfile"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/controller/planner"
	"github.com/flotilla-dev/flotilla/protocol"
)

// desired returns a cluster's stored desired state, parsed, its image and the
// plan of it against the current inventory: what backup and restore work from.
func (e *Engine) desired(ctx context.Context, cluster string) (*ClusterRecord, *clusterfile.File, *image, *planner.ClusterPlan, error) {
	cr, err := e.state.cluster(ctx, cluster)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if cr == nil {
		return nil, nil, nil, nil, fmt.Errorf("cluster %s is not known to this controller (flotilla status lists clusters; apply it first)", cluster)
	}
	cf, err := clusterfile.Parse(cr.Path, cr.Clusterfile)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("cluster %s: its stored Clusterfile: %w", cluster, err)
	}
	img, err := e.resolveImage(cf.Cluster.Image)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("cluster %s: %w", cluster, err)
	}
	p, _, err := e.planFor(ctx, cf, img)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("cluster %s: %w", cluster, err)
	}
	return cr, cf, img, p, nil
}

func (e *Engine) adminBackup(ctx context.Context, call *plane.AdminCall) (any, error) {
	var req protocol.BackupRequest
	if err := call.Decode(&req); err != nil {
		return nil, err
	}
	if err := protocol.ValidateNodeName(req.Cluster); err != nil || req.Cluster == "" {
		return nil, fmt.Errorf("backup: cluster name %q: give the cluster's metadata.name", req.Cluster)
	}
	return e.Backup(ctx, req, func(ev protocol.RolloutEvent) {
		if err := call.Send(ev); err != nil {
			e.log.Debug("stream backup event", "err", err)
		}
	})
}

func (e *Engine) adminBackups(ctx context.Context, call *plane.AdminCall) (any, error) {
	var req protocol.BackupsRequest
	if err := call.Decode(&req); err != nil {
		return nil, err
	}
	return e.Backups(req.Cluster)
}

// Backups lists the backups in the store (of cluster, or all when ""), newest
// first, with the last failed scheduled backup of each cluster that failed
// since its last success.
func (e *Engine) Backups(cluster string) (*protocol.BackupList, error) {
	list, err := backup.List(e.store, cluster)
	if err != nil {
		return nil, fmt.Errorf("list backups in %s: %w", e.store.Dir(), err)
	}
	out := &protocol.BackupList{Backups: []protocol.BackupInfo{}}
	for i := range list {
		out.Backups = append(out.Backups, backupInfo(&list[i]))
	}
	e.schedMu.Lock()
	for c, f := range e.failures {
		if cluster == "" || c == cluster {
			out.Failures = append(out.Failures, f)
		}
	}
	e.schedMu.Unlock()
	return out, nil
}

func backupInfo(b *backup.Backup) protocol.BackupInfo {
	return protocol.BackupInfo{Ref: b.Ref, Digest: b.Manifest.Digest.String(), BlobDigest: b.Blob.Digest.String(), Size: b.Blob.Size,
		Cluster: b.Meta.Cluster, Image: b.Meta.Image, ImageDigest: b.Meta.ImageDigest, Node: b.Meta.Node, Role: b.Meta.Role, Created: b.Meta.Created}
}

func (e *Engine) now() time.Time {
	if e.opts.Now != nil {
		return e.opts.Now()
	}
	return time.Now()
}

// Backup runs the image's BACKUP command on one healthy member of its role
// (the members in plan order; offline ones skipped, a failing one followed by
// the next), receives the file it wrote over HTTPS and stores it as a backup
// artifact. send, if set, gets the step's output and upload progress.
func (e *Engine) Backup(ctx context.Context, req protocol.BackupRequest, send func(protocol.RolloutEvent)) (*protocol.BackupResult, error) {
	start := time.Now()
	e.mu.Lock()
	a := e.active[req.Cluster]
	e.mu.Unlock()
	if a != nil && a.rec.Kind == KindRestore {
		return nil, fmt.Errorf("cluster %s: restore %s is running: back it up once it ended (flotilla status %s)", req.Cluster, a.rec.ID, req.Cluster)
	}
	cr, _, img, p, err := e.desired(ctx, req.Cluster)
	if err != nil {
		return nil, err
	}
	if img.plan.Backup == nil {
		return nil, fmt.Errorf("cluster %s: its image %s has no BACKUP command (ON <role> BACKUP cmd in its Kubefile): nothing knows how to back it up", req.Cluster, cr.Image)
	}
	var members []*planner.NodePlan
	for _, np := range p.Nodes() {
		if np.Backup != nil && np.Action != planner.ActionRemove {
			members = append(members, np)
		}
	}
	if len(members) == 0 {
		return nil, fmt.Errorf("cluster %s: no host has the role %q of the image's BACKUP command", req.Cluster, img.plan.Backup.Role)
	}
	res := &protocol.BackupResult{}
	for _, np := range members {
		if !np.Online {
			res.Tried = append(res.Tried, np.Node+": offline")
			continue
		}
		b, err := e.backupOn(ctx, cr, p, np, req.Timeout, send)
		if err == nil {
			res.Backup, res.Duration = backupInfo(b), time.Since(start)
			e.log.Info("backup stored", "cluster", req.Cluster, "ref", b.Ref, "node", np.Node, "digest", b.Blob.Digest, "bytes", b.Blob.Size,
				"duration", res.Duration)
			return res, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		e.log.Warn("backup failed on a member; trying the next", "cluster", req.Cluster, "node", np.Node, "err", err)
		res.Tried = append(res.Tried, np.Node+": "+err.Error())
	}
	return nil, fmt.Errorf("cluster %s: no member could make a backup (%s)", req.Cluster, strings.Join(res.Tried, "; "))
}

// backupOn makes the backup on one member.
func (e *Engine) backupOn(ctx context.Context, cr *ClusterRecord, p *planner.ClusterPlan, np *planner.NodePlan, timeout time.Duration, send func(protocol.RolloutEvent)) (*backup.Backup, error) {
	st := np.Backup
	if timeout <= 0 {
		timeout = st.Timeout
	}
	if timeout <= 0 {
		timeout = clusterfile.DefaultStepTimeout
	}
	expires := time.Now().Add(e.opts.TaskTTL)
	step := protocol.Step{Name: "backup: " + oneLine(st.Command, 60), Kind: protocol.KindBackup, Shell: st.Command, Env: st.Env, Timeout: timeout}
	up, err := e.blobs.ExpectUpload(np.Node, e.opts.MaxBackupBytes, blobTokenExpiry(expires, []protocol.Step{step}))
	if err != nil {
		return nil, err
	}
	defer up.Close()
	step.Payload = mustJSON(protocol.BackupPayload{Cluster: p.Cluster, URL: e.baseURL() + up.Path(), Token: up.Token, MaxBytes: e.opts.MaxBackupBytes})
	task := &protocol.Task{Node: np.Node, Cluster: p.Cluster, Image: p.ImageDigest, Steps: []protocol.Step{step}, Expires: expires}
	var out tail
	onEvent := func(ev protocol.Event) {
		rev := protocol.RolloutEvent{Time: time.Now().UTC(), Cluster: p.Cluster, Phase: "backup", Node: np.Node, Step: 1, Steps: 1, StepName: step.Name}
		switch ev.Type {
		case protocol.EventStepStarted:
			rev.Type = protocol.RolloutEventStep
		case protocol.EventOutput:
			out.add(ev.Line)
			rev.Type, rev.Line = protocol.RolloutEventOutput, ev.Line
		case protocol.EventProgress:
			if ev.Progress == nil {
				return
			}
			rev.Type, rev.Done, rev.Total, rev.Line = protocol.RolloutEventProgress, ev.Progress.Done, ev.Progress.Total, ev.Progress.Message
		default:
			return
		}
		if send != nil {
			send(rev)
		}
	}
	type taskEnd struct {
		res *protocol.TaskResult
		err error
	}
	ended := make(chan taskEnd, 1)
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		res, err := e.dispatchWait(tctx, task, onEvent)
		ended <- taskEnd{res, err}
	}()
	var stored *backup.Backup
	for {
		select {
		case r := <-up.Result():
			b, err := e.storeBackup(ctx, cr, np, r)
			r.Done(err)
			if err != nil {
				return nil, err
			}
			stored = b
		case te := <-ended:
			switch {
			case te.err != nil:
				return nil, fmt.Errorf("node %s: %w", np.Node, te.err)
			case !te.res.OK:
				msg := te.res.Error
				if msg == "" {
					msg = fmt.Sprintf("exit code %d", te.res.ExitCode)
				}
				if t := out.String(); t != "" {
					msg += ": " + t
				}
				return nil, fmt.Errorf("node %s: %s", np.Node, msg)
			case stored == nil:
				return nil, fmt.Errorf("node %s: the backup step ended without an upload", np.Node)
			}
			return stored, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// storeBackup writes the artifact of an upload that arrived (and matched the
// digest the node sent) and commits it into the store.
func (e *Engine) storeBackup(ctx context.Context, cr *ClusterRecord, np *planner.NodePlan, r *blobserver.UploadResult) (*backup.Backup, error) {
	if r.Node != np.Node {
		r.Txn.Abort()
		return nil, fmt.Errorf("upload from node %s, expected from %s", r.Node, np.Node)
	}
	m := backup.Meta{Cluster: cr.Cluster, Image: cr.Image, ImageDigest: cr.ImageDigest, Node: np.Node, Role: np.Backup.Role, Created: e.now()}
	b, err := backup.Write(ctx, r.Txn, m, r.Digest, r.Size)
	if err != nil {
		r.Txn.Abort()
		return nil, err
	}
	return b, nil
}

func (e *Engine) baseURL() string {
	base := e.opts.BaseURL
	if base == "" {
		base = e.ctrl.HTTPURL()
	}
	return strings.TrimSuffix(base, "/")
}
