// Package progress reports the progress of long image work (build, push, pull, save,
// load): bars on a terminal, plain log lines otherwise.
package progress

import (
	"io"
	"sync/atomic"
)

// Reporter starts one bar per unit of work (a layer, a blob, an archive).
type Reporter interface {
	// Start begins a bar; total is in bytes, or -1 when unknown.
	Start(name string, total int64) Bar
	// Wait flushes the display once all bars are done.
	Wait()
}

// Bar is one unit of work.
type Bar interface {
	Add(n int64)
	// Done ends the bar; err nil means success.
	Done(err error)
}

// Nop returns a Reporter that shows nothing.
func Nop() Reporter { return nop{} }

type nop struct{}

func (nop) Start(string, int64) Bar { return nopBar{} }
func (nop) Wait()                   {}

type nopBar struct{}

func (nopBar) Add(int64)  {}
func (nopBar) Done(error) {}

// OrNop returns r, or Nop when r is nil.
func OrNop(r Reporter) Reporter {
	if r == nil {
		return Nop()
	}
	return r
}

// Reader counts what passes through r onto b.
func Reader(r io.Reader, b Bar) io.Reader { return &countingReader{r: r, b: b} }

type countingReader struct {
	r io.Reader
	b Bar
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.b.Add(int64(n))
		c.n.Add(int64(n))
	}
	return n, err
}

// Writer counts what is written to it onto b.
func Writer(b Bar) io.Writer { return barWriter{b} }

type barWriter struct{ b Bar }

func (w barWriter) Write(p []byte) (int, error) { w.b.Add(int64(len(p))); return len(p), nil }
