package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// TestStepCapsLowerTheAgentsCaps: a step's caps (spec.bandwidth) apply on top
// of the agent's flags while the step runs: the smallest wins, 0 means none,
// and the agent's own caps come back when the step ends.
func TestStepCapsLowerTheAgentsCaps(t *testing.T) {
	for _, tc := range []struct {
		name           string
		flagUp, flagDn int64
		steps          []StepCaps
		wantUp, wantDn rate.Limit
	}{
		{"no caps at all", 0, 0, nil, rate.Inf, rate.Inf},
		{"flags only", 1e6, 2e6, nil, 1e6, 2e6},
		{"step lower than flags", 1e6, 2e6, []StepCaps{{Upload: 5e5, Download: 1e6}}, 5e5, 1e6},
		{"step cannot raise flags", 1e6, 2e6, []StepCaps{{Upload: 9e6, Download: 9e6}}, 1e6, 2e6},
		{"step caps without flags", 0, 0, []StepCaps{{Download: 3e6}}, rate.Inf, 3e6},
		{"two steps: the smallest", 0, 0, []StepCaps{{Upload: 4e6, Download: 1e6}, {Upload: 2e6}}, 2e6, 1e6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Peer{maxUp: tc.flagUp, maxDown: tc.flagDn, up: newLimiter(tc.flagUp), down: newLimiter(tc.flagDn), stepCaps: map[*StepCaps]struct{}{}}
			var added []*StepCaps
			for i := range tc.steps {
				c := tc.steps[i]
				p.addCaps(&c)
				added = append(added, &c)
			}
			if p.up.Limit() != tc.wantUp || p.down.Limit() != tc.wantDn {
				t.Fatalf("limits up %v down %v, want %v %v", p.up.Limit(), p.down.Limit(), tc.wantUp, tc.wantDn)
			}
			// Readers and writers ask for up to 64 KiB at once: the burst must hold it.
			if p.up.Burst() < 64<<10 || p.down.Burst() < 64<<10 {
				t.Fatalf("bursts %d/%d below 64 KiB", p.up.Burst(), p.down.Burst())
			}
			for _, c := range added {
				p.removeCaps(c)
			}
			wantUp, wantDn := rate.Limit(tc.flagUp), rate.Limit(tc.flagDn)
			if tc.flagUp == 0 {
				wantUp = rate.Inf
			}
			if tc.flagDn == 0 {
				wantDn = rate.Inf
			}
			if p.up.Limit() != wantUp || p.down.Limit() != wantDn {
				t.Fatalf("after the steps: up %v down %v, want the flags' %v %v", p.up.Limit(), p.down.Limit(), wantUp, wantDn)
			}
		})
	}
}

func TestRenewDue(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert := func(age, left time.Duration) *tls.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-age), NotAfter: time.Now().Add(left)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Certificate{Certificate: [][]byte{der}}
	}
	// The controller's certificates: 1 h back-dated, 24 h ahead.
	for _, tc := range []struct {
		age, left time.Duration
		due       bool
	}{
		{time.Hour, 24 * time.Hour, false},
		{12 * time.Hour, 13 * time.Hour, false},
		{13 * time.Hour, 12 * time.Hour, true},
		{24 * time.Hour, time.Hour, true},
		{26 * time.Hour, -time.Hour, true},
	} {
		if got := renewDue(cert(tc.age, tc.left)); got != tc.due {
			t.Errorf("age %v, %v left: due = %v, want %v", tc.age, tc.left, got, tc.due)
		}
	}
	// A running agent looks often enough to renew with hours to spare.
	if peerCertCheckEvery > time.Hour {
		t.Errorf("the certificate is checked every %v: a 24 h certificate due at 12 h left could expire unrenewed", peerCertCheckEvery)
	}
}
