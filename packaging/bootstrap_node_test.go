package packaging_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/internal/poll"

	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/packaging"
	"github.com/flotilla-dev/flotilla/sandbox"
)

// fakeAgent stands in for the flotilla binary where no controller runs: it
// joins only with the token "good-token" read from its environment (never
// from argv), needs no token once joined (like the real agent with its
// credentials in the data dir), and `agent status` succeeds once it has joined.
const fakeAgent = `#!/bin/sh
dd=/var/lib/flotilla-agent
[ "$1" = agent ] || exit 2
shift
sub=run
if [ "${1:-}" = status ]; then sub=status; shift; fi
while [ $# -gt 0 ]; do
	case "$1" in
	--data-dir) dd=$2; shift 2 ;;
	--token) echo "token passed in argv" >&2; exit 9 ;;
	*) shift ;;
	esac
done
if [ $sub = status ]; then
	[ -f "$dd/registered" ] || exit 1
	echo "registered as $(hostname)"
	exit 0
fi
[ -f "$dd/registered" ] || [ "$FLOTILLA_TOKEN" = good-token ] || { echo "join refused: token expired" >&2; exit 1; }
touch "$dd/registered"
exec sleep infinity
`

// controllerStub serves what a controller serves to a bootstrapping node:
// /v1/ca.crt and packaging's Handler, over TLS from its own CA, on the fleet's
// host IP. It returns the base URL and the CA hash for the one-liner.
func controllerStub(t *testing.T, host netip.Addr, binDir string) (string, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2),
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{host.AsSlice()}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ca.crt", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(caPEM) })
	h := packaging.Handler(packaging.Options{BinDir: binDir})
	for _, p := range packaging.Paths {
		mux.Handle(p, h)
	}
	ln, err := net.Listen("tcp", netip.AddrPortFrom(host, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = ln
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return "https://" + ln.Addr().String(), "sha256:" + sum(caPEM)
}

func oneLiner(url, token, hash string) string {
	return fmt.Sprintf("curl -fsSL -k %s/bootstrap.sh | sh -s -- --token %s --ca-hash %s --timeout 20", url, token, hash)
}

// assertClean checks that a failed bootstrap left nothing on the node.
func assertClean(t *testing.T, f *sandbox.Fleet, node string) {
	t.Helper()
	for _, p := range []string{packaging.BinPath, packaging.ConfigDir, packaging.UnitPath, packaging.DefaultDataDir,
		"/etc/systemd/system/multi-user.target.wants/" + packaging.UnitName} {
		if _, err := os.Lstat(filepath.Join(f.Root(node), p)); err == nil {
			t.Errorf("%s: %s left behind", node, p)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := f.Exec(ctx, node, "systemctl", "show", "-p", "LoadState,ActiveState", packaging.UnitName)
	if !strings.Contains(string(out), "LoadState=not-found") || !strings.Contains(string(out), "ActiveState=inactive") {
		t.Errorf("%s: unit still known to systemd: %s", node, out)
	}
	if m, _ := filepath.Glob(filepath.Join(f.Root(node), "tmp/flotilla-bootstrap.*")); len(m) > 0 {
		t.Errorf("%s: temp dirs left: %v", node, m)
	}
}

func TestBootstrapScriptOnNodes(t *testing.T) {
	f := fleettest.New(t, sandbox.Options{Name: "fltep", Subnet: "10.77.10.80/28", N: 2})
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "flotilla-linux-amd64"), []byte(fakeAgent), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "flotilla-linux-arm64"), []byte(fakeAgent), 0o755); err != nil {
		t.Fatal(err)
	}
	url, hash := controllerStub(t, f.HostIP(), bin)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := func(node, cmd string) (string, error) {
		out, err := f.Exec(ctx, node, "sh", "-c", cmd)
		return string(out), err
	}
	show := func(node, prop string) string {
		out, _ := f.Exec(ctx, node, "systemctl", "show", "-p", prop, "--value", packaging.UnitName)
		return strings.TrimSpace(string(out))
	}

	t.Run("WrongCAHash", func(t *testing.T) {
		wrong := "sha256:" + strings.Repeat("ab", 32)
		out, err := run("node1", oneLiner(url, "good-token", wrong))
		if err == nil || !strings.Contains(out, "CA hash mismatch") || !strings.Contains(out, "Nothing was installed") {
			t.Fatalf("err=%v, output:\n%s", err, out)
		}
		assertClean(t, f, "node1")
	})

	t.Run("Join", func(t *testing.T) {
		out, err := run("node1", oneLiner(url, "good-token", hash))
		if err != nil || !strings.Contains(out, "node registered") {
			t.Fatalf("err=%v, output:\n%s", err, out)
		}
		if got := show("node1", "ActiveState"); got != "active" {
			t.Errorf("agent unit is %q", got)
		}
		if got := show("node1", "UnitFileState"); got != "enabled" {
			t.Errorf("agent unit file state is %q", got)
		}
		st, err := os.Stat(filepath.Join(f.Root("node1"), packaging.ConfigDir, "agent.env"))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("agent.env: %v %v, want mode 0600", st, err)
		}
		unit, _ := os.ReadFile(filepath.Join(f.Root("node1"), packaging.UnitPath))
		ps, _ := run("node1", "ps -eo args")
		if strings.Contains(string(unit), "good-token") || strings.Contains(ps, "good-token") {
			t.Errorf("token visible in the unit or the process list:\n%s\n%s", unit, ps)
		}
		if !strings.Contains(string(unit), "--ca-file /etc/flotilla/ca.crt") {
			t.Errorf("unit does not pin the CA file:\n%s", unit)
		}
	})

	t.Run("SecondRunIsHarmless", func(t *testing.T) {
		pid := show("node1", "MainPID")
		out, err := run("node1", oneLiner(url, "good-token", hash))
		if err != nil || !strings.Contains(out, "nothing changed") {
			t.Fatalf("err=%v, output:\n%s", err, out)
		}
		if got := show("node1", "MainPID"); got != pid {
			t.Errorf("agent restarted by a second run: MainPID %s -> %s", pid, got)
		}
	})

	t.Run("FailedRerunKeepsTheWorkingInstall", func(t *testing.T) {
		// A new data dir means a new join, which the expired token cannot do.
		out, err := run("node1", oneLiner(url, "expired-token", hash)+" --data-dir /var/lib/flotilla-other")
		if err == nil || !strings.Contains(out, "token expired") {
			t.Fatalf("err=%v, output:\n%s", err, out)
		}
		env, _ := os.ReadFile(filepath.Join(f.Root("node1"), packaging.ConfigDir, "agent.env"))
		unit, _ := os.ReadFile(filepath.Join(f.Root("node1"), packaging.UnitPath))
		if !strings.Contains(string(env), "good-token") || !strings.Contains(string(unit), "--data-dir "+packaging.DefaultDataDir) {
			t.Errorf("previous install not restored:\n%s\n%s", env, unit)
		}
		if _, err := os.Stat(filepath.Join(f.Root("node1"), "var/lib/flotilla-other")); err == nil {
			t.Error("the failed run's data dir was left behind")
		}
		_ = poll.Until(context.Background(), 10*time.Second, 100*time.Millisecond, func() bool { return show("node1", "ActiveState") == "active" })
		if got := show("node1", "ActiveState"); got != "active" {
			t.Errorf("previous agent not running again: %s", got)
		}
	})

	t.Run("SIGKILLedAgentIsRestarted", func(t *testing.T) {
		pid := show("node1", "MainPID")
		if n, err := strconv.Atoi(pid); err != nil || n <= 1 {
			t.Fatalf("agent has no main PID (%q): is it running? %s", pid, show("node1", "ActiveState"))
		}
		if _, err := run("node1", "kill -9 "+pid); err != nil {
			t.Fatal(err)
		}
		restarted := func() bool {
			p := show("node1", "MainPID")
			return p != pid && p != "0" && show("node1", "ActiveState") == "active"
		}
		if poll.Until(context.Background(), 15*time.Second, 100*time.Millisecond, restarted) == nil {
			return
		}
		t.Errorf("agent not restarted after SIGKILL: %s %s", show("node1", "ActiveState"), show("node1", "MainPID"))
	})

	t.Run("RejectedTokenLeavesNodeClean", func(t *testing.T) {
		out, err := run("node2", oneLiner(url, "expired-token", hash))
		t.Logf("bootstrap with a rejected token:\n%s", out)
		if err == nil || !strings.Contains(out, "token expired") || !strings.Contains(out, "undid the changes") {
			t.Fatalf("err=%v, output:\n%s", err, out)
		}
		assertClean(t, f, "node2")
	})

	t.Run("Uninstall", func(t *testing.T) {
		pid, err := f.PID("node1")
		if err != nil {
			t.Fatal(err)
		}
		o := packaging.UninstallOptions{Root: fmt.Sprintf("/proc/%d/root", pid)}
		removed, err := packaging.Uninstall(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{packaging.UnitPath, packaging.BinPath, packaging.ConfigDir, packaging.DefaultDataDir}
		if strings.Join(removed, " ") != strings.Join(want, " ") {
			t.Errorf("removed %v, want %v", removed, want)
		}
		assertClean(t, f, "node1")
		if ps, _ := run("node1", "ps -eo args"); strings.Contains(ps, "sleep infinity") {
			t.Errorf("agent still running after uninstall:\n%s", ps)
		}
		if removed, err := packaging.Uninstall(ctx, o); err != nil || len(removed) != 0 {
			t.Errorf("second uninstall: %v %v", removed, err)
		}
	})
}
