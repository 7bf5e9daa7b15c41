package protocol

import (
	"fmt"
	"strings"
	"time"
)

// Step kinds of backup and restore (flotilla backup, flotilla restore).
const (
	// KindBackup runs Step.Shell like KindRun, with FLOTILLA_BACKUP naming an empty
	// file (0600) the agent created in its data dir: the command writes the backup
	// there. The agent then hashes the file and uploads it to the controller
	// (HTTPS PUT to Payload.URL with "Authorization: Bearer <Token>" and the
	// digest and size in HeaderBackupDigest and Content-Length), and removes it.
	// Payload: BackupPayload.
	KindBackup = "backup"
	// KindRestore fetches a backup blob exactly as a layer step fetches its blob
	// (peer-to-peer pieces, the controller's HTTPS as fallback, verified by
	// digest) into a file in the agent's data dir, then runs Step.Shell like
	// KindRun with FLOTILLA_BACKUP naming that file. Payload: RestorePayload.
	KindRestore = "restore"
)

// HeaderBackupDigest carries the sha256 digest of an uploaded backup: the
// controller hashes the body as it arrives and stores nothing on a mismatch.
const HeaderBackupDigest = "Flotilla-Backup-Digest"

// EnvBackup is the variable naming the backup file for BACKUP and RESTORE commands.
const EnvBackup = "FLOTILLA_BACKUP"

// DefaultMaxBackupBytes bounds a backup's size unless the controller says otherwise.
const DefaultMaxBackupBytes int64 = 16 << 30

// BackupPayload says where a "backup" step uploads the file its command wrote.
type BackupPayload struct {
	Cluster string `json:"cluster"`
	// URL is the controller's upload address for this one backup; Token
	// authorizes this node to upload there once.
	URL   string `json:"url"`
	Token string `json:"token"`
	// MaxBytes bounds the backup (the controller refuses more as well).
	MaxBytes int64 `json:"maxBytes"`
}

// Validate checks the payload's shape.
func (p *BackupPayload) Validate() error {
	if p.Cluster == "" || len(p.Cluster) > 128 {
		return fmt.Errorf("backup payload: cluster %q: want 1 to 128 characters", p.Cluster)
	}
	if !strings.HasPrefix(p.URL, "https://") || len(p.URL) > 2048 {
		return fmt.Errorf("backup payload: upload URL %q: want https://, at most 2048 bytes", p.URL)
	}
	if p.Token == "" || len(p.Token) > 1024 {
		return fmt.Errorf("backup payload: token: want 1 to 1024 bytes")
	}
	if p.MaxBytes <= 0 {
		return fmt.Errorf("backup payload: maxBytes %d: want > 0", p.MaxBytes)
	}
	return nil
}

// RestorePayload is the backup a "restore" step fetches before its command runs.
// Blob is fetched like a layer blob (Cluster, Digest, Size, URL, Token, Pieces,
// caps; the unpack fields are unused).
type RestorePayload struct {
	Cluster string       `json:"cluster"`
	Blob    LayerPayload `json:"blob"`
}

// Validate checks the payload's shape.
func (p *RestorePayload) Validate() error {
	if p.Cluster == "" || len(p.Cluster) > 128 {
		return fmt.Errorf("restore payload: cluster %q: want 1 to 128 characters", p.Cluster)
	}
	if _, err := ParseDigest(p.Blob.Digest); err != nil {
		return fmt.Errorf("restore payload: backup blob: %w", err)
	}
	if p.Blob.Size <= 0 {
		return fmt.Errorf("restore payload: backup blob size %d: want > 0", p.Blob.Size)
	}
	return nil
}

// Admin request names of backups.
const (
	AdminBackup  = "backup.run"
	AdminBackups = "backup.list"
	// AdminRestore streams RolloutEvents like AdminApply and answers an ApplyResult.
	AdminRestore = "backup.restore"
)

// BackupRequest asks the controller to back up a cluster now.
type BackupRequest struct {
	Cluster string        `json:"cluster"`
	Timeout time.Duration `json:"timeout,omitempty"` // of the BACKUP command (0: the cluster's step timeout)
}

// BackupInfo is one backup the controller's store holds.
type BackupInfo struct {
	Ref         string    `json:"ref"`    // flotilla-backup/<cluster>:<time>
	Digest      string    `json:"digest"` // the artifact manifest's
	BlobDigest  string    `json:"blobDigest"`
	Size        int64     `json:"size"` // of the backup file
	Cluster     string    `json:"cluster"`
	Image       string    `json:"image"`
	ImageDigest string    `json:"imageDigest"`
	Node        string    `json:"node"`
	Role        string    `json:"role"`
	Created     time.Time `json:"created"`
}

// BackupResult is the reply to AdminBackup.
type BackupResult struct {
	Backup   BackupInfo    `json:"backup"`
	Duration time.Duration `json:"duration"`
	// Tried are the members tried before one succeeded, with why they did not.
	Tried []string `json:"tried,omitempty"`
}

// BackupsRequest lists the backups of one cluster, or of every cluster when Cluster is "".
type BackupsRequest struct {
	Cluster string `json:"cluster,omitempty"`
}

// BackupFailure is a scheduled backup that failed.
type BackupFailure struct {
	Cluster string    `json:"cluster"`
	Time    time.Time `json:"time"`
	Error   string    `json:"error"`
}

// BackupList is the reply to AdminBackups, newest first.
type BackupList struct {
	Backups []BackupInfo `json:"backups"`
	// Failures are the last failed scheduled backup of each cluster, if it failed
	// after the last success.
	Failures []BackupFailure `json:"failures,omitempty"`
}

// RestoreRequest asks the controller to restore a cluster from a backup.
type RestoreRequest struct {
	Cluster string `json:"cluster"`
	From    string `json:"from"`            // backup reference or digest (prefix)
	Force   bool   `json:"force,omitempty"` // accept another cluster's or image's backup
	Detach  bool   `json:"detach,omitempty"`
}
