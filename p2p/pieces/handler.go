package pieces

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/time/rate"
)

// MaxWait bounds how long a piece request may wait (?wait=) for the piece to
// land; a pipeline downstream asks its upstream ahead of time.
const MaxWait = 30 * time.Second

// HandlerOption configures NewHandler.
type HandlerOption func(*handler)

// WithUploadLimit caps the bytes per second the handler sends, summed over
// all requests, so serving peers cannot starve a production node. A nil
// limiter means no cap; build one with NewLimiter.
func WithUploadLimit(l *rate.Limiter) HandlerOption { return func(h *handler) { h.limit = l } }

// WithLogger sets where the handler logs refused or failed requests.
func WithLogger(l *slog.Logger) HandlerOption { return func(h *handler) { h.log = l } }

// WithAuthorize makes every request pass authorize(r, digest) first; an
// error is answered 403 with its text. Without it the handler serves
// whoever reached it (the TLS layer decides).
func WithAuthorize(authorize func(r *http.Request, d v1.Hash) error) HandlerOption {
	return func(h *handler) { h.authorize = authorize }
}

type handler struct {
	store     *Store
	limit     *rate.Limiter
	log       *slog.Logger
	authorize func(*http.Request, v1.Hash) error
	bufs      sync.Pool // chunk-sized buffers for serving pieces
}

// NewHandler serves the pieces the store holds:
//
//	GET /v1/pieces/<digest>            the bitfield of held pieces (application/octet-stream)
//	GET /v1/pieces/<digest>/<index>    one piece; ?wait=5s waits up to that long for it to land
//	GET /v1/blobs/<digest>             the complete blob, with Range support (for resumable whole-blob fetches)
//
// Mount it on an HTTPS server built with ServerTLSConfig: the handler itself
// does not authenticate.
func NewHandler(s *Store, opts ...HandlerOption) http.Handler {
	h := &handler{store: s, log: slog.Default(), bufs: sync.Pool{New: func() any { b := make([]byte, chunk); return &b }}}
	for _, o := range opts {
		o(h)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/pieces/{digest}", h.bitfield)
	mux.HandleFunc("GET /v1/pieces/{digest}/{index}", h.piece)
	mux.HandleFunc("GET /v1/blobs/{digest}", h.blob)
	return mux
}

// parseDigest reads the request's digest and authorizes the request for it.
func (h *handler) parseDigest(w http.ResponseWriter, r *http.Request) (v1.Hash, bool) {
	d, err := v1.NewHash(r.PathValue("digest"))
	if err != nil || d.Algorithm != "sha256" {
		http.Error(w, "bad digest: want sha256:<64 hex>", http.StatusBadRequest)
		return v1.Hash{}, false
	}
	if h.authorize != nil {
		// Blobs not held are not worth a check (nor a question to the tracker).
		if h.store.lookup(d) == nil {
			http.Error(w, "blob not held", http.StatusNotFound)
			return v1.Hash{}, false
		}
		if err := h.authorize(r, d); err != nil {
			http.Error(w, "forbidden: "+err.Error(), http.StatusForbidden)
			return v1.Hash{}, false
		}
	}
	return d, true
}

func (h *handler) bitfield(w http.ResponseWriter, r *http.Request) {
	d, ok := h.parseDigest(w, r)
	if !ok {
		return
	}
	p := h.store.lookup(d)
	if p == nil {
		http.Error(w, "blob not held", http.StatusNotFound)
		return
	}
	have := p.Have()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Piece-Count", strconv.Itoa(p.list.Count()))
	w.Write(have)
}

func (h *handler) piece(w http.ResponseWriter, r *http.Request) {
	d, ok := h.parseDigest(w, r)
	if !ok {
		return
	}
	i, err := strconv.Atoi(r.PathValue("index"))
	if err != nil || i < 0 {
		http.Error(w, "bad piece index", http.StatusBadRequest)
		return
	}
	var wait time.Duration
	if s := r.URL.Query().Get("wait"); s != "" {
		if wait, err = time.ParseDuration(s); err != nil || wait < 0 {
			http.Error(w, "bad wait: want a duration like 5s", http.StatusBadRequest)
			return
		}
		wait = min(wait, MaxWait)
	}
	p, err := h.waitPiece(r.Context(), d, i, wait)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	sr, err := p.pieceReader(i)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(sr.Size(), 10))
	// Straight from the file through one pooled chunk buffer: no allocation
	// of a whole piece per request (a seed serving 20 peers made 256 KiB of
	// garbage per piece served).
	bp := h.bufs.Get().(*[]byte)
	defer h.bufs.Put(bp)
	if err := copyLimited(r.Context(), w, sr, *bp, h.limit); err != nil {
		h.log.Debug("serve piece", "digest", d, "piece", i, "peer", r.RemoteAddr, "err", err)
	}
}

// copyLimited copies r to w one buffer at a time, waiting for the limiter (if any) before each write.
func copyLimited(ctx context.Context, w io.Writer, r io.Reader, buf []byte, l *rate.Limiter) error {
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := WaitN(ctx, l, n); err != nil {
				return err
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// waitPiece returns the blob once it holds piece i, waiting up to wait.
func (h *handler) waitPiece(ctx context.Context, d v1.Hash, i int, wait time.Duration) (*Partial, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		changed := h.store.changed() // before the check, so no landing is missed
		p := h.store.lookup(d)
		if p != nil && i >= p.list.Count() {
			return nil, fmt.Errorf("piece %d of %s: out of range 0..%d", i, d, p.list.Count()-1)
		}
		if p != nil && p.Has(i) {
			return p, nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return nil, fmt.Errorf("piece %d of %s not held", i, d)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (h *handler) blob(w http.ResponseWriter, r *http.Request) {
	d, ok := h.parseDigest(w, r)
	if !ok {
		return
	}
	p := h.store.lookup(d)
	if p == nil || !p.Complete() {
		http.Error(w, "blob not held complete", http.StatusNotFound)
		return
	}
	p.mu.Lock()
	f := p.f
	p.mu.Unlock()
	var rs io.ReadSeeker = io.NewSectionReader(f, 0, p.list.Size)
	if h.limit != nil {
		rs = &limitedReadSeeker{ctx: r.Context(), rs: rs, limit: h.limit}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, rs)
}

// chunk is the unit the rate limiters account in; limiter bursts are at least this.
const chunk = 64 << 10

// NewLimiter returns a limiter of bytesPerSec, or nil (no cap) for 0 or less.
func NewLimiter(bytesPerSec int64) *rate.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSec), int(max(chunk, bytesPerSec/20)))
}

// WaitN waits until l allows n bytes, in chunks that fit its burst; nil l returns at once.
func WaitN(ctx context.Context, l *rate.Limiter, n int) error {
	if l == nil {
		return nil
	}
	for n > 0 {
		c := min(n, l.Burst())
		if err := l.WaitN(ctx, c); err != nil {
			return err
		}
		n -= c
	}
	return nil
}

type limitedReadSeeker struct {
	ctx   context.Context
	rs    io.ReadSeeker
	limit *rate.Limiter
}

func (l *limitedReadSeeker) Read(b []byte) (int, error) {
	if len(b) > chunk {
		b = b[:chunk]
	}
	if err := WaitN(l.ctx, l.limit, len(b)); err != nil {
		return 0, errors.Join(err, io.ErrUnexpectedEOF)
	}
	return l.rs.Read(b)
}

func (l *limitedReadSeeker) Seek(off int64, whence int) (int64, error) {
	return l.rs.Seek(off, whence)
}
