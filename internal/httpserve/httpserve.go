// Package httpserve builds the HTTP servers flotilla listens with, so that every
// listener has the same bounds: a client that sends its headers byte by byte,
// never finishes its body or never reads the answer is cut off, whatever the handler.
package httpserve

import (
	"crypto/tls"
	"log"
	"net/http"
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
)

// New returns a server for h with the bounds above (tlsConf and errLog may be nil).
func New(h http.Handler, tlsConf *tls.Config, errLog *log.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          errLog,
	}
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
