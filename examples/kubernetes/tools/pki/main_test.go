package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	testToken       = "0123456789abcdef0123456789abcdef-test"
	testMasterToken = "fedcba9876543210fedcba9876543210-master"
)

func setup(t *testing.T) (dir string, srv *httptest.Server, logs *bytes.Buffer) {
	t.Helper()
	t.Setenv(tokenEnv, testToken)
	t.Setenv(masterTokenEnv, testMasterToken)
	dir = t.TempDir()
	if err := cmdInit([]string{"--dir", dir, "--vip", "10.77.11.20", "--masters", "10.77.11.2,10.77.11.3,10.77.11.4"}); err != nil {
		t.Fatal(err)
	}
	k, err := loadKeys(tokenEnv)
	if err != nil {
		t.Fatal(err)
	}
	mk, err := loadKeys(masterTokenEnv)
	if err != nil {
		t.Fatal(err)
	}
	logs = &bytes.Buffer{}
	s := &server{dir: dir, keys: k, master: mk, log: slog.New(slog.NewTextHandler(logs, nil))}
	srv = httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return dir, srv, logs
}

func TestInitIsIdempotentAndCoversTheVIP(t *testing.T) {
	dir, _, _ := setup(t)
	before, _ := os.ReadFile(filepath.Join(dir, "pki/ca.key"))
	if err := cmdInit([]string{"--dir", dir, "--vip", "10.77.11.20", "--masters", "10.77.11.2,10.77.11.3,10.77.11.4"}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "pki/ca.key"))
	if !bytes.Equal(before, after) {
		t.Fatal("a second init replaced the CA key")
	}
	b, _ := os.ReadFile(filepath.Join(dir, "pki/apiserver.crt"))
	p, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(p.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"10.77.11.20", "10.96.0.1", "10.77.11.3"} {
		if err := c.VerifyHostname(want); err != nil {
			t.Errorf("apiserver certificate does not cover %s: %v", want, err)
		}
	}
	if fi, _ := os.Stat(filepath.Join(dir, "pki/ca.key")); fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.key mode %v", fi.Mode().Perm())
	}
}

func TestFetchMasterAndNode(t *testing.T) {
	dir, srv, logs := setup(t)
	host := strings.TrimPrefix(srv.URL, "http://")
	m := t.TempDir()
	if err := cmdFetch([]string{"--what", "master", "--dir", m, "--server", host, "--wait", "1s"}); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(dir, "pki/sa.key"))
	b, _ := os.ReadFile(filepath.Join(m, "pki/sa.key"))
	if !bytes.Equal(a, b) || len(a) == 0 {
		t.Fatal("master bundle lacks the service-account key")
	}
	if _, err := os.Stat(filepath.Join(m, "kubelet.conf")); err == nil {
		t.Error("master bundle carries a kubelet.conf")
	}
	n := t.TempDir()
	if err := cmdFetch([]string{"--what", "node", "--node", "node4", "--dir", n, "--server", host, "--wait", "1s"}); err != nil {
		t.Fatal(err)
	}
	kc, _ := os.ReadFile(filepath.Join(n, "kubelet.conf"))
	if !strings.Contains(string(kc), `"system:node:node4"`) || !strings.Contains(string(kc), "https://10.77.11.20:6443") {
		t.Errorf("kubelet.conf:\n%s", kc)
	}
	if _, err := os.Stat(filepath.Join(n, "pki/ca.key")); err == nil {
		t.Error("node bundle carries the CA key")
	}
	if strings.Contains(logs.String(), testToken) || strings.Contains(logs.String(), testMasterToken) {
		t.Error("a token appears in the server's log")
	}
}

// TestHostileRequestsRefused: no secret, a wrong secret, a stale timestamp, a
// replayed MAC for another path and a bad node name get nothing, and each refusal
// is logged with the sender.
func TestHostileRequestsRefused(t *testing.T) {
	_, srv, logs := setup(t)
	k, _ := loadKeys(tokenEnv)
	mk, _ := loadKeys(masterTokenEnv)
	wrong := keys{mac: bytes.Repeat([]byte{1}, 32), enc: bytes.Repeat([]byte{2}, 32)}
	now := time.Now().Unix()
	cases := []struct {
		name, path, auth string
		code             int
	}{
		{"no auth", "/v1/master", "", http.StatusUnauthorized},
		{"wrong secret", "/v1/master", "Flotilla-PKI " + itoa(now) + ":" + wrong.sign("GET", "/v1/master", now), http.StatusUnauthorized},
		{"a worker's secret for the master PKI", "/v1/master", "Flotilla-PKI " + itoa(now) + ":" + k.sign("GET", "/v1/master", now), http.StatusUnauthorized},
		{"stale", "/v1/master", "Flotilla-PKI " + itoa(now-3600) + ":" + mk.sign("GET", "/v1/master", now-3600), http.StatusUnauthorized},
		{"mac of another path", "/v1/master", "Flotilla-PKI " + itoa(now) + ":" + mk.sign("GET", "/v1/node/node4", now), http.StatusUnauthorized},
		{"bad node name", "/v1/node/..%2fetc", "Flotilla-PKI " + itoa(now) + ":" + k.sign("GET", "/v1/node/../etc", now), http.StatusBadRequest},
		{"unknown path", "/v1/ca.key", "Flotilla-PKI " + itoa(now) + ":" + k.sign("GET", "/v1/ca.key", now), http.StatusNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			logs.Reset()
			req, _ := http.NewRequest("GET", srv.URL+c.path, nil)
			if c.auth != "" {
				req.Header.Set("Authorization", c.auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.code {
				t.Fatalf("status %d, want %d", resp.StatusCode, c.code)
			}
			if !strings.Contains(logs.String(), "refused") || !strings.Contains(logs.String(), "from=127.0.0.1:") {
				t.Errorf("refusal not logged with the sender: %q", logs.String())
			}
		})
	}
}

func TestFetchWithWrongSecretFails(t *testing.T) {
	_, srv, _ := setup(t)
	host := strings.TrimPrefix(srv.URL, "http://")
	// A worker holds only the node secret: it tries it for the master PKI.
	t.Setenv(masterTokenEnv, "another-secret-of-at-least-32-characters")
	err := cmdFetch([]string{"--what", "master", "--dir", t.TempDir(), "--server", host, "--wait", "1s"})
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("master fetch with another secret: err = %v, want a 401", err)
	}
	t.Setenv(tokenEnv, "another-secret-of-at-least-32-characters")
	err = cmdFetch([]string{"--what", "node", "--node", "node4", "--dir", t.TempDir(), "--server", host, "--wait", "1s"})
	if err == nil || !strings.Contains(err.Error(), "401") {
		t.Fatalf("node fetch with a wrong secret: err = %v, want a 401", err)
	}
}

func TestTokenRules(t *testing.T) {
	for _, tok := range []string{"", "short", strings.Repeat("a", 31), strings.Repeat("a", 31) + "\n", strings.Repeat("a", 32) + " x"} {
		t.Setenv(tokenEnv, tok)
		if _, err := loadKeys(tokenEnv); err == nil {
			t.Errorf("token %q accepted", tok)
		}
	}
	t.Setenv(tokenEnv, testToken)
	t.Setenv(masterTokenEnv, testToken)
	if _, err := loadKeys(masterTokenEnv); err == nil || !strings.Contains(err.Error(), "must differ") {
		t.Errorf("a master token equal to the node token: err = %v, want refused", err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
