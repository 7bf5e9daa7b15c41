package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
	"github.com/flotilla-dev/flotilla/protocol"
)

// ErrJoinRefused wraps the controller's reason for refusing a join.
var ErrJoinRefused = errors.New("controller refused the join")

// errUnreachable marks join failures worth retrying (network, not refusal).
var errUnreachable = errors.New("controller unreachable")

// errBusy marks a join the controller asked to retry later (HTTP 429 or 503:
// too many joins from this address or in flight).
var errBusy = errors.New("controller busy")

// NormalizeControllerURL turns HOST, HOST:PORT or https://HOST:PORT into the
// controller's HTTPS base URL (default port 9443).
func NormalizeControllerURL(s string) (string, error) {
	if s == "" {
		return "", optionErr("Controller", errors.New("no controller address: give its join address https://HOST:9443"))
	}
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "", optionErr("Controller", fmt.Errorf("controller address %q: want https://HOST:9443", s))
	}
	if u.Scheme != "https" {
		return "", optionErr("Controller", fmt.Errorf("controller address %q: the agent joins over https://", s))
	}
	if u.Port() == "" {
		u.Host += ":9443"
	}
	return "https://" + u.Host, nil
}

// fetchCA downloads /v1/ca.crt without trusting the server yet, then checks
// the exact bytes against the pinned hash (or compares them to caFile's).
func fetchCA(ctx context.Context, base, caHash, caFile string) ([]byte, error) {
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, optionErr("CAFile", fmt.Errorf("CA file: %w", err))
		}
		return pem, nil
	}
	if caHash == "" {
		return nil, optionErr("CAHash", errors.New("no way to trust the controller: give the CA hash sha256:… (printed by `flotilla token create`) or the CA file"))
	}
	want, err := protocol.ParseCAHash(caHash)
	if err != nil {
		return nil, optionErr("CAHash", err)
	}
	cl := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // pinned by hash below
	}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+protocol.PathCACert, nil)
	resp, err := cl.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch CA from %s: %w: %w", base, errUnreachable, err)
	}
	defer resp.Body.Close()
	pem, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch CA from %s: HTTP %d %v", base, resp.StatusCode, err)
	}
	if got := protocol.CAHash(pem); got != want {
		return nil, fmt.Errorf("CA served by %s has hash %s, not the pinned %s: wrong address or someone in the middle", base, got, want)
	}
	return pem, nil
}

// join exchanges a token for credentials over HTTPS verified by the pinned CA.
func join(ctx context.Context, base, token, caHash, caFile, name, dataDir string, facts protocol.Facts) (*protocol.Credentials, error) {
	if token == "" {
		return nil, optionErr("Token", errors.New("this agent has not joined yet: give a join token (from `flotilla token create`)"))
	}
	caPEM, err := fetchCA(ctx, base, caHash, caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("controller CA: no certificate in PEM")
	}
	cl := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	// The peer certificate comes with the credentials (an old controller ignores the CSR).
	csr, err := peerCSR(dataDir, name)
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(protocol.JoinRequest{Token: token, Name: name, Facts: facts, CSR: csr})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+protocol.PathJoin, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := cl.Do(req)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w: %w", base, errUnreachable, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		return nil, fmt.Errorf("join %s: %w: HTTP %d %s", base, errBusy, resp.StatusCode, strings.TrimSpace(string(data)))
	}
	if resp.StatusCode != http.StatusOK {
		var je protocol.JoinError
		if json.Unmarshal(data, &je) == nil && je.Error != "" {
			return nil, fmt.Errorf("%w: %s", ErrJoinRefused, je.Error)
		}
		return nil, fmt.Errorf("%w: HTTP %d", ErrJoinRefused, resp.StatusCode)
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(data, &cr); err != nil {
		return nil, fmt.Errorf("join reply: %w", err)
	}
	if len(cr.NATSURLs) == 0 || cr.User == "" || len(cr.SigningKey) == 0 {
		return nil, errors.New("join reply lacks NATS URL, user or signing key")
	}
	if len(cr.PeerCert) > 0 {
		if err := savePeerCert(dataDir, cr.PeerCert); err != nil {
			return nil, err
		}
		cr.PeerCert = nil // kept in its own file, renewed there
	}
	return &cr, nil
}

func loadCredentials(dataDir string) (*protocol.Credentials, error) {
	data, err := os.ReadFile(filepath.Join(dataDir, fileCredentials))
	if err != nil {
		return nil, err
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(data, &cr); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dataDir, fileCredentials), err)
	}
	return &cr, nil
}

func saveCredentials(dataDir string, cr *protocol.Credentials) error {
	data, err := json.MarshalIndent(cr, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dataDir, fileCredentials), data, 0o600)
}
