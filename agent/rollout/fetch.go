package rollout

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/cavaliergopher/grab/v3"
	"golang.org/x/time/rate"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/protocol"
)

// peerCertWait is how long a fetch from the controller waits for the agent's
// peer certificate to be there.
const peerCertWait = 30 * time.Second

// HTTPClient returns an HTTPS client that trusts only the controller CA of the
// agent whose data dir is dataDir and presents the agent's peer certificate:
// the controller's blob server serves a blob only to the node its token was
// made for, identified by that certificate (mutual TLS).
func HTTPClient(dataDir string) (*http.Client, error) {
	caPEM, err := agent.CAPEM(dataDir)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("controller CA of the agent in %s: no certificate in its PEM", dataDir)
	}
	// Read at each handshake: the certificate is renewed at half-life, and an
	// agent that joined without one (the controller's local agent) asks for
	// it when it starts, so a first task may come before it is there.
	clientCert := func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		var cert *tls.Certificate
		err := poll.Until(context.Background(), peerCertWait, 100*time.Millisecond, func() bool {
			c, err := agent.PeerCertificate(dataDir)
			cert = c
			return err == nil
		})
		if err != nil {
			_, err = agent.PeerCertificate(dataDir)
			return nil, fmt.Errorf("the controller serves blobs only to a node presenting its peer certificate, and none came within %s: %w", peerCertWait, err)
		}
		return cert, nil
	}
	return &http.Client{Transport: &http.Transport{
		Proxy:                 nil, // the controller is reached directly, never through a proxy
		TLSClientConfig:       &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, GetClientCertificate: clientCert},
		DisableCompression:    true, // blobs are served as stored
		ResponseHeaderTimeout: 30 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		IdleConnTimeout:       90 * time.Second,
	}}, nil
}

// fetchHTTPS GETs p.URL from the controller over HTTPS (trusting only the
// agent's CA) with "Authorization: Bearer p.Token", resuming what dst holds,
// and leaves the digest check to the layer executor. A download that receives
// nothing for StallTimeout ends.
func (x *steps) fetchHTTPS(ctx context.Context, sc *agent.StepContext, p protocol.LayerPayload, dst string) error {
	if p.URL == "" {
		return errors.New("the step has no blob URL")
	}
	client, err := HTTPClient(sc.DataDir)
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	req, err := grab.NewRequest(dst, p.URL)
	if err != nil {
		return fmt.Errorf("blob URL %q: %w", redactURL(p.URL), err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req = req.WithContext(ctx)
	req.HTTPRequest.Header.Set("Authorization", "Bearer "+p.Token)
	req.NoCreateDirectories = true
	req.IgnoreRemoteTime = true
	if p.Size > 0 {
		req.Size = p.Size
	}
	if p.MaxDownload > 0 {
		burst := int(min(max(p.MaxDownload/10, 4<<10), 32<<10))
		req.RateLimiter = rate.NewLimiter(rate.Limit(p.MaxDownload), burst)
		req.BufferSize = min(32<<10, burst)
	}
	gc := grab.NewClient()
	gc.HTTPClient = client
	gc.UserAgent = "flotilla-agent"
	resp := gc.Do(req)
	total := func() int64 {
		if p.Size > 0 {
			return p.Size
		}
		return max(resp.Size(), 0)
	}
	progressEvery, stallTimeout := x.opts.ProgressEvery, x.opts.StallTimeout
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	last, lastChange := int64(-1), time.Now()
wait:
	for {
		select {
		case <-tick.C:
			done := resp.BytesComplete()
			if done != last {
				sc.Progress(done, total(), "fetch")
				last, lastChange = done, time.Now()
			} else if time.Since(lastChange) > stallTimeout {
				cancel(fmt.Errorf("no data for %s", stallTimeout))
			}
		case <-resp.Done:
			break wait
		}
	}
	if err := resp.Err(); err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) && !errors.Is(cause, context.DeadlineExceeded) {
			return fmt.Errorf("GET %s: %w (%d bytes received)", redactURL(p.URL), cause, resp.BytesComplete())
		}
		return fmt.Errorf("GET %s: %w", redactURL(p.URL), explainFetch(err))
	}
	sc.Progress(resp.BytesComplete(), total(), "fetch")
	return nil
}

// explainFetch says what an HTTP status from the controller means.
func explainFetch(err error) error {
	var sce grab.StatusCodeError
	if !errors.As(err, &sce) {
		if errors.Is(err, grab.ErrBadLength) {
			return fmt.Errorf("%w: the server's size differs from the layer's", err)
		}
		return err
	}
	code := int(sce)
	what := fmt.Sprintf("HTTP %d %s", code, http.StatusText(code))
	switch code {
	case http.StatusUnauthorized:
		return fmt.Errorf("%s: the controller refused the layer token (it lasts as long as the task: apply again)", what)
	case http.StatusForbidden:
		return fmt.Errorf("%s: the controller refused this node (is it still in the inventory? `flotilla nodes`), or its peer certificate; see the controller's log", what)
	case http.StatusNotFound:
		return fmt.Errorf("%s: the controller does not have this blob (was the image removed from its store?)", what)
	}
	return errors.New(what)
}

// redactURL drops a query (which may carry credentials) from a URL for messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	u.RawQuery, u.User = "", nil
	return u.String()
}
