package fetch

import (
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/p2p/pieces"
)

// TestSwarmReports: the failures that show a peer does not serve what it
// announced are reported, once per peer and fetch, never the seed's; slow or
// busy peers and pieces asked ahead are not.
func TestSwarmReports(t *testing.T) {
	dial := fmt.Errorf("piece 0: %w", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")})
	read := fmt.Errorf("piece 0: %w", &net.OpError{Op: "read", Net: "tcp", Err: errors.New("reset")})
	for _, tc := range []struct {
		name  string
		peer  string
		ahead bool
		err   error
		want  string
	}{
		{"served", "n1", false, nil, ""},
		{"404 for a piece it announced", "n1", false, errNotHeld, pieces.FailNotHeld},
		{"404 for a piece asked ahead", "n1", true, errNotHeld, ""},
		{"a wrong piece", "n1", false, pieces.ErrPieceMismatch, pieces.FailBadPiece},
		{"another certificate", "n1", false, errImpostor, pieces.FailImpostor},
		{"nothing listening", "n1", false, dial, pieces.FailUnreachable},
		{"a reset connection", "n1", false, read, ""},
		{"stalled", "n1", false, errStalled, ""},
		{"the seed", pieces.SeedID, false, errNotHeld, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSwarm(pieces.PieceList{Hashes: []string{"a", "b"}, PieceSize: 1, Size: 2}, pieces.NewBitfield(2), "self", nil, 4)
			have := pieces.FullBitfield(2)
			s.setPeers([]pieces.PeerState{{Peer: pieces.Peer{ID: tc.peer}, Have: have, Complete: true}})
			p := s.byID[tc.peer]
			for i, want := range []string{tc.want, ""} { // the second time: already reported
				p.inflight++
				_, got := s.result(job{piece: i, peer: p, ahead: tc.ahead}, tc.err, time.Now())
				if got != want {
					t.Fatalf("failure %d: report %q, want %q", i+1, got, want)
				}
			}
		})
	}
}
