package natsauth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

func userKey(t testing.TB) string {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return pub
}

// TestRevocationsBound fills the list to MaxRevocations: one more key is
// refused, a key already in it is still updated, and pruning the expired
// entries makes room again.
func TestRevocationsBound(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	r := Revocations{}
	first := ""
	for i := range MaxRevocations {
		k := userKey(t)
		if i == 0 {
			first = k
		}
		until := now.Add(time.Hour)
		if i%2 == 0 {
			until = now.Add(time.Minute)
		}
		if err := r.Add(k, now, until); err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
	}
	if err := r.Add(userKey(t), now, now.Add(time.Hour)); !errors.Is(err, ErrTooManyRevocations) {
		t.Fatalf("key %d: %v, want ErrTooManyRevocations", MaxRevocations+1, err)
	}
	if err := r.Add(first, now.Add(time.Second), now.Add(2*time.Hour)); err != nil {
		t.Fatalf("a key already revoked, again: %v", err)
	}
	if e := r[first]; e.At != now.Unix()+1 || e.Until != now.Add(2*time.Hour).Unix() {
		t.Errorf("entry %+v: want the later times", e)
	}
	if n := r.Prune(now.Add(30 * time.Minute)); n != MaxRevocations/2-1 || len(r) != MaxRevocations/2+1 {
		t.Errorf("pruned %d, %d left; want %d and %d", n, len(r), MaxRevocations/2-1, MaxRevocations/2+1)
	}
	if err := r.Add(userKey(t), now, now.Add(time.Hour)); err != nil {
		t.Errorf("after pruning: %v", err)
	}
	for _, bad := range []string{"", "ADXU", "not-a-key"} {
		if err := r.Add(bad, now, now); err == nil {
			t.Errorf("revoking %q accepted", bad)
		}
	}
}

// TestRevokerAccountJWT re-signs flotilla's account JWT with the operator
// signing key Init made: the claims are kept, the revocations are the list.
func TestRevokerAccountJWT(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	s, err := Init(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{FileOperatorSigningKey: 0o600, FileSysCreds: 0o600, FileLeafSysCreds: 0o600, FileAccountJWT: 0o644} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", name, st.Mode().Perm(), mode)
		}
	}
	oc, err := jwt.DecodeOperatorClaims(s.OperatorJWT)
	if err != nil {
		t.Fatal(err)
	}
	skp, err := nkeys.FromSeed(s.OperatorSigningSeed)
	if err != nil {
		t.Fatal(err)
	}
	skPub, _ := skp.PublicKey()
	if !slices.Contains(oc.SigningKeys, skPub) {
		t.Fatalf("operator signing keys %v lack %s", oc.SigningKeys, skPub)
	}
	base, _ := os.ReadFile(filepath.Join(dir, FileAccountJWT))
	r := &Revoker{cfg: RevokerConfig{Account: s.Account}, signer: skp, base: string(base)}
	k := userKey(t)
	revs := Revocations{}
	at := time.Unix(1_800_000_000, 0)
	if err := revs.Add(k, at, at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	tok, err := r.AccountJWT(revs)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := jwt.DecodeAccountClaims(tok)
	if err != nil {
		t.Fatal(err)
	}
	if ac.Subject != s.Account || ac.Issuer != skPub || ac.Revocations[k] != at.Unix() || len(ac.Revocations) != 1 {
		t.Errorf("account JWT: subject %s issuer %s revocations %v", ac.Subject, ac.Issuer, ac.Revocations)
	}
	if ac.Limits.JetStreamLimits.DiskStorage != -1 || ac.Name != "flotilla" {
		t.Errorf("the base claims were not kept: %+v", ac.Limits.JetStreamLimits)
	}
	// The system user may push the account JWT and read what the revoker
	// watches, and nothing else.
	sysJWT, err := jwt.ParseDecoratedJWT(s.SysCreds)
	if err != nil {
		t.Fatal(err)
	}
	uc, err := jwt.DecodeUserClaims(sysJWT)
	if err != nil {
		t.Fatal(err)
	}
	pub, sub := SysUserPermissions(s.Account)
	if uc.Issuer != s.SysAccount || !slices.Equal(uc.Pub.Allow, pub) || !slices.Equal(uc.Sub.Allow, sub) || uc.Expires != 0 {
		t.Errorf("system user: issuer %s pub %v sub %v exp %d", uc.Issuer, uc.Pub.Allow, uc.Sub.Allow, uc.Expires)
	}
}

