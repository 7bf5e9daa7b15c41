package httpserve

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"
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

// serveCapped serves h on a loopback port with a cap of max connections, in
// TLS when tlsConf is set, and returns its address and the server.
func serveCapped(t *testing.T, h http.Handler, max int, tlsConf *tls.Config) (string, *Server) {
	t.Helper()
	srv := New(h, tlsConf, nil)
	srv.MaxConns = max
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if tlsConf != nil {
			_ = srv.ServeTLS(ln, "", "")
		} else {
			_ = srv.Serve(ln)
		}
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return ln.Addr().String(), srv
}

// selfSigned is a server certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pool
}

// TestCapClosesIdleConnectionsForNewClients: with the cap held by idle
// keep-alive connections (plain and TLS) or by connections that never sent a
// request, a new client is served at once and the server never holds more than
// the cap.
func TestCapClosesIdleConnectionsForNewClients(t *testing.T) {
	const max = 4
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	for _, tc := range []struct {
		name   string
		tls    bool
		silent bool // the idle connections never send a request
	}{
		{"keep-alive", false, false},
		{"keep-alive over TLS", true, false},
		{"never sent a request", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var conf *tls.Config
			tr := &http.Transport{MaxIdleConnsPerHost: -1}
			scheme := "http"
			if tc.tls {
				var pool *x509.CertPool
				conf, pool = selfSigned(t)
				tr.TLSClientConfig = &tls.Config{RootCAs: pool}
				scheme = "https"
			}
			addr, srv := serveCapped(t, ok, max, conf)
			var idle []net.Conn
			defer func() {
				for _, c := range idle {
					c.Close()
				}
			}()
			n := 3 * max // more than the cap, one after the other
			if tc.silent {
				n = max // they hold the cap
			}
			for range n {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				idle = append(idle, c)
				if tc.silent {
					continue
				}
				var rw io.ReadWriter = c
				if tc.tls {
					conf := tr.TLSClientConfig.Clone()
					conf.ServerName = "127.0.0.1"
					tc := tls.Client(c, conf)
					tc.SetDeadline(time.Now().Add(5 * time.Second))
					rw = tc
				}
				// One request, answered, then the connection idles (keep-alive).
				if _, err := io.WriteString(rw, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(bufio.NewReader(rw), nil)
				if err != nil {
					// Closed for a later one: what the cap is for.
					continue
				}
				resp.Body.Close()
				if n := srv.OpenConns(); n > max {
					t.Fatalf("%d connections open, cap %d", n, max)
				}
			}
			client := &http.Client{Transport: tr, Timeout: 3 * time.Second}
			start := time.Now()
			resp, err := client.Get(scheme + "://" + addr + "/")
			if err != nil {
				t.Fatalf("a new client at the cap: %v", err)
			}
			resp.Body.Close()
			// Keep-alive connections make room at once; silent ones once
			// they have sent nothing for NewConnGrace.
			if took := time.Since(start); took > NewConnGrace+time.Second {
				t.Errorf("a new client at the cap waited %s", took)
			}
			if n := srv.OpenConns(); n > max {
				t.Errorf("%d connections open, cap %d", n, max)
			}
		})
	}
}

// TestCapWaitsWhileEveryConnectionIsBusy: busy connections are never closed for
// a new client, which waits for one of them to end.
func TestCapWaitsWhileEveryConnectionIsBusy(t *testing.T) {
	release := make(chan struct{})
	addr, _ := serveCapped(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		_, _ = io.WriteString(w, "ok")
	}), 2, nil)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := c.Get("http://" + addr + "/slow")
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			errs <- err
		}()
	}
	quick := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * NewConnGrace}
	// Both slow requests in flight: a third client cannot get in.
	if err := poll.Until(context.Background(), 5*time.Second, 20*time.Millisecond, func() bool {
		resp, err := quick.Get("http://" + addr + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err != nil
	}); err != nil {
		t.Fatalf("a third client was served while two requests held the cap of 2: %v", err)
	}
	close(release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("a busy request was cut off: %v", err)
		}
	}
	quick.Timeout = 5 * time.Second
	resp, err := quick.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("after the busy requests ended: %v", err)
	}
	resp.Body.Close()
}
