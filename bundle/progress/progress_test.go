package progress

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

type countBar struct {
	n    int64
	done bool
	err  error
}

func (c *countBar) Add(n int64)    { c.n += n }
func (c *countBar) Done(err error) { c.done, c.err = true, err }

func TestReaderAndWriterCount(t *testing.T) {
	b := &countBar{}
	n, err := io.Copy(Writer(b), Reader(strings.NewReader(strings.Repeat("x", 1000)), b))
	if err != nil || n != 1000 {
		t.Fatal(n, err)
	}
	if b.n != 2000 {
		t.Errorf("counted %d bytes, want 2000 (1000 read + 1000 written)", b.n)
	}
}

func TestNewOnNonTerminalLogsLines(t *testing.T) {
	r := New(&bytes.Buffer{})
	if _, ok := r.(*lines); !ok {
		t.Fatalf("New(buffer) = %T, want log lines", r)
	}
	bar := r.Start("x", 10)
	bar.Add(10)
	bar.Done(errors.New("boom"))
	r.Wait()
	if OrNop(nil) == nil {
		t.Fatal("OrNop(nil) returned nil")
	}
}
