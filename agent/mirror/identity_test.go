package mirror_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/flotilla-dev/flotilla/agent/mirror"
)

// TestIdentity: the CA is made once and kept (key 0600 in a 0700 dir); the
// server certificate verifies for the loopback names and the listen host
// against the CA alone, and for nothing else; another identity's CA does not
// verify it.
func TestIdentity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mirror")
	id, err := mirror.LoadIdentity(dir, "10.0.0.5:505")
	if err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{"": 0o700, "ca.key": 0o600, "ca.crt": 0o644} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s/%s: %v %v, want mode %v", dir, name, st.Mode().Perm(), err, mode)
		}
	}
	again, err := mirror.LoadIdentity(dir, "10.0.0.5:505")
	if err != nil || !bytes.Equal(again.CAPEM(), id.CAPEM()) {
		t.Fatalf("a second load made another CA: %v", err)
	}
	cert, err := id.TLSConfig().GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(id.CAPEM())
	for _, tc := range []struct {
		name string
		ok   bool
	}{{"127.0.0.1", true}, {"::1", true}, {"localhost", true}, {"10.0.0.5", true}, {"10.0.0.6", false}, {"evil.example", false}} {
		_, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: tc.name})
		if (err == nil) != tc.ok {
			t.Errorf("verify for %s: %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	other, err := mirror.LoadIdentity(t.TempDir(), mirror.DefaultListen)
	if err != nil {
		t.Fatal(err)
	}
	otherPool := x509.NewCertPool()
	otherPool.AppendCertsFromPEM(other.CAPEM())
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: otherPool, DNSName: "127.0.0.1"}); err == nil {
		t.Error("another node's mirror CA verifies this mirror")
	}
	// A damaged key: a new CA, not a failure.
	os.WriteFile(filepath.Join(dir, "ca.key"), []byte("junk"), 0o600)
	fresh, err := mirror.LoadIdentity(dir, "10.0.0.5:505")
	if err != nil || bytes.Equal(fresh.CAPEM(), id.CAPEM()) {
		t.Errorf("damaged key: %v, want a new CA", err)
	}
	if b, _ := pem.Decode(fresh.CAPEM()); b == nil {
		t.Error("CA PEM does not decode")
	}
}