// TestRevokerServersBound announces more servers than it remembers: the
// oldest go, each new one is reported once.
func TestRevokerServersBound(t *testing.T) {
	started := 0
	r := &Revoker{servers: map[string]time.Time{}, cfg: RevokerConfig{OnServerStart: func(string) { started++ }}}
	for i := range maxServers + 10 {
		r.onStatsz(&nats.Msg{Data: fmt.Appendf(nil, `{"server":{"id":"S%d","name":"n%d"}}`, i, i)})
	}
	r.onStatsz(&nats.Msg{Data: []byte(`{"server":{"id":"S5","name":"n5"}}`)}) // long forgotten: new again
	r.onStatsz(&nats.Msg{Data: fmt.Appendf(nil, `{"server":{"id":"S%d","name":"again"}}`, maxServers+9)})
	r.onStatsz(&nats.Msg{Data: []byte(`garbage`)})
	if len(r.servers) != maxServers {
		t.Errorf("%d servers remembered, want %d", len(r.servers), maxServers)
	}
	if started != maxServers+11 {
		t.Errorf("%d server starts reported, want %d", started, maxServers+11)
	}
}

func TestSignUserLifetime(t *testing.T) {
	s, err := Init(filepath.Join(t.TempDir(), "auth"))
	if err != nil {
		t.Fatal(err)
	}
	iss, err := NewIssuer(s.AccountSeed, "")
	if err != nil {
		t.Fatal(err)
	}
	tok, _, key, err := iss.NewUser(UserSpec{Name: "node/n1", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := iss.SignUser(key, UserSpec{Name: "node/n1", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, jt := range []string{tok, renewed} {
		uc, err := jwt.DecodeUserClaims(jt)
		if err != nil {
			t.Fatal(err)
		}
		if uc.Subject != key || uc.Expires-uc.IssuedAt < 3599 || uc.Expires-uc.IssuedAt > 3600 {
			t.Errorf("user %s lives %ds, want key %s and 3600s", uc.Subject, uc.Expires-uc.IssuedAt, key)
		}
	}
	if _, err := iss.SignUser("UNOTAKEY", UserSpec{Name: "x"}); err == nil {
		t.Error("a JWT for a malformed key")
	}
}

// TestOpenRevokerNamesTheBadFile gives the revoker a wrong file each: the
// error says which (the controller names its flag).
func TestOpenRevokerNamesTheBadFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	s, err := Init(dir)
	if err != nil {
		t.Fatal(err)
	}
	other, err := Init(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	otherAccountJWT := filepath.Join(t.TempDir(), "other.jwt")
	if err := os.WriteFile(otherAccountJWT, []byte(other.AccountJWT), 0o600); err != nil {
		t.Fatal(err)
	}
	good := RevokerConfig{OperatorKeyFile: filepath.Join(dir, FileOperatorSigningKey), AccountJWTFile: filepath.Join(dir, FileAccountJWT),
		SysCredsFile: filepath.Join(dir, FileSysCreds), Account: s.Account, URLs: []string{"nats://127.0.0.1:1"}}
	for _, tc := range []struct {
		name   string
		mutate func(*RevokerConfig)
		which  string
	}{
		{"an account key as the operator key", func(c *RevokerConfig) { c.OperatorKeyFile = filepath.Join(dir, FileAccountKey) }, "OperatorKey"},
		{"no operator key file", func(c *RevokerConfig) { c.OperatorKeyFile = filepath.Join(dir, "none") }, "OperatorKey"},
		{"another account's JWT", func(c *RevokerConfig) { c.AccountJWTFile = otherAccountJWT }, "AccountJWT"},
		{"nothing listens", func(*RevokerConfig) {}, "SysCreds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.mutate(&cfg)
			_, err := OpenRevoker(cfg)
			var fe *FileError
			if !errors.As(err, &fe) || fe.Which != tc.which {
				t.Fatalf("error %v, want one about %s", err, tc.which)
			}
		})
	}
}
