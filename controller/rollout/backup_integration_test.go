package rollout_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/protocol"
)

// backupKubefile: masters hold a data file; BACKUP writes it plus 5 MiB of
// random bytes (more than a piece, so members fetch it peer to peer); four
// RESTORE stages log a timestamp per node (stages 2 on the masters and 3 on the
// worker copy $FLOTILLA_BACKUP), so the test sees their order and the barriers.
const backupKubefile = `FROM scratch
ON master RUN mkdir -p "$FLOTILLA_ROOT/var/lib/bk" && printf 'v1 %s\n' "$FLOTILLA_NODE" > "$FLOTILLA_ROOT/var/lib/bk/data"
ON node RUN true
ON master BACKUP cat "$FLOTILLA_ROOT/var/lib/bk/data" > "$FLOTILLA_BACKUP" && head -c 5242880 /dev/urandom >> "$FLOTILLA_BACKUP"
ON master RESTORE mkdir -p "$FLOTILLA_ROOT/var/lib/bkr" && echo "stage1 $(date +%s%N)" >> "$FLOTILLA_ROOT/var/lib/bkr/stages"
ON master RESTORE cp "$FLOTILLA_BACKUP" "$FLOTILLA_ROOT/var/lib/bkr/restored" && echo "stage2 $(date +%s%N)" >> "$FLOTILLA_ROOT/var/lib/bkr/stages"
ON node RESTORE mkdir -p "$FLOTILLA_ROOT/var/lib/bkr" && cp "$FLOTILLA_BACKUP" "$FLOTILLA_ROOT/var/lib/bkr/restored" && echo "stage3 $(date +%s%N)" >> "$FLOTILLA_ROOT/var/lib/bkr/stages"
ON master RESTORE echo "stage4 $(date +%s%N)" >> "$FLOTILLA_ROOT/var/lib/bkr/stages"
CMD test -s "$FLOTILLA_ROOT/var/lib/bk/data"
`

func (f *fleetT) cliJSON(v any, args ...string) {
	f.t.Helper()
	out, errOut, code := f.CLI(context.Background(), args...)
	if code != 0 {
		f.t.Fatalf("flotilla %v: exit %d\n%s\n%s", args, code, out, errOut)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		f.t.Fatalf("flotilla %v: output not JSON (%v):\n%s\n%s", args, err, out, errOut)
	}
}

