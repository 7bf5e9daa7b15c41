package rollout_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/agent/mirror"
	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/internal/registrytest"
)

// nobody is the unprivileged user the squatter runs as.
const nobody = 65534

// squatEnv names the address TestHelperMirrorSquatter listens on.
const squatEnv = "FLOTILLA_TEST_SQUAT_ADDR"

// TestHelperMirrorSquatter is not a test: run as another user by
// startSquatter, it listens on $FLOTILLA_TEST_SQUAT_ADDR and poses as a
// registry over TLS with a certificate of its own, printing "listening" or
// "listen error: ..." first.
func TestHelperMirrorSquatter(t *testing.T) {
	addr := os.Getenv(squatEnv)
	if addr == "" {
		t.Skip("helper process of TestHostileMirrorSquatter")
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Printf("listen error: %v\n", err)
		os.Exit(3)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	fmt.Printf("listening as uid %d\n", os.Getuid())
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		_, _ = io.WriteString(w, "{}") // and a malicious manifest for anything else
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}}
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); os.Exit(0) }() // the test closes stdin to end it
	_ = srv.ServeTLS(l, "", "")
}

// squatter is TestHelperMirrorSquatter running as nobody.
type squatter struct {
	cmd   *exec.Cmd
	stdin io.Closer
}

// startSquatter runs this test binary as uid/gid 65534 listening on addr and
// returns it once it listens, or the error its listen got.
func startSquatter(t *testing.T, addr string) (*squatter, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// A copy nobody may run (the test binary's own directory is root's, 0700).
	dir, err := os.MkdirTemp("", "flotilla-squatter-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "squatter")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestHelperMirrorSquatter$", "-test.count=1")
	cmd.Dir = dir
	cmd.Env = []string{squatEnv + "=" + addr, "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the squatter as uid %d: %v", nobody, err)
	}
	s := &squatter{cmd: cmd, stdin: stdin}
	t.Cleanup(s.stop)
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(l)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case l := <-line:
		if !strings.HasPrefix(l, "listening as uid 65534") {
			s.stop()
			return nil, fmt.Errorf("%s", l)
		}
		return s, nil
	case <-time.After(30 * time.Second):
		s.stop()
		t.Fatal("the squatter said nothing for 30 s")
	}
	return nil, nil
}

