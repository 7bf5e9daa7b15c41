package fetch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// Tracker is what the fetcher needs from the controller's tracker: tell it
// what we hold, ask it who holds what. The transport is the implementation's
// business (HTTP today; NATS request/reply would fit the same interface).
type Tracker interface {
	Announce(ctx context.Context, a pieces.Announcement) error
	// Peers returns the live peers of blob d in pipeline order (first announcer first).
	Peers(ctx context.Context, d v1.Hash) ([]pieces.PeerState, error)
}

// Reporter is a Tracker that takes failure reports (HTTPTracker does): a
// peer that did not serve a piece it announced is reported, once per fetch,
// and the tracker drops its record (p2p/tracker's Tracker.Report).
type Reporter interface {
	Report(ctx context.Context, f pieces.FailureReport) error
}

// ErrNotTracker says the server at the tracker's address is not the
// controller (its certificate is another's): a fetch stops at once.
var ErrNotTracker = errors.New("not the tracker")

// HTTPTracker talks to the tracker's HTTP handler (p2p/tracker).
type HTTPTracker struct {
	base   string
	client *http.Client
}

// NewHTTPTracker returns a tracker client for base (https://controller:port);
// client carries the agent's mTLS configuration.
func NewHTTPTracker(base string, client *http.Client) *HTTPTracker {
	return &HTTPTracker{base: strings.TrimRight(base, "/"), client: client}
}

// Announce implements Tracker.
func (t *HTTPTracker) Announce(ctx context.Context, a pieces.Announcement) error {
	body, err := json.Marshal(a)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.base+"/v1/tracker/announce", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.client.Do(req)
	if err != nil {
		return fmt.Errorf("announce %s to tracker %s: %w", a.Digest, t.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("announce %s to tracker %s: %s: %s", a.Digest, t.base, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// Report implements Reporter.
func (t *HTTPTracker) Report(ctx context.Context, f pieces.FailureReport) error {
	body, err := json.Marshal(f)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.base+"/v1/tracker/report", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.client.Do(req)
	if err != nil {
		return fmt.Errorf("report %s to tracker %s: %w", f.Peer, t.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("report %s to tracker %s: %s: %s", f.Peer, t.base, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// Peers implements Tracker.
func (t *HTTPTracker) Peers(ctx context.Context, d v1.Hash) ([]pieces.PeerState, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.base+"/v1/tracker/peers/"+d.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("peers of %s from tracker %s: %w", d, t.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("peers of %s from tracker %s: %s: %s", d, t.base, resp.Status, bytes.TrimSpace(msg))
	}
	var pr struct {
		Peers []pieces.PeerState `json:"peers"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&pr); err != nil {
		return nil, fmt.Errorf("peers of %s from tracker %s: %w", d, t.base, err)
	}
	return pr.Peers, nil
}

// StaticPeers is a Tracker with a fixed list of peers that all hold the
// whole blob (a controller-only fetch, or tests); announcements are dropped.
type StaticPeers []pieces.Peer

// Announce implements Tracker.
func (StaticPeers) Announce(context.Context, pieces.Announcement) error { return nil }

// Peers implements Tracker: every peer is reported complete.
func (s StaticPeers) Peers(context.Context, v1.Hash) ([]pieces.PeerState, error) {
	out := make([]pieces.PeerState, len(s))
	for i, p := range s {
		out[i] = pieces.PeerState{Peer: p, Complete: true}
	}
	return out, nil
}