// stageTimes reads a node's RESTORE log: stage name -> times it ran.
func (f *fleetT) stageTimes(node string) (order []string, at map[string][]int64) {
	at = map[string][]int64{}
	b, _ := os.ReadFile(f.root(node, "var/lib/bkr/stages"))
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		fs := strings.Fields(line)
		if len(fs) != 2 {
			continue
		}
		n, _ := strconv.ParseInt(fs[1], 10, 64)
		order = append(order, fs[0])
		at[fs[0]] = append(at[fs[0]], n)
	}
	return order, at
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// TestBackupRestoreAgents: a real controller and three agents (two masters, a
// worker). flotilla backup stores master0's backup as an artifact; a restore runs
// the four RESTORE stages in order with a barrier between them, every member
// getting the backup (verified) as $FLOTILLA_BACKUP; the health check runs
// after; flotilla status shows the restore. With master0 offline, the next
// master makes the backup.
func TestBackupRestoreAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a controller and agents")
	}
	f, st := startFleet(t, "m1", "m2", "w1")
	buildKubefile(t, st, "bk:1", backupKubefile)
	f.mustApply("-f", f.clusterfile("bk", "bk:1", []string{"m1", "m2"}, []string{"w1"}, ""))

	var b protocol.BackupResult
	f.cliJSON(&b, "backup", "bk", "-o", "json")
	if !strings.HasPrefix(b.Backup.Ref, "flotilla-backup/bk:") || b.Backup.Node != "m1" || b.Backup.Size < 5<<20 || b.Backup.Cluster != "bk" {
		t.Fatalf("backup = %+v", b)
	}
	t.Logf("backup of %d bytes in %s", b.Backup.Size, b.Duration)
	var list protocol.BackupList
	f.cliJSON(&list, "backups", "bk", "-o", "json")
	if len(list.Backups) != 1 || list.Backups[0].Digest != b.Backup.Digest {
		t.Fatalf("backups = %+v", list)
	}
	// The data changes after the backup; the restore brings the backup's bytes back.
	if err := os.WriteFile(f.root("m1", "var/lib/bk/data"), []byte("v2 m1\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	var res protocol.ApplyResult
	f.cliJSON(&res, "restore", "bk", "--from", b.Backup.Ref, "-o", "json")
	if !res.OK || len(res.Nodes) != 3 {
		t.Fatalf("restore: %s (health %q)", outcomeLine(&res), res.Health)
	}
	t.Logf("restore in %s", res.Duration)
	var stage1, stage2, stage3, stage4 []int64
	for _, n := range []string{"m1", "m2", "w1"} {
		if got := fileDigest(t, f.root(n, "var/lib/bkr/restored")); got != b.Backup.BlobDigest {
			t.Errorf("%s: $FLOTILLA_BACKUP was %s, the backup is %s", n, got, b.Backup.BlobDigest)
		}
		restored, _ := os.ReadFile(f.root(n, "var/lib/bkr/restored"))
		if !bytes.HasPrefix(restored, []byte("v1 m1\n")) {
			t.Errorf("%s: restored file starts %q, want master0's data at backup time", n, restored[:min(len(restored), 10)])
		}
		order, at := f.stageTimes(n)
		want := []string{"stage3"}
		if n != "w1" {
			want = []string{"stage1", "stage2", "stage4"}
		}
		if strings.Join(order, ",") != strings.Join(want, ",") {
			t.Errorf("%s ran %v, want %v (each once, in order)", n, order, want)
		}
		stage1, stage2 = append(stage1, at["stage1"]...), append(stage2, at["stage2"]...)
		stage3, stage4 = append(stage3, at["stage3"]...), append(stage4, at["stage4"]...)
	}
	maxOf := func(v []int64) int64 { sort.Slice(v, func(i, j int) bool { return v[i] < v[j] }); return v[len(v)-1] }
	minOf := func(v []int64) int64 { sort.Slice(v, func(i, j int) bool { return v[i] < v[j] }); return v[0] }
	if len(stage4) == 0 || maxOf(stage1) >= minOf(stage2) || maxOf(stage2) >= minOf(stage3) || maxOf(stage3) >= minOf(stage4) {
		t.Fatalf("stages overlap (no barrier): %v, %v, %v, %v", stage1, stage2, stage3, stage4)
	}
	if s := f.status("bk"); s.Rollout != res.Rollout || s.State != protocol.RolloutDone || s.Kind != "restore" {
		t.Errorf("status = rollout %s %s, want the restore %s done", s.Rollout, s.State, res.Rollout)
	}

	// Refused with a clear message: a backup that is not there.
	if out, errOut, code := f.CLI(context.Background(), "restore", "bk", "--from", "flotilla-backup/bk:19700101T000000Z"); code == 0 || !strings.Contains(errOut, "flotilla backups bk lists its backups") {
		t.Errorf("restore from a missing backup: exit %d\n%s\n%s", code, out, errOut)
	}

	// master0 offline: the next master makes the backup.
	f.Agents["m1"].Kill()
	f.WaitOnline(60*time.Second, false, "m1")
	var b2 protocol.BackupResult
	f.cliJSON(&b2, "backup", "bk", "-o", "json")
	if b2.Backup.Node != "m2" || len(b2.Tried) != 1 || !strings.Contains(b2.Tried[0], "m1: offline") {
		t.Errorf("backup with m1 offline = %+v", b2)
	}
}

// capturedBackups collects the backup payloads of the signed tasks a node
// receives, as that node would see them.
type capturedBackups struct {
	mu sync.Mutex
	p  []protocol.BackupPayload
}

func (c *capturedBackups) onTask(m *nats.Msg) {
	var env protocol.SignedEnvelope
	var task protocol.Task
	if json.Unmarshal(m.Data, &env) != nil || json.Unmarshal(env.Body, &task) != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range task.Steps {
		var p protocol.BackupPayload
		if s.Kind == protocol.KindBackup && json.Unmarshal(s.Payload, &p) == nil {
			c.p = append(c.p, p)
		}
	}
}

func (c *capturedBackups) n(i int) (protocol.BackupPayload, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.p) <= i {
		return protocol.BackupPayload{}, false
	}
	return c.p[i], true
}

