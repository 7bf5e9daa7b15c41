// Package httpserve builds the HTTP servers flotilla listens with, so that every
// listener has the same bounds: a client that sends its headers byte by byte,
// never finishes its body or never reads the answer is cut off, whatever the
// handler, and clients that connect and then sit idle cannot use up the process's
// file descriptors or lock real clients out (a connection cap that closes the
// longest-idle connection when a new client arrives at the cap).
package httpserve

import (
	"crypto/tls"
	"errors"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// Bounds of every server New returns.
const (
	// ReadHeaderTimeout is how long a client has to send the request line and
	// headers (and, with TLS, to finish the handshake).
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout is how long a client has to send the whole request.
	ReadTimeout = 30 * time.Second
	// WriteTimeout bounds writing a response; Streaming handlers instead get
	// WriteTimeout for every write, so long downloads work while a client that
	// stops reading is still cut off.
	WriteTimeout = 30 * time.Second
	// IdleTimeout closes keep-alive connections with no request in flight.
	IdleTimeout = 90 * time.Second
	// MaxHeaderBytes caps the request line and headers.
	MaxHeaderBytes = 32 << 10
	// DefaultMaxConns caps a server's open connections unless Server.MaxConns
	// says otherwise.
	DefaultMaxConns = 1024
	// MetricsMaxConns is the cap of a metrics listener: one or two scrapers.
	MetricsMaxConns = 32
	// NewConnGrace is how long a connection may stay open without sending a
	// request before it counts as idle when the cap is reached. A real client
	// sends its request at once; this only keeps the cap from closing a
	// connection that was accepted a moment ago.
	NewConnGrace = time.Second
)

// Server is an http.Server with the bounds above and a connection cap. Serve and
// ServeTLS accept at most MaxConns connections at once. When a new client arrives
// at the cap, the connection idle longest is closed to make room for it: a
// keep-alive connection between requests, or one that has sent nothing for
// NewConnGrace. When every connection is busy with a request, the new client
// waits until one ends (requests are bounded by the timeouts). So idle
// connections cost at most MaxConns file descriptors and never lock a new
// client out. Do not set ConnState: the cap needs it.
type Server struct {
	http.Server
	// MaxConns caps open connections (0: DefaultMaxConns). Set it before Serve.
	MaxConns int
	// Logger gets a line, at most one per LogEvery, when the cap closes idle
	// connections or makes new clients wait (nil: slog.Default()).
	Logger *slog.Logger

	once sync.Once
	t    *tracker
}

// LogEvery is how often a server at its connection cap logs.
const LogEvery = 10 * time.Second

// New returns a server for h with the bounds above (tlsConf and errLog may be nil).
func New(h http.Handler, tlsConf *tls.Config, errLog *log.Logger) *Server {
	s := &Server{Server: http.Server{
		Handler:           h,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          errLog,
	}}
	s.Server.ConnState = s.connState
	return s
}

func (s *Server) tracker() *tracker {
	s.once.Do(func() {
		n := s.MaxConns
		if n <= 0 {
			n = DefaultMaxConns
		}
		lg := s.Logger
		if lg == nil {
			lg = slog.Default()
		}
		s.t = &tracker{max: n, grace: NewConnGrace, log: lg, conns: map[*conn]struct{}{}, freed: make(chan struct{}, 1)}
	})
	return s.t
}

// Serve serves on l with the connection cap.
func (s *Server) Serve(l net.Listener) error {
	return s.Server.Serve(s.tracker().listener(l))
}

// ServeTLS serves TLS on l with the connection cap (see http.Server.ServeTLS).
func (s *Server) ServeTLS(l net.Listener, certFile, keyFile string) error {
	return s.Server.ServeTLS(s.tracker().listener(l), certFile, keyFile)
}

// ListenAndServe listens on Addr and serves with the connection cap.
func (s *Server) ListenAndServe() error {
	l, err := listen(s.Addr, ":http")
	if err != nil {
		return err
	}
	return s.Serve(l)
}

// ListenAndServeTLS listens on Addr and serves TLS with the connection cap.
func (s *Server) ListenAndServeTLS(certFile, keyFile string) error {
	l, err := listen(s.Addr, ":https")
	if err != nil {
		return err
	}
	return s.ServeTLS(l, certFile, keyFile)
}

func listen(addr, def string) (net.Listener, error) {
	if addr == "" {
		addr = def
	}
	return net.Listen("tcp", addr)
}

// OpenConns is how many connections the server holds open now.
func (s *Server) OpenConns() int {
	t := s.tracker()
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

func (s *Server) connState(nc net.Conn, st http.ConnState) {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	if c, ok := nc.(*conn); ok {
		c.t.setState(c, st)
	}
}

// tracker counts a server's connections and picks which to close at the cap.
type tracker struct {
	max   int
	grace time.Duration
	log   *slog.Logger

	mu    sync.Mutex
	conns map[*conn]struct{}
	// freed gets a token when a connection closes (wakes a waiting Accept).
	freed chan struct{}
	// Counted since the last log line.
	evicted, waited int
	lastLog         time.Time
}

// conn is an accepted connection; its state fields are guarded by tracker.mu.
type conn struct {
	net.Conn
	t     *tracker
	once  sync.Once
	state http.ConnState
	since time.Time
}

// Close closes the connection and frees its slot (once, whoever closes it).
func (c *conn) Close() error {
	c.once.Do(func() { c.t.remove(c) })
	return c.Conn.Close()
}

func (t *tracker) listener(l net.Listener) net.Listener {
	return &capListener{Listener: l, t: t, done: make(chan struct{})}
}

func (t *tracker) setState(c *conn, st http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.conns[c]; ok && c.state != st {
		c.state, c.since = st, time.Now()
	}
}

func (t *tracker) remove(c *conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	select {
	case t.freed <- struct{}{}:
	default:
	}
}

// victim is the connection to close for a new client: the one idle longest
// between requests, else the one that has sent nothing for longest (at least
// grace); nil when every connection is busy. Called with t.mu held.
func (t *tracker) victim(now time.Time) *conn {
	var idle, fresh *conn
	for c := range t.conns {
		switch c.state {
		case http.StateIdle:
			if idle == nil || c.since.Before(idle.since) {
				idle = c
			}
		case http.StateNew:
			if now.Sub(c.since) >= t.grace && (fresh == nil || c.since.Before(fresh.since)) {
				fresh = c
			}
		}
	}
	if idle != nil {
		return idle
	}
	return fresh
}

// admit registers c, first closing idle connections or waiting while the
// server is at its cap; it gives up when the listener closes.
func (t *tracker) admit(c *conn, done <-chan struct{}) error {
	for waited := false; ; {
		now := time.Now()
		t.mu.Lock()
		if len(t.conns) < t.max {
			c.state, c.since = http.StateNew, now
			t.conns[c] = struct{}{}
			t.mu.Unlock()
			return nil
		}
		v := t.victim(now)
		var vAddr string
		var vIdle time.Duration
		if v != nil {
			t.evicted++
			vAddr, vIdle = v.RemoteAddr().String(), now.Sub(v.since)
		} else if !waited {
			waited = true
			t.waited++
		}
		logNow := now.Sub(t.lastLog) >= LogEvery
		evicted, waits := t.evicted, t.waited
		if logNow {
			t.lastLog, t.evicted, t.waited = now, 0, 0
		}
		t.mu.Unlock()
		if logNow {
			// Rate-limited: a flood of connections gives one line per LogEvery.
			t.log.Warn("connection cap reached: the longest-idle connection is closed for a new client, or it waits while all are busy",
				"cap", t.max, "client", c.RemoteAddr().String(), "closed", vAddr, "closed_idle_for", vIdle.Round(time.Millisecond),
				"idle_closed_since_last_line", evicted, "clients_waited_since_last_line", waits)
		}
		if v != nil {
			_ = v.Close()
			continue
		}
		// Every connection is busy: wait for one to close, or for a silent
		// new one to pass its grace.
		timer := time.NewTimer(t.grace / 4)
		select {
		case <-t.freed:
		case <-timer.C:
		case <-done:
			timer.Stop()
			return net.ErrClosed
		}
		timer.Stop()
	}
}

// capListener admits each accepted connection through its tracker.
type capListener struct {
	net.Listener
	t         *tracker
	done      chan struct{}
	closeOnce sync.Once
}

func (l *capListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := &conn{Conn: nc, t: l.t}
	if err := l.t.admit(c, l.done); err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

func (l *capListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	err := l.Listener.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Streaming lets h answer for as long as it keeps writing: every write must
// finish within WriteTimeout of its start, instead of the whole response
// within the server's WriteTimeout. Blob and piece downloads are wrapped with it.
func Streaming(h http.Handler) http.Handler { return streaming(h, WriteTimeout) }

func streaming(h http.Handler, perWrite time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &streamWriter{ResponseWriter: w, rc: http.NewResponseController(w), perWrite: perWrite}
		sw.extend()
		h.ServeHTTP(sw, r)
		sw.extend() // for the final flush after the handler returns
	})
}

type streamWriter struct {
	http.ResponseWriter
	rc       *http.ResponseController
	perWrite time.Duration
}

func (s *streamWriter) extend() { _ = s.rc.SetWriteDeadline(time.Now().Add(s.perWrite)) }

func (s *streamWriter) Write(p []byte) (int, error) {
	s.extend()
	return s.ResponseWriter.Write(p)
}

// Flush keeps http.Flusher working through the wrapper.
func (s *streamWriter) Flush() {
	s.extend()
	_ = s.rc.Flush()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (s *streamWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
