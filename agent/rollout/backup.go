package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/unpack"
	"github.com/flotilla-dev/flotilla/internal/human"
	"github.com/flotilla-dev/flotilla/protocol"
)

// backupDir is where backup files are written before their upload: in the
// agent's data dir (0700), never in a world-writable temporary directory.
func backupDir(dataDir string) string { return filepath.Join(dataDir, "backups") }

// withBackup returns a copy of sc whose command environment has FLOTILLA_BACKUP=path.
func withBackup(sc *agent.StepContext, path string) *agent.StepContext {
	c := *sc
	c.Env = append(append([]string(nil), sc.Env...), protocol.EnvBackup+"="+path)
	return &c
}

// backup runs the BACKUP command with FLOTILLA_BACKUP naming an empty 0600
// file in the data dir, then uploads what it wrote to the controller with its
// sha256 and size (the controller hashes the body again as it arrives), and
// removes the file.
func (x *steps) backup(ctx context.Context, sc *agent.StepContext) error {
	var p protocol.BackupPayload
	if err := decodePayload(sc, &p); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("backup step %q: %w", sc.Step.Name, err)
	}
	if sc.Step.Shell == "" {
		return fmt.Errorf("backup step %q has no shell command", sc.Step.Name)
	}
	dir := backupDir(sc.DataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	f, err := os.CreateTemp(dir, "backup-*")
	if err != nil {
		return fmt.Errorf("backup: create the backup file: %w", err)
	}
	path := f.Name()
	defer os.Remove(path)
	if err := errors.Join(f.Chmod(0o600), f.Close()); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := agent.ExecStep(ctx, withBackup(sc, path)); err != nil {
		return err
	}
	start := time.Now()
	digest, size, err := hashFile(path, p.MaxBytes)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if size == 0 {
		return fmt.Errorf("backup: the BACKUP command wrote nothing to $%s (%s)", protocol.EnvBackup, path)
	}
	sc.Output("stdout", fmt.Sprintf("backup %s: %s written, uploading to the controller", protocol.ShortDigest(digest), human.Bytes(size)))
	if err := x.upload(ctx, sc, p, path, digest, size); err != nil {
		return err
	}
	sc.Output("stdout", fmt.Sprintf("backup %s: %s uploaded in %s", protocol.ShortDigest(digest), human.Bytes(size), time.Since(start).Round(time.Millisecond)))
	return nil
}

// hashFile returns the sha256 digest and size of the file at path, refusing
// one past limit bytes.
func hashFile(path string, limit int64) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	if !fi.Mode().IsRegular() {
		return "", 0, fmt.Errorf("%s is not a regular file any more", path)
	}
	if fi.Size() > limit {
		return "", 0, fmt.Errorf("the backup is %s, more than the %s the controller accepts", human.Bytes(fi.Size()), human.Bytes(limit))
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, limit+1))
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	if n > limit {
		return "", 0, fmt.Errorf("the backup grew past the %s the controller accepts", human.Bytes(limit))
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, nil
}

// countingReader counts what was read, for progress.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// upload PUTs the backup file to the controller (mutual TLS with the agent's
// peer certificate, the step's token), reporting progress.
func (x *steps) upload(ctx context.Context, sc *agent.StepContext, p protocol.BackupPayload, path, digest string, size int64) error {
	client, err := HTTPClient(sc.DataDir)
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer f.Close()
	body := &countingReader{r: io.LimitReader(f, size)}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, p.URL, body)
	if err != nil {
		return fmt.Errorf("backup upload URL %q: %w", redactURL(p.URL), err)
	}
	req.ContentLength = size
	req.Header.Set("Authorization", "Bearer "+p.Token)
	req.Header.Set(protocol.HeaderBackupDigest, digest)
	req.Header.Set("Content-Type", "application/octet-stream")
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(x.opts.ProgressEvery)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				sc.Progress(body.n.Load(), size, "upload")
			case <-done:
				return
			}
		}
	}()
	resp, err := client.Do(req)
	close(done)
	if err != nil {
		return fmt.Errorf("backup upload to %s: %w", redactURL(p.URL), err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("backup upload to %s: HTTP %d: %s", redactURL(p.URL), resp.StatusCode, string(msg))
	}
	sc.Progress(size, size, "uploaded")
	return nil
}

// restore fetches the backup blob like a layer blob (peer to peer, verified),
// then runs the RESTORE command with FLOTILLA_BACKUP naming it. The blob cache
// copy is removed afterwards (the peer store keeps one to serve the other
// members; a repeated stage gets it from there).
func (x *steps) restore(ctx context.Context, sc *agent.StepContext) error {
	var p protocol.RestorePayload
	if err := decodePayload(sc, &p); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("restore step %q: %w", sc.Step.Name, err)
	}
	if sc.Step.Shell == "" {
		return fmt.Errorf("restore step %q has no shell command", sc.Step.Name)
	}
	h, err := unpack.DigestHex(p.Blob.Digest)
	if err != nil {
		return fmt.Errorf("restore step %q: %w", sc.Step.Name, err)
	}
	unlock := x.blobs.lock(h)
	defer unlock()
	blob, fetched, err := x.ensureBlob(ctx, sc, p.Blob, h, "backup")
	if err != nil {
		return err
	}
	defer os.Remove(blob)
	if !fetched {
		// A copy from before: check it is still the backup.
		if err := verifyBlob(blob, p.Blob.Digest, h, p.Blob.Size); err != nil {
			_ = os.Remove(blob)
			if blob, _, err = x.ensureBlob(ctx, sc, p.Blob, h, "backup"); err != nil {
				return err
			}
		}
	}
	// The command reads the file; it must not change the cached copy other stages use.
	if err := os.Chmod(blob, 0o400); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	sc.Output("stdout", fmt.Sprintf("backup %s (%s) verified: $%s=%s", protocol.ShortDigest(p.Blob.Digest), human.Bytes(p.Blob.Size), protocol.EnvBackup, blob))
	return agent.ExecStep(ctx, withBackup(sc, blob))
}
