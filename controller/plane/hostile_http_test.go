package plane_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Issue 12, findings 8, 9 and 10 against a real controller process.

func tlsDial(t *testing.T, f *controllertest.Fleet) net.Conn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.CAPEM())
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", fmt.Sprintf("127.0.0.1:%d", f.HTTPPort), &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	return c
}

// closedWithin reads from c until the server closes it and reports how long that took.
func closedWithin(c net.Conn, start time.Time, limit time.Duration) (time.Duration, bool) {
	_ = c.SetReadDeadline(time.Now().Add(limit))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		return time.Since(start), false // still open at the limit: our deadline, not the server's
	}
	return time.Since(start), true
}

// TestHostileSlowloris: connections that send their headers a byte at a time,
// or never finish the TLS handshake, are closed by the controller after its
// read-header timeout, and a real agent joins meanwhile.
func TestHostileSlowloris(t *testing.T) {
	skipShort(t)
	const timeout = 2 * time.Second
	f := controllertest.StartWith(t, "--http-read-header-timeout", timeout.String())
	if st, err := os.Stat(f.ControllerDir()); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("controller data dir: %v %v, want mode 0700", st.Mode(), err)
	}
	const slow, silent = 40, 10
	start := time.Now()
	type result struct {
		took   time.Duration
		closed bool
	}
	results := make(chan result, slow+silent)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range slow {
		c := tlsDial(t, f)
		defer c.Close()
		wg.Add(1)
		go func() { // a byte every 100ms: forever, unless the server hangs up
			defer wg.Done()
			req := []byte("POST /v1/join HTTP/1.1\r\nHost: controller\r\nX-Pad: " + strings.Repeat("a", 1000))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				if _, err := c.Write(req[i%len(req) : i%len(req)+1]); err != nil {
					return
				}
			}
		}()
		go func() {
			took, closed := closedWithin(c, start, 20*time.Second)
			results <- result{took, closed}
		}()
	}
	for range silent { // TCP only, no TLS handshake
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", f.HTTPPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			took, closed := closedWithin(c, start, 20*time.Second)
			results <- result{took, closed}
		}()
	}

	// Meanwhile a real agent joins and runs a command.
	f.StartAgent("real1")
	f.WaitOnline(20*time.Second, true, "real1")
	joined := time.Since(start)
	if out, errOut, code := f.CLI(context.Background(), "exec", "--node", "real1", "--", "echo", "ok"); code != 0 {
		t.Errorf("exec during the slowloris: exit %d %s %s", code, out, errOut)
	}

	var worst time.Duration
	for range slow + silent {
		r := <-results
		if !r.closed {
			t.Errorf("a slow connection is still open after %s", r.took.Round(time.Millisecond))
		}
		worst = max(worst, r.took)
	}
	close(stop)
	wg.Wait()
	if worst > timeout+5*time.Second {
		t.Errorf("slowest close after %s, want about the %s read-header timeout", worst, timeout)
	}
	t.Logf("%d slowloris + %d silent connections closed within %s (read-header timeout %s); real agent online after %s",
		slow, silent, worst.Round(time.Millisecond), timeout, joined.Round(time.Millisecond))
}

// TestJoinConcurrencyCap: with --max-concurrent-joins 1, a join in flight (its
// body trickling in) makes the next one get 503 at once; an agent started then
// retries and joins once the slot is free.
func TestJoinConcurrencyCap(t *testing.T) {
	skipShort(t)
	ctx := context.Background()
	f := controllertest.StartWith(t, "--max-concurrent-joins", "1")
	tok, _ := f.Token()
	big := `{"token":"` + strings.Repeat("a", protocol.MaxJoinRequestBytes) + `"}`
	if code, body, err := f.PostJoinRaw(ctx, []byte(big)); err != nil || code != http.StatusRequestEntityTooLarge {
		t.Errorf("join body over %d bytes: HTTP %d %s %v, want 413", protocol.MaxJoinRequestBytes, code, body, err)
	}
	hold := tlsDial(t, f)
	defer hold.Close()
	fmt.Fprintf(hold, "POST %s HTTP/1.1\r\nHost: controller\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{", protocol.PathJoin)
	var code int
	var body []byte
	// The held request reaches the handler a moment after its headers.
	busy := func() bool {
		t0 := time.Now()
		var err error
		code, body, err = f.PostJoin(ctx, protocol.JoinRequest{Token: tok, Name: "n1", Facts: honestFacts()})
		if err != nil {
			t.Fatal(err)
		}
		if code != http.StatusServiceUnavailable {
			return false
		}
		if d := time.Since(t0); d > 2*time.Second {
			t.Errorf("503 took %s", d)
		}
		return true
	}
	if err := poll.Until(ctx, 10*time.Second, 50*time.Millisecond, busy); err != nil {
		t.Fatalf("no 503 while a join is in flight: HTTP %d %s", code, body)
	}
	if !strings.Contains(string(body), "retry later") {
		t.Errorf("503 body: %s", body)
	}
	if !f.Controller.WaitLog(5*time.Second, "too many joins in flight") {
		t.Error("503 not logged")
	}
	// n1 was refused above before the token was looked at: join it for real now.
	agent := f.StartAgent("n2")
	if !agent.WaitLog(15*time.Second, "join failed, retrying", "controller busy") {
		t.Error("the agent did not meet the cap and retry")
	}
	hold.Close()
	f.WaitOnline(30*time.Second, true, "n2")
}

// TestJoinRateLimit: a source over --join-rate/--join-burst gets 429 with
// Retry-After before the controller reads a token, and the log names it.
func TestJoinRateLimit(t *testing.T) {
	skipShort(t)
	ctx := context.Background()
	f := controllertest.StartWith(t, "--join-rate", "0.01", "--join-burst", "3")
	for i := range 3 {
		code, body, err := f.PostJoinRaw(ctx, []byte(`{"token":"x","name":"n","facts":{}}`))
		if err != nil || code != http.StatusForbidden {
			t.Fatalf("join %d within the burst: HTTP %d %s %v", i, code, body, err)
		}
	}
	r, _ := http.NewRequest(http.MethodPost, f.HTTPURL()+protocol.PathJoin, strings.NewReader(`{}`))
	resp, err := f.HTTPClient().Do(r)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("fourth join: HTTP %d Retry-After %q, want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if !f.Controller.WaitLog(5*time.Second, "too many joins from this address", "remote=127.0.0.1:") {
		t.Error("rate limit not logged with the source address")
	}
	// A flood is refused without flooding the log.
	for range 100 {
		if code, _, err := f.PostJoinRaw(ctx, []byte(`{}`)); err != nil || code != http.StatusTooManyRequests {
			t.Fatalf("flood: HTTP %d %v", code, err)
		}
	}
	if data, _ := os.ReadFile(f.Controller.Log); strings.Count(string(data), "too many joins from this address") > 1 {
		t.Errorf("the flood logged %d refusals, want 1 per 10s", strings.Count(string(data), "too many joins from this address"))
	}
}
