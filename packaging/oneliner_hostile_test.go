package packaging_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller"
)

// runOneLiner runs a bootstrap one-liner the way an operator does (sh -c, the
// real curl), with its temporary files under tmp.
func runOneLiner(t *testing.T, tmp, line string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", line)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestHostileBootstrapMITM: a man in the middle between a node and the
// controller serves a tampered bootstrap.sh. The one-liner `token create`
// prints refuses to run it, whether the attacker passes the controller's real
// CA through (its TLS certificate then fails the CA check) or serves its own
// (the hash check fails); the old `curl -k | sh` line ran it.
func TestHostileBootstrapMITM(t *testing.T) {
	for _, tool := range []string{"sh", "curl", "sha256sum", "mktemp"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	dir := t.TempDir()
	genuineRan := filepath.Join(dir, "genuine-ran")
	pwned := filepath.Join(dir, "PWNED")
	genuine := "#!/bin/sh\necho \"$*\" > '" + genuineRan + "'\n"
	tampered := "#!/bin/sh\ntouch '" + pwned + "'\necho tampered script ran\n"

	// The real controller, serving a harmless bootstrap.sh (the real one would
	// install an agent on this machine).
	c, err := controller.New(controller.Options{DataDir: filepath.Join(dir, "controller"), Listen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Advertise: "127.0.0.1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Handlers: map[string]http.Handler{"GET /bootstrap.sh": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, genuine)
		})}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// A proxy in front of it (its own TLS certificate: it has not the CA's key)
	// that passes the real CA through and swaps the script.
	insecure := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	mitm := func(ownCA bool) *httptest.Server {
		srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/bootstrap.sh":
				io.WriteString(w, tampered)
			case "/v1/ca.crt":
				if ownCA {
					io.WriteString(w, "-----BEGIN CERTIFICATE-----\nMIIBattacker\n-----END CERTIFICATE-----\n")
					return
				}
				resp, err := insecure.Get(c.HTTPURL() + r.URL.Path)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadGateway)
					return
				}
				defer resp.Body.Close()
				io.Copy(w, resp.Body)
			default:
				http.NotFound(w, r)
			}
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	passCA, ownCA := mitm(false), mitm(true)
	const token = "abcd.efgh"
	tmp := t.TempDir()

	// Without an attacker the line runs the controller's script with its arguments.
	out, err := runOneLiner(t, tmp, controller.BootstrapOneLiner(c.HTTPURL(), token, c.CAHash())+" --timeout 60")
	got, rerr := os.ReadFile(genuineRan)
	if err != nil || rerr != nil || !strings.Contains(string(got), "--token "+token+" --ca-hash "+c.CAHash()+" --ca-file ") ||
		!strings.HasSuffix(strings.TrimSpace(string(got)), "--timeout 60") {
		t.Fatalf("the one-liner against the real controller: %v, script args %q (%v)\n%s", err, got, rerr, out)
	}

	// The old line ran whatever the man in the middle served: the harness works.
	old := "curl -fsSLk " + passCA.URL + "/bootstrap.sh | sh -s -- --token " + token + " --ca-hash " + c.CAHash()
	if out, err := runOneLiner(t, tmp, old); err != nil || !exists(pwned) {
		t.Fatalf("the old one-liner through the proxy did not run the tampered script (%v): the test proves nothing\n%s", err, out)
	}
	os.Remove(pwned)

	for _, tc := range []struct {
		name, url, says string
	}{
		{"proxy passing the real CA through", passCA.URL, "certificate"},
		{"attacker serving its own CA", ownCA.URL, "FAILED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runOneLiner(t, tmp, controller.BootstrapOneLiner(tc.url, token, c.CAHash()))
			if exists(pwned) {
				t.Fatalf("the one-liner ran the tampered script:\n%s", out)
			}
			if strings.Contains(out, "tampered script ran") {
				t.Fatalf("tampered script output:\n%s", out)
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || !strings.Contains(out, tc.says) {
				t.Fatalf("err = %v, output %q: want a failure saying %q", err, out, tc.says)
			}
			t.Logf("refused: %s", strings.TrimSpace(out))
		})
	}
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }
