package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/unpack"
	"github.com/flotilla-dev/flotilla/protocol"
)

// FileRecord is one rendered file placed; clusters/<cluster>/files.json maps
// its path (absolute on the node) to it.
type FileRecord struct {
	Digest  string          `json:"digest"`
	Placed  time.Time       `json:"placed"`
	Records []unpack.Record `json:"records"` // the file and the directories created for it
}

func filesPath(dir string) string { return filepath.Join(dir, "files.json") }

func readFiles(dir string) (map[string]FileRecord, error) {
	m := map[string]FileRecord{}
	if _, err := readJSON(filesPath(dir), &m); err != nil {
		return nil, err
	}
	return m, nil
}

func (x *steps) file(ctx context.Context, sc *agent.StepContext) error {
	var p protocol.FilePayload
	if err := decodePayload(sc, &p); err != nil {
		return err
	}
	if !strings.HasPrefix(p.Path, "/") || path.Clean(p.Path) != p.Path || p.Path == "/" {
		return fmt.Errorf("file step %q: path %q: want an absolute, clean file path", sc.Step.Name, p.Path)
	}
	dir, err := clusterDir(sc.DataDir, p.Cluster)
	if err != nil {
		return fmt.Errorf("file %s: %w", p.Path, err)
	}
	sum := sha256.Sum256(p.Content)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != p.Digest {
		return fmt.Errorf("file %s: content hashes to %s, not the step's digest %q (the task is damaged; nothing was placed)", p.Path, got, p.Digest)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	mode := fs.FileMode(p.Mode) & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if p.Mode == 0 {
		mode = 0o644
	}
	x.records.Lock()
	defer x.records.Unlock()
	files, err := readFiles(dir)
	if err != nil {
		return err
	}
	records, err := unpack.PlaceFile(sc.Root, p.Path, mode, p.Content)
	if err != nil {
		return fmt.Errorf("file %s under %s: %w", p.Path, sc.Root, err)
	}
	files[p.Path] = FileRecord{Digest: p.Digest, Placed: time.Now().UTC(), Records: mergeCreated(files[p.Path].Records, records)}
	if err := writeJSON(filesPath(dir), files); err != nil {
		return fmt.Errorf("file %s placed, but: %w", p.Path, err)
	}
	sc.Output("stdout", fmt.Sprintf("placed %s (%d bytes, mode %04o)", p.Path, len(p.Content), mode.Perm()))
	return nil
}
