package plane

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestNonceMinter(t *testing.T) {
	n, other := newNonceMinter(), newNonceMinter()
	now := time.Unix(1_800_000_000, 0)
	good := n.mint(now)
	tampered := []byte(good)
	tampered[10] ^= 1
	for _, tc := range []struct {
		name  string
		nonce string
		at    time.Time
		want  string // "" accepted, else part of the error
	}{
		{"fresh", good, now, ""},
		{"at its expiry", good, now.Add(nonceTTL), ""},
		{"past its expiry", good, now.Add(nonceTTL + time.Second), "expired"},
		{"another controller's", other.mint(now), now, "not made by this controller"},
		{"tampered", string(tampered), now, "not made by this controller"},
		{"garbage", "!!", now, "not made by this controller"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := n.check(tc.nonce, tc.at)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("check = %v, want %q", err, tc.want)
			}
		})
	}
	if len(good) != 54 {
		t.Errorf("nonce length %d, want protocol.NATSNonceLen", len(good))
	}
}

func TestCheckNATSUsers(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string // "" valid, else the Options field refused
	}{
		{"defaults", Options{}, ""},
		{"shortest user lifetime", Options{NATSUserTTL: MinNATSUserTTL}, ""},
		{"user lifetime too short", Options{NATSUserTTL: MinNATSUserTTL - time.Second}, "NATSUserTTL"},
		{"user lifetime too long", Options{NATSUserTTL: MaxNATSUserTTL + time.Second}, "NATSUserTTL"},
		{"longest admin lifetime", Options{NATSAdminTTL: MaxNATSAdminTTL}, ""},
		{"admin lifetime too long", Options{NATSAdminTTL: MaxNATSAdminTTL + time.Second}, "NATSAdminTTL"},
		{"admin lifetime too short", Options{NATSAdminTTL: time.Second}, "NATSAdminTTL"},
		{"all revocation files", Options{NATSOperatorKey: "k", NATSAccountJWT: "j", NATSSysCreds: "c"}, ""},
		{"operator key alone", Options{NATSOperatorKey: "k"}, "NATSAccountJWT"},
		{"without the system user", Options{NATSOperatorKey: "k", NATSAccountJWT: "j"}, "NATSSysCreds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			err := checkNATSUsers(&o)
			var oe *OptionError
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (!errors.As(err, &oe) || oe.Option != tc.want):
				t.Fatalf("error %v, want one about %s", err, tc.want)
			case tc.want == "" && (o.NATSUserTTL == 0 || o.NATSAdminTTL == 0):
				t.Errorf("no default lifetimes: %v %v", o.NATSUserTTL, o.NATSAdminTTL)
			}
		})
	}
}

// TestNodeLimiterBounds hits the per-node burst and the map's size bound.
func TestNodeLimiterBounds(t *testing.T) {
	l := newNodeLimiter()
	now := time.Unix(1_800_000_000, 0)
	allowed := 0
	for range nodeRenewBurst + 5 {
		if l.allow("n1", now) {
			allowed++
		}
	}
	if allowed != nodeRenewBurst {
		t.Errorf("%d requests allowed at once, want the burst %d", allowed, nodeRenewBurst)
	}
	if !l.allow("n1", now.Add(time.Second/nodeRenewRate)) {
		t.Errorf("no request allowed a period later")
	}
	for i := range maxOffenseKeys {
		l.allow(fmt.Sprintf("m%d", i), now)
	}
	if len(l.nodes) > maxOffenseKeys {
		t.Errorf("%d nodes tracked, at most %d", len(l.nodes), maxOffenseKeys)
	}
}
