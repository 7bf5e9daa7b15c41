package blobserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/protocol"
)

// UploadPath is the HTTPS route agents upload backups to: PUT UploadPath+<id>.
const UploadPath = "/v1/uploads/"

// uploadDigest is what an upload token is minted over: the upload's id, never a
// blob digest, so a fetch token cannot upload and an upload token cannot fetch.
func uploadDigest(id string) string { return "upload:" + id }

var uploadIDRe = regexp.MustCompile(`^[a-f0-9]{32}$`)

// Upload is one upload the engine expects: from one node, once, at most
// MaxBytes, until Expires.
type Upload struct {
	ID    string
	Token string
	s     *Server
	p     *pendingUpload
}

// UploadResult is an upload that arrived whole and matched the digest the
// node sent with it: the file is staged in Txn (nothing is in the store yet).
// The engine commits it (or aborts Txn) and then calls Done with the outcome,
// which the node gets as the HTTP response.
type UploadResult struct {
	Node   string
	Txn    *store.Txn
	Digest v1.Hash
	Size   int64
	done   chan error
}

// Done answers the node: nil when the upload was stored.
func (r *UploadResult) Done(err error) { r.done <- err }

type pendingUpload struct {
	node    string
	max     int64
	expires time.Time
	busy    bool // an upload is arriving
	used    bool // one arrived whole and verified
	ch      chan *UploadResult
}

type uploads struct {
	mu sync.Mutex
	m  map[string]*pendingUpload
}

// ExpectUpload prepares an upload of at most maxBytes by node until expires,
// and mints its token. Close it when done with it.
func (s *Server) ExpectUpload(node string, maxBytes int64, expires time.Time) (*Upload, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("upload id: %w", err)
	}
	id := hex.EncodeToString(b)
	p := &pendingUpload{node: node, max: maxBytes, expires: expires, ch: make(chan *UploadResult, 1)}
	s.up.mu.Lock()
	if s.up.m == nil {
		s.up.m = map[string]*pendingUpload{}
	}
	s.up.m[id] = p
	s.up.mu.Unlock()
	return &Upload{ID: id, Token: s.tokens.create(node, uploadDigest(id), expires), s: s, p: p}, nil
}

// Path is the upload's route (UploadPath + ID).
func (u *Upload) Path() string { return UploadPath + u.ID }