func upload(t *testing.T, cl *http.Client, url, token, digest string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set(protocol.HeaderBackupDigest, digest)
	resp, err := cl.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return resp.StatusCode, string(b)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// TestHostileBackupUpload: while a's BACKUP command runs (it sleeps first), the
// test uploads to the controller's upload address a's task carries: with b's
// certificate and a's token (another node's token), with the token of a's
// previous backup (another backup's token), more bytes than the controller's
// --max-backup-bytes, and bytes that do not match the digest sent with them.
// Each is refused and logged naming the node, nothing is stored, and a's own
// upload goes through afterwards.
func TestHostileBackupUpload(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a controller and agents")
	}
	dir := t.TempDir()
	t.Setenv(store.EnvStore, filepath.Join(dir, "store"))
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	const limit = 1 << 20
	f := &fleetT{Fleet: controllertest.Start(t, "--max-backup-bytes", strconv.Itoa(limit)), t: t, dir: dir}
	f.StartAgent("a")
	f.StartAgent("b")
	f.WaitOnline(60*time.Second, true, "a", "b")
	buildKubefile(t, st, "slow:1", `FROM scratch
ON all RUN true
ON master BACKUP sleep "${BACKUP_SLEEP:-0}"; echo "backup of $FLOTILLA_NODE" > "$FLOTILLA_BACKUP"
`)
	cfPath := filepath.Join(dir, "slow.yaml")
	write := func(sleep int) {
		cf := fmt.Sprintf("apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: slow}\nspec:\n  image: slow:1\n  env: {BACKUP_SLEEP: \"%d\"}\n  hosts:\n    - {names: [a], roles: [master]}\n    - {names: [b], roles: [node]}\n", sleep)
		if err := os.WriteFile(cfPath, []byte(cf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	f.mustApply("-f", cfPath)

	nc, err := f.ConnectNode(f.AgentCredentials("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var got capturedBackups
	sub, err := nc.Subscribe(protocol.TaskSubject("a"), got.onTask)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	var first protocol.BackupResult
	f.cliJSON(&first, "backup", "slow", "-o", "json")

	write(8)
	f.mustApply("-f", cfPath)
	type result struct {
		out, errOut string
		code        int
	}
	done := make(chan result, 1)
	go func() {
		out, errOut, code := f.CLI(context.Background(), "backup", "slow", "-o", "json")
		done <- result{out, errOut, code}
	}()
	var cur protocol.BackupPayload
	if err := poll.Until(context.Background(), 30*time.Second, 20*time.Millisecond, func() bool {
		var ok bool
		cur, ok = got.n(1)
		return ok
	}); err != nil {
		t.Fatal("node a received no second backup task")
	}
	prev, _ := got.n(0)
	certOf := func(node string) *tls.Certificate {
		d := f.AgentDataDir(node)
		c, err := tls.LoadX509KeyPair(filepath.Join(d, "peer.crt"), filepath.Join(d, "peer.key"))
		if err != nil {
			t.Fatalf("peer certificate of %s: %v", node, err)
		}
		return &c
	}
	ca := f.CAPEM()
	asA, asB := nodeTLSClient(ca, certOf("a")), nodeTLSClient(ca, certOf("b"))
	small := []byte("forged backup\n")
	big := bytes.Repeat([]byte("x"), limit+1)
	for _, tc := range []struct {
		name       string
		cl         *http.Client
		token      string
		digest     string
		body       []byte
		code       int
		log1, log2 string
	}{
		{"another node's token", asB, cur.Token, sha(small), small, http.StatusForbidden, "certNode=b", "tokenNode=a"},
		{"another backup's token", asA, prev.Token, sha(small), small, http.StatusUnauthorized, "node=a", "not valid"},
		{"larger than the bound", asA, cur.Token, sha(big), big, http.StatusRequestEntityTooLarge, "node=a", "more than the"},
		{"bytes not matching the digest", asA, cur.Token, sha([]byte("something else")), small, http.StatusUnprocessableEntity, "node=a", "nothing was stored"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := upload(t, tc.cl, cur.URL, tc.token, tc.digest, tc.body)
			if code != tc.code {
				t.Fatalf("%d %.200s, want %d", code, body, tc.code)
			}
			if !f.Controller.WaitLog(10*time.Second, "refused", tc.log1, tc.log2) {
				t.Errorf("no refusal with %q and %q in the controller's log:\n%s", tc.log1, tc.log2, f.Controller.Tail())
			}
		})
	}
	r := <-done
	if r.code != 0 {
		t.Fatalf("a's own backup after the refused uploads: exit %d\n%s\n%s", r.code, r.out, r.errOut)
	}
	var list protocol.BackupList
	f.cliJSON(&list, "backups", "slow", "-o", "json")
	if len(list.Backups) != 2 {
		t.Fatalf("backups = %+v, want the two a made", list.Backups)
	}
	want := sha([]byte("backup of a\n"))
	for _, b := range list.Backups {
		if b.BlobDigest != want || b.Node != "a" {
			t.Errorf("stored backup %+v: want a's own (%s)", b, want)
		}
	}
	// Nothing of the forged bodies reached the store.
	for _, body := range [][]byte{small, big} {
		h := sha(body)
		if _, err := os.Stat(filepath.Join(dir, "store", "blobs", "sha256", strings.TrimPrefix(h, "sha256:"))); err == nil {
			t.Errorf("a refused upload (%s) is in the store", h)
		}
	}
}
