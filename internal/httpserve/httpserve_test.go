package httpserve

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestStreamingOutlivesWriteTimeout: a handler that keeps writing finishes
// although the whole answer takes longer than the server's WriteTimeout; the
// same handler unwrapped is cut off.
func TestStreamingOutlivesWriteTimeout(t *testing.T) {
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range 8 {
			fmt.Fprintf(w, "chunk %d\n", i)
			http.NewResponseController(w).Flush()
			time.Sleep(100 * time.Millisecond) // a slow stream: the point is that it outlives the write timeout
		}
	})
	mux := http.NewServeMux()
	mux.Handle("/streaming", streaming(slow, 300*time.Millisecond))
	mux.Handle("/plain", slow)
	srv := New(mux, nil, nil)
	srv.WriteTimeout = 300 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	get := func(path string) (int, error) {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return len(b), err
	}
	if n, err := get("/streaming"); err != nil || n != 8*len("chunk 0\n") {
		t.Errorf("streaming: %d bytes, %v", n, err)
	}
	if n, err := get("/plain"); err == nil && n == 8*len("chunk 0\n") {
		t.Error("plain handler outlived the WriteTimeout: the test shows nothing")
	}
}

func TestNewSetsEveryBound(t *testing.T) {
	s := New(http.NotFoundHandler(), nil, nil)
	if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.WriteTimeout <= 0 || s.IdleTimeout <= 0 || s.MaxHeaderBytes <= 0 {
		t.Errorf("unbounded server: %+v", s)
	}
}
