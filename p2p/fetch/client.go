package fetch

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// NewClient returns an HTTP client for piece servers and the tracker with
// the agent's mTLS config (pieces.ClientTLSConfig). HTTP/1.1 on purpose:
// each piece in flight gets its own TCP connection, so one slow piece does
// not hold up the others behind it.
func NewClient(cfg *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:       cfg,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		TLSHandshakeTimeout:   5 * time.Second,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // pieces asked ahead may wait; the fetcher's stall timer bounds it
	}}
}

var (
	errNotHeld = errors.New("peer does not hold the piece")
	errStalled = errors.New("peer stalled")
	// errImpostor: the server is not the peer the tracker named.
	errImpostor = errors.New("peer is not who the tracker says")
)

// readChunk is how much of a piece is read between stall-timer resets and
// download-limit waits.
const readChunk = 64 << 10

// getPiece fetches piece i from peer. The returned data is only valid until
// release is called. A short or long body wraps pieces.ErrPieceMismatch: a
// peer sending the wrong number of bytes serves a wrong piece.
func (f *Fetcher) getPiece(ctx context.Context, peer pieces.Peer, list pieces.PieceList, i int, ahead bool) ([]byte, func(), error) {
	var wait time.Duration
	url := fmt.Sprintf("%s/v1/pieces/%s/%d", peer.Addr, list.Digest, i)
	if ahead {
		wait = f.opts.WaitAhead
		url += "?wait=" + wait.String()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ctx, cancelT := context.WithTimeoutCause(ctx, wait+f.opts.PieceTimeout, errStalled)
	defer cancelT()
	stall := time.AfterFunc(wait+f.opts.StallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	fail := func(err error) ([]byte, func(), error) {
		if c := context.Cause(ctx); c != nil && errors.Is(c, errStalled) {
			err = errStalled
		}
		return nil, nil, fmt.Errorf("piece %d from %s (%s): %w", i, peer.ID, peer.Addr, err)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fail(err)
	}
	resp, err := f.opts.Client.Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	if f.opts.VerifyPeer != nil {
		if err := f.opts.VerifyPeer(peer, resp.TLS); err != nil {
			return fail(fmt.Errorf("%w: %v", errImpostor, err))
		}
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return fail(errNotHeld)
	default:
		return fail(fmt.Errorf("status %s", resp.Status))
	}
	n := list.Len(i)
	if resp.ContentLength != n {
		return fail(fmt.Errorf("%d bytes announced, want %d: %w", resp.ContentLength, n, pieces.ErrPieceMismatch))
	}
	pool := f.pool(list.PieceSize)
	bufp := pool.Get().(*[]byte)
	release := func() { pool.Put(bufp) }
	buf := (*bufp)[:n]
	for off := int64(0); off < n; {
		c := min(readChunk, n-off)
		if err := pieces.WaitN(ctx, f.opts.DownloadLimit, int(c)); err != nil {
			release()
			return fail(err)
		}
		stall.Reset(f.opts.StallTimeout)
		m, err := io.ReadFull(resp.Body, buf[off:off+c])
		off += int64(m)
		if err != nil {
			release()
			return fail(err)
		}
	}
	return buf, release, nil
}

func (f *Fetcher) pool(size int64) *sync.Pool {
	if p, ok := f.bufs.Load(size); ok {
		return p.(*sync.Pool)
	}
	p, _ := f.bufs.LoadOrStore(size, &sync.Pool{New: func() any { b := make([]byte, size); return &b }})
	return p.(*sync.Pool)
}