// stop ends the squatter by its PID and waits for it.
func (s *squatter) stop() {
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.stdin.Close()
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// hostsTOMLHost reads the mirror URL and the ca of a hosts.toml as containerd
// does (the file the agent and `flotilla agent containerd-mirror` write).
var hostsTOMLHost = regexp.MustCompile(`(?m)^\[host\."([^"]+)"\]\n  capabilities = \[[^\]]*\]\n  ca = "([^"]+)"$`)

// containerdClient is a client configured from root's hosts.toml the way
// containerd configures its mirror host: that URL, trusting that ca alone.
func containerdClient(t *testing.T, root string) (string, *http.Client) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, mirror.HostsTOMLPath))
	if err != nil {
		t.Fatalf("hosts.toml: %v", err)
	}
	m := hostsTOMLHost.FindStringSubmatch(string(b))
	if m == nil || !strings.HasPrefix(m[1], "https://") {
		t.Fatalf("hosts.toml does not name an HTTPS mirror with its ca:\n%s", b)
	}
	ca := m[2]
	if !filepath.IsAbs(ca) { // beside hosts.toml, as containerd reads it
		ca = filepath.Join(root, filepath.Dir(mirror.HostsTOMLPath), ca)
	}
	caPEM, err := os.ReadFile(ca)
	if err != nil {
		t.Fatalf("hosts.toml's ca: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("hosts.toml's ca %s holds no certificate", m[2])
	}
	return m[1], &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// TestHostileMirrorSquatter (issue 23, finding 3): an unprivileged local user
// stands in for the node's registry mirror.
//
//  1. The mirror's default address is a port below 1024: a process of uid
//     65534 cannot bind it (permission denied).
//  2. Where the port is one it can bind (an operator's --registry-listen, or
//     a host with ip_unprivileged_port_start lowered), the squatter takes it
//     before the agent starts, over TLS with a certificate of its own. The
//     agent says so, `flotilla agent status` fails naming it, the hosts.toml
//     an older flotilla left (plain HTTP) is rewritten to trust only the
//     agent's CA, so a client configured from it refuses the squatter; an
//     apply fails on the images step; `flotilla agent containerd-mirror`
//     fails and removes hosts.toml.
//  3. Once the squatter is gone, the agent serves, status passes, the apply
//     succeeds and a client configured from the hosts.toml it writes pulls
//     the image from the agent's mirror.
func TestHostileMirrorSquatter(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("runs the squatter as uid 65534: needs root")
	}
	if testing.Short() {
		t.Skip("integration test: starts processes")
	}
	ctx := context.Background()

	// 1. The default address: no unprivileged process can take it.
	if s, err := startSquatter(t, mirror.DefaultListen); err == nil {
		s.stop()
		t.Errorf("uid %d bound the mirror's default address %s: it could stand in for the mirror while the agent restarts", nobody, mirror.DefaultListen)
	} else if !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("uid %d could not bind %s, but not for want of privilege (%v): the address is not one only root can take", nobody, mirror.DefaultListen, err)
	}

	// 2. A port the squatter can take, taken before the agent starts.
	addr := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}()
	sq, err := startSquatter(t, addr)
	if err != nil {
		t.Fatalf("the squatter could not take %s: %v", addr, err)
	}

	reg := registrytest.Start(t, registrytest.Options{})
	layer, _ := random.Layer(64<<10, types.OCILayer)
	img := platformImage(t, runtime.GOARCH, layer)
	appRef := reg.Host + "/squat/app:1"
	ref, _ := name.ParseReference(appRef)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	appDigest, _ := img.Digest()
	dir := t.TempDir()
	t.Setenv(store.EnvStore, filepath.Join(dir, "store"))
	st, err := store.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	buildKubefile(t, st, "squat:1", "FROM scratch\nIMAGE "+appRef+"\nON all RUN flotilla agent containerd-mirror --root \"$FLOTILLA_ROOT\"\n")
	reg.Stop()

	f := &fleetT{Fleet: controllertest.Start(t), t: t, dir: dir}
	// The RUN step calls flotilla: the agent's PATH finds the binary under test.
	t.Setenv("PATH", filepath.Dir(f.Bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	root := f.root("n1")
	// What the mirror's previous version left: containerd told to use plain
	// HTTP at this address, where anyone listening would be believed.
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(mirror.HostsTOMLPath)), 0o755); err != nil {
		t.Fatal(err)
	}
	old := "# Written by flotilla: pull every registry's images from the node-local registry\n# mirror first (names and digests unchanged); what it lacks comes from upstream.\n" +
		"[host.\"http://" + addr + "\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
	if err := os.WriteFile(filepath.Join(root, mirror.HostsTOMLPath), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	ag := f.StartAgent("n1", "--registry-listen", addr)
	f.WaitOnline(30*time.Second, true, "n1")
	dataDir := f.AgentDataDir("n1")
	var status *agent.Status
	if err := poll.Until(ctx, 30*time.Second, 50*time.Millisecond, func() bool {
		s, err := agent.ReadStatus(dataDir)
		status = s
		return err == nil && s.Registered && s.RegistryError != ""
	}); err != nil {
		t.Fatalf("the agent's status never says the mirror does not serve: %+v (%v)", status, err)
	}
	out, code := f.RunAgentOnce(ctx, "agent", "status", "--data-dir", dataDir)
	t.Logf("flotilla agent status (exit %d):\n%s", code, out)
	if code == 0 || !strings.Contains(out, "NOT SERVING") || !strings.Contains(out, "taken by another process") {
		t.Errorf("flotilla agent status with the mirror's address taken: exit %d, want non-zero naming it:\n%s", code, out)
	}
	if !strings.Contains(ag.Output(), "registry mirror is NOT serving") {
		t.Errorf("the agent does not say loudly that the mirror does not serve:\n%s", ag.Tail())
	}

	// containerd's configuration does not trust the squatter.
	url, client := containerdClient(t, root)
	if url != "https://"+addr {
		t.Errorf("hosts.toml names %s, want https://%s", url, addr)
	}
	if resp, err := client.Get(url + "/v2/"); err == nil {
		resp.Body.Close()
		t.Errorf("a client configured from hosts.toml talked to the squatter on %s: %s", addr, resp.Status)
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client configured from hosts.toml failed for another reason than the squatter's certificate: %v", err)
	}
	insecure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if resp, err := insecure.Get(url + "/v2/"); err != nil {
		t.Errorf("the squatter does not answer, so the check above shows nothing: %v", err)
	} else {
		resp.Body.Close()
	}

	// An apply fails on the node instead of leaving it pointed at a stranger.
	cf := f.clusterfile("squat", "squat:1", []string{"n1"}, nil, "")
	res, _ := f.apply("-f", cf)
	if res.OK {
		t.Fatalf("apply succeeded while the mirror's address was taken: %s", outcomeLine(res))
	}
	t.Logf("apply with the address taken: %s", outcomeLine(res))
	if !strings.Contains(outcomeLine(res), "registry mirror does not serve") {
		t.Errorf("the failed apply does not say the mirror does not serve: %s", outcomeLine(res))
	}
	// The step that points containerd at the mirror refuses and removes hosts.toml.
	out, code = f.RunAgentOnce(ctx, "agent", "containerd-mirror", "--root", root, "--data-dir", dataDir)
	t.Logf("flotilla agent containerd-mirror (exit %d):\n%s", code, out)
	if code == 0 || !strings.Contains(out, "not pointed at the registry mirror") {
		t.Errorf("containerd-mirror with the mirror's address taken: exit %d:\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(root, mirror.HostsTOMLPath)); !os.IsNotExist(err) {
		t.Errorf("hosts.toml is still there after containerd-mirror failed: %v", err)
	}

	// 3. The squatter leaves: the agent takes the address, everything passes.
	sq.stop()
	if err := poll.Until(ctx, 60*time.Second, 100*time.Millisecond, func() bool {
		s, err := agent.ReadStatus(dataDir)
		return err == nil && s.Registry != ""
	}); err != nil {
		t.Fatalf("the agent did not take its address back: %v\n%s", err, ag.Tail())
	}
	if out, code := f.RunAgentOnce(ctx, "agent", "status", "--data-dir", dataDir); code != 0 {
		t.Errorf("flotilla agent status with the mirror serving: exit %d\n%s", code, out)
	}
	res, _ = f.apply("-f", cf)
	if !res.OK {
		t.Fatalf("apply with the mirror serving: %s", outcomeLine(res))
	}
	url, client = containerdClient(t, root)
	pulled, err := remote.Image(ref, remote.WithTransport(mirrorVia{mirror: strings.TrimPrefix(url, "https://"), tr: client.Transport}),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}))
	if err != nil {
		t.Fatalf("pull through the mirror hosts.toml names: %v", err)
	}
	if err := validate.Image(pulled); err != nil {
		t.Errorf("pulled image does not validate: %v", err)
	}
	if d, _ := pulled.Digest(); d != appDigest {
		t.Errorf("pulled %s, want %s", d, appDigest)
	}
}