// Wait returns the upload once it arrived whole and verified.
func (u *Upload) Wait(ctx context.Context) (*UploadResult, error) {
	select {
	case r := <-u.p.ch:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Result returns the channel an arrived upload comes on (for a select).
func (u *Upload) Result() <-chan *UploadResult { return u.p.ch }

// Close forgets the upload: a later PUT is refused.
func (u *Upload) Close() {
	u.s.up.mu.Lock()
	delete(u.s.up.m, u.ID)
	u.s.up.mu.Unlock()
	select {
	case r := <-u.p.ch: // arrived, never taken: drop it
		r.Txn.Abort()
		r.Done(errors.New("the controller gave up on this backup"))
	default:
	}
}

// UploadHandler serves PUT UploadPath+<id>: the node presenting its peer
// certificate (mutual TLS), with the token minted for this upload and this
// node, in the inventory now, a Content-Length within the upload's bound and
// the body's sha256 in protocol.HeaderBackupDigest. The body is staged and
// hashed as it arrives; nothing reaches the store unless it matches.
func (s *Server) UploadHandler() http.Handler { return http.HandlerFunc(s.serveUpload) }

func (s *Server) serveUpload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		w.Header().Set("Allow", "PUT")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	id := strings.TrimPrefix(r.URL.Path, UploadPath)
	if !uploadIDRe.MatchString(id) {
		http.Error(w, "bad upload id", http.StatusBadRequest)
		return
	}
	node, code, err := s.authorize(r, uploadDigest(id))
	if err != nil {
		if code == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="flotilla-uploads"`)
		}
		http.Error(w, err.Error(), code)
		return
	}
	refuse := func(code int, why string, args ...any) {
		s.refusals.Warn("node", node, "upload-"+http.StatusText(code), "backup upload refused: "+why, append([]any{"upload", id, "remote", r.RemoteAddr}, args...)...)
		http.Error(w, why, code)
	}
	s.up.mu.Lock()
	p := s.up.m[id]
	switch {
	case p == nil:
		s.up.mu.Unlock()
		refuse(http.StatusNotFound, "no such upload: the controller does not expect it (any more)")
		return
	case p.node != node:
		s.up.mu.Unlock()
		refuse(http.StatusForbidden, fmt.Sprintf("this upload is for node %s", p.node))
		return
	case p.used || p.busy:
		s.up.mu.Unlock()
		refuse(http.StatusConflict, "this upload was made already, or is arriving")
		return
	case s.now().After(p.expires):
		s.up.mu.Unlock()
		refuse(http.StatusGone, "this upload expired")
		return
	}
	// One upload at a time; a refused one leaves the upload open for the node's own.
	p.busy = true
	s.up.mu.Unlock()
	ok := false
	defer func() {
		s.up.mu.Lock()
		p.busy, p.used = false, p.used || ok
		s.up.mu.Unlock()
	}()

	want, err := protocol.ParseDigest(r.Header.Get(protocol.HeaderBackupDigest))
	if err != nil {
		refuse(http.StatusBadRequest, fmt.Sprintf("%s: %v", protocol.HeaderBackupDigest, err))
		return
	}
	switch {
	case r.ContentLength < 0:
		refuse(http.StatusLengthRequired, "Content-Length is required")
		return
	case r.ContentLength > p.max:
		refuse(http.StatusRequestEntityTooLarge, fmt.Sprintf("the backup is %d bytes, more than the %d this upload may have", r.ContentLength, p.max), "bytes", r.ContentLength)
		return
	}
	tx, err := s.store.Begin(r.Context())
	if err != nil {
		http.Error(w, "stage the upload: "+err.Error(), http.StatusInternalServerError)
		return
	}
	bw, err := tx.NewBlob()
	if err != nil {
		tx.Abort()
		http.Error(w, "stage the upload: "+err.Error(), http.StatusInternalServerError)
		return
	}
	// Never more than Content-Length (itself within the bound) is read. The
	// server's ReadTimeout bounds a whole request: an upload instead gets
	// uploadStall for every read, so a large backup arrives while a node that
	// stops sending is cut off.
	rc := http.NewResponseController(w)
	body := &deadlineReader{r: io.LimitReader(r.Body, r.ContentLength), rc: rc}
	n, err := io.Copy(bw, body)
	if err != nil || n != r.ContentLength {
		bw.Abort()
		tx.Abort()
		refuse(http.StatusBadRequest, fmt.Sprintf("the upload ended after %d of %d bytes: %v", n, r.ContentLength, err))
		return
	}
	got, size, err := bw.Close()
	if err != nil {
		tx.Abort()
		http.Error(w, "stage the upload: "+err.Error(), http.StatusInternalServerError)
		return
	}
	if got.String() != string(want) {
		tx.Abort()
		refuse(http.StatusUnprocessableEntity, fmt.Sprintf("the upload hashes to %s, not the %s the node sent with it: nothing was stored", got, want))
		return
	}
	res := &UploadResult{Node: node, Txn: tx, Digest: got, Size: size, done: make(chan error, 1)}
	ok = true
	p.ch <- res // buffered 1, and used admits one upload
	s.log.Info("backup uploaded", "node", node, "upload", id, "digest", got, "bytes", size)
	select {
	case err = <-res.done:
	case <-time.After(2 * time.Minute):
		err = errors.New("the controller did not store the backup in time")
	case <-r.Context().Done():
		return
	}
	_ = rc.SetWriteDeadline(time.Now().Add(uploadStall))
	if err != nil {
		http.Error(w, "store the backup: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusCreated)
}

// uploadStall is how long an upload may send nothing.
const uploadStall = 30 * time.Second

// deadlineReader extends the connection's read deadline before every read.
type deadlineReader struct {
	r  io.Reader
	rc *http.ResponseController
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	_ = d.rc.SetReadDeadline(time.Now().Add(uploadStall))
	return d.r.Read(p)
}
