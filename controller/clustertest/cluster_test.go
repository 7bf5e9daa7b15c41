package clustertest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/controller/controllertest"
	"github.com/flotilla-dev/flotilla/controller/natsauth"
	"github.com/flotilla-dev/flotilla/controller/plane"
	"github.com/flotilla-dev/flotilla/internal/natstest"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/internal/syncbuf"
	"github.com/flotilla-dev/flotilla/internal/testbin"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsCluster is three nats-server processes trusting a fresh operator, and
// the controller flags that use them.
type natsCluster struct {
	*natstest.Cluster
	authDir  string
	authConf string
	args     []string
}

func startNATSCluster(t *testing.T, extra func(i int) string) *natsCluster {
	t.Helper()
	return startNATSServers(t, 3, extra)
}

// startNATSServers starts n servers (a cluster when n > 1).
func startNATSServers(t *testing.T, n int, extra func(i int) string) *natsCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts nats-server, controller and agent processes")
	}
	bin, err := testbin.Path()
	if err != nil {
		t.Fatalf("flotilla binary: %v", err)
	}
	authDir := filepath.Join(t.TempDir(), "nats-auth")
	if out, err := exec.Command(bin, "nats-auth", "init", "--dir", authDir).CombinedOutput(); err != nil {
		t.Fatalf("flotilla nats-auth init: %v\n%s", err, out)
	}
	authConf, err := os.ReadFile(filepath.Join(authDir, natsauth.FileServerConf))
	if err != nil {
		t.Fatal(err)
	}
	c := natstest.StartCluster(t, n, string(authConf), extra)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	creds := filepath.Join(authDir, natsauth.FileControllerCreds)
	if err := natstest.WaitJetStream(ctx, c.URLs(), creds); err != nil {
		t.Fatal(err)
	}
	return &natsCluster{Cluster: c, authDir: authDir, authConf: string(authConf), args: []string{
		"--nats-url", strings.Join(c.URLs(), ","),
		"--nats-creds", creds,
		"--nats-account-key", filepath.Join(authDir, natsauth.FileAccountKey),
		"--nats-operator-key", filepath.Join(authDir, natsauth.FileOperatorSigningKey),
		"--nats-account-jwt", filepath.Join(authDir, natsauth.FileAccountJWT),
		"--nats-sys-creds", filepath.Join(authDir, natsauth.FileSysCreds),
	}}
}

// jetStream connects as the controller's user.
func (c *natsCluster) jetStream(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(strings.Join(c.URLs(), ","), nats.UserCredentials(filepath.Join(c.authDir, natsauth.FileControllerCreds)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// slowImage builds an image whose one step takes a few seconds and leaves a
// marker per run (one line per run: a step run twice leaves two lines).
func slowImage(t *testing.T, bin, store string, seconds int) {
	t.Helper()
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "Kubefile"), "FROM scratch\nCOPY --chmod=0755 slow.sh /usr/local/bin/slow\nON all RUN \"${FLOTILLA_ROOT:-}/usr/local/bin/slow\"\n")
	writeFile(t, filepath.Join(src, "slow.sh"), fmt.Sprintf("#!/bin/sh\necho starting\nsleep %d\necho ran >> \"${FLOTILLA_ROOT:-}/slow.runs\"\n", seconds))
	build := exec.Command(bin, "build", "-t", "slow:1.0", src)
	build.Env = append(os.Environ(), "FLOTILLA_STORE="+store)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("flotilla build: %v\n%s", err, out)
	}
}

func clusterfile(t *testing.T, names []string) string {
	t.Helper()
	cf := filepath.Join(t.TempDir(), "Clusterfile")
	writeFile(t, cf, fmt.Sprintf("apiVersion: flotilla.dev/v1\nkind: Cluster\nmetadata: {name: slow}\nspec:\n  image: slow:1.0\n  hosts:\n    - names: [%s]\n      roles: [node]\n",
		strings.Join(names, ", ")))
	return cf
}

// applyRun is a `flotilla apply` process; its stdout and stderr are kept
// whole so that a failure shows what the CLI said.
type applyRun struct {
	cmd            *exec.Cmd
	stdout, stderr syncbuf.Buffer
	done           chan struct{}
	err            error // of Wait, once done is closed
}

// startApply starts `flotilla apply` and returns once a node runs the step.
func startApply(t *testing.T, ctx context.Context, f *controllertest.Fleet, cf string) *applyRun {
	t.Helper()
	r := &applyRun{done: make(chan struct{})}
	r.cmd = exec.CommandContext(ctx, f.Bin, "apply", "-f", cf, "--data-dir", f.ControllerDir())
	r.cmd.Env = append(os.Environ(), "FLOTILLA_CONTROLLER=", "FLOTILLA_CREDENTIALS=")
	r.cmd.Stderr = &r.stderr
	stdout, err := r.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	running := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			fmt.Fprintln(&r.stdout, sc.Text())
			if strings.Contains(sc.Text(), "run: ") && running != nil {
				close(running)
				running = nil
			}
		}
		r.err = r.cmd.Wait()
		close(r.done)
	}()
	select {
	case <-running:
		return r
	case <-r.done:
		t.Fatalf("apply ended before a node ran the step (%v)\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout.String(), r.stderr.String())
	case <-ctx.Done():
		t.Fatalf("no node ran the step: %v\nstdout:\n%s\nstderr:\n%s", ctx.Err(), r.stdout.String(), r.stderr.String())
	}
	return nil
}

// stop ends the apply process (by its PID) and waits for it.
func (r *applyRun) stop() {
	_ = r.cmd.Process.Kill()
	<-r.done
}

// wait waits for the apply to end by itself and fails the test unless it
// exited 0.
func (r *applyRun) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(timeout):
		r.stop()
		t.Fatalf("apply did not end within %s\nstdout:\n%s\nstderr:\n%s", timeout, r.stdout.String(), r.stderr.String())
	}
	if r.err != nil {
		t.Fatalf("apply: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout.String(), r.stderr.String())
	}
}

// waitDone waits for the rollout of cluster slow to be done on every node.
func waitDone(t *testing.T, f *controllertest.Fleet, timeout time.Duration) {
	t.Helper()
	var (
		st  []protocol.ClusterStatus
		err error
	)
	done := func() bool {
		// Each request has its own timeout: one sent while the controller
		// reconnects (or before a standby leads) gets no answer.
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		st, err = f.Status(cctx, "slow")
		return err == nil && len(st) == 1 && st[0].State == protocol.RolloutDone
	}
	if poll.Until(context.Background(), timeout, 200*time.Millisecond, done) != nil {
		t.Logf("controller log:\n%s", f.Controller.Output())
		t.Fatalf("rollout not done after %s; status %+v (err %v)", timeout, st, err)
	}
	for _, n := range st[0].Nodes {
		if n.Applied != st[0].ImageDigest {
			t.Errorf("node %s applied %q, want %q", n.Node, n.Applied, st[0].ImageDigest)
		}
	}
}

// checkRanOnce asserts the slow step ran exactly once on every node.
func checkRanOnce(t *testing.T, f *controllertest.Fleet, names []string) {
	t.Helper()
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(f.Dir, "roots", n, "slow.runs"))
		if err != nil {
			t.Errorf("the slow step did not finish on %s: %v", n, err)
			continue
		}
		if runs := strings.Count(string(data), "ran"); runs != 1 {
			t.Errorf("the slow step ran %d times on %s, want once", runs, n)
		}
	}
}

// TestExistingNATSCluster runs a controller on three nats-server processes:
// every bucket and stream has 3 replicas, agents join with issued user JWTs,
// exec works, an agent cannot reach another node's subjects, and a rollout
// completes although one nats-server is killed while it runs.
func TestExistingNATSCluster(t *testing.T) {
	store := t.TempDir()
	t.Setenv("FLOTILLA_STORE", store)
	nc := startNATSCluster(t, nil)
	f := controllertest.StartExternal(t, nc.args...)
	slowImage(t, f.Bin, store, 4)
	names := []string{"a1", "a2", "a3"}
	for _, n := range names {
		f.StartAgent(n)
	}
	f.WaitOnline(60*time.Second, true, names...)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	js := nc.jetStream(t)
	// Every stream and KV bucket the controller created: 3 replicas.
	lister := js.ListStreams(ctx)
	seen := map[string]bool{}
	for info := range lister.Info() {
		seen[info.Config.Name] = true
		if r := info.Config.Replicas; r != 3 {
			t.Errorf("stream %s has %d replicas, want 3", info.Config.Name, r)
		}
	}
	if err := lister.Err(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"KV_" + plane.NodesBucket, "KV_" + plane.TokensBucket, plane.EventsStream, "KV_flotilla_rollout_rollouts"} {
		if seen[want] {
			continue
		}
		// A listing in a cluster may miss one; ask for it by name.
		s, err := js.Stream(ctx, want)
		if err != nil {
			t.Errorf("stream %s: %v", want, err)
		} else if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("stream %s has %d replicas, want 3", want, r)
		}
	}

	out, errOut, code := f.CLI(ctx, "exec", "--all", "--", "echo", "hello-from-cluster")
	if code != 0 || strings.Count(out, "hello-from-cluster") != len(names) {
		t.Fatalf("exec --all: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	t.Run("TestHostileAgentUser", func(t *testing.T) { hostileAgentUser(t, nc, f) })

	run := startApply(t, ctx, f, clusterfile(t, names))
	victim := nc.Servers[0]
	victim.Kill()
	t.Logf("killed nats-server %s (%s) mid-rollout", victim.Name, victim.URL)
	waitDone(t, f, 90*time.Second)
	run.stop() // it may have lost its server; the rollout is what counts
	checkRanOnce(t, f, names)
}

// hostileAgentUser connects with a node's issued user JWT and tries to read
// another node's tasks and to send admin requests: the cluster refuses both.
func hostileAgentUser(t *testing.T, nc *natsCluster, f *controllertest.Fleet) {
	cr := f.AgentCredentials("a1")
	if cr.JWT == "" || cr.Password != "" {
		t.Fatalf("agent credentials on an external cluster: want a user JWT and no password, got JWT %t password %t", cr.JWT != "", cr.Password != "")
	}
	errs := make(chan error, 10)
	conn, err := f.ConnectNode(cr, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		t.Fatalf("connect as a1: %v", err)
	}
	defer conn.Close()
	got := make(chan *nats.Msg, 1)
	if _, err := conn.Subscribe(protocol.ToNode("a2")+".>", func(m *nats.Msg) { got <- m }); err != nil {
		t.Fatal(err)
	}
	_ = conn.Flush()
	select {
	case err := <-errs:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Errorf("subscribing to a2's subjects: %v, want a permissions violation", err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("subscribing to another node's subjects was not refused")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := conn.RequestWithContext(ctx, protocol.AdminSubject(protocol.AdminNodes), []byte("{}")); err == nil {
		t.Errorf("an agent's user sent an admin request and got an answer")
	}
	// The refusal is logged by the server naming the user, and the controller
	// logged which node that user is.
	uc, err := jwt.DecodeUserClaims(cr.JWT)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(f.Controller.Output(), "node=a1 natsUser="+uc.Subject) {
		t.Errorf("controller did not log a1's NATS user %s", uc.Subject)
	}
	err = poll.Until(context.Background(), 5*time.Second, 100*time.Millisecond, func() bool {
		var logs strings.Builder
		for _, s := range nc.Servers {
			data, _ := os.ReadFile(s.Log)
			logs.Write(data)
		}
		return strings.Contains(logs.String(), "Subscription Violation") && strings.Contains(logs.String(), uc.Subject)
	})
	if err != nil {
		t.Fatalf("no nats-server logged a subscription violation by a1's user %s: %v", uc.Subject, err)
	}
}

// TestControllerFailover runs two controllers with --ha on one NATS cluster,
// kills the leader (SIGKILL) while a rollout runs: the standby takes the
// lease, resumes the rollout from KV and completes it, and no node ran the
// step twice.
func TestControllerFailover(t *testing.T) {
	store := t.TempDir()
	t.Setenv("FLOTILLA_STORE", store)
	nc := startNATSCluster(t, nil)
	// One metrics address for both: only the leader serves (a standby
	// listens on nothing), and the standby leads only once the leader died.
	metrics := fmt.Sprintf("127.0.0.1:%d", natstest.FreePort(t))
	args := append(append([]string{}, nc.args...), "--ha", "--lease-ttl", "3s", "--metrics-listen", metrics)
	leader := controllertest.StartExternal(t, args...)
	standby := controllertest.StartStandby(leader)
	waitLog(t, standby.Controller, "standby: another controller holds the leader lease", 20*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	before := controllerInfo(t, ctx, leader)
	if !before.HA || !strings.Contains(before.ID, fmt.Sprintf("/%d/", leader.Controller.PID())) || before.LeaderSince.IsZero() {
		t.Errorf("controller status before the failover = %+v; want the first controller (pid %d), HA, with a time", before, leader.Controller.PID())
	}
	checkLeaderMetric(t, ctx, metrics)

	slowImage(t, leader.Bin, store, 6)
	names := []string{"h1", "h2", "h3"}
	for _, n := range names {
		leader.StartAgent(n)
	}
	leader.WaitOnline(60*time.Second, true, names...)

	run := startApply(t, ctx, leader, clusterfile(t, names))
	killed := time.Now()
	leader.KillController()
	// An admin request sent while no controller leads waits for the next one.
	out, errOut, code := leader.CLI(ctx, "nodes", "-o", "json")
	if code != 0 || !strings.Contains(out, `"h1"`) {
		t.Errorf("nodes during the failover: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	waitLog(t, standby.Controller, "leader lease acquired", 30*time.Second)
	took := time.Since(killed)
	waitLog(t, standby.Controller, "serving admin requests", 30*time.Second)
	t.Logf("standby took the lease %.1fs after the leader was killed; serving %.1fs after", took.Seconds(), time.Since(killed).Seconds())
	if took > 10*time.Second {
		t.Errorf("takeover took %s, want a few seconds", took)
	}
	// The apply whose controller died follows the rollout on the new leader
	// and ends with its result.
	run.wait(t, 90*time.Second)
	t.Logf("apply done %.1fs after the leader was killed", time.Since(killed).Seconds())
	if !strings.Contains(run.stderr.String(), "sending it to the next leader") {
		t.Errorf("the apply did not say that it follows the rollout on the next leader; stderr:\n%s", run.stderr.String())
	}
	if strings.Contains(run.stderr.String(), "unknown admin request") {
		t.Errorf("a controller answered \"unknown admin request\"; stderr:\n%s", run.stderr.String())
	}
	waitDone(t, leader, 30*time.Second)
	if d := os.Getenv("CLUSTERTEST_LOGS"); d != "" {
		_ = os.WriteFile(filepath.Join(d, "standby.log"), []byte(standby.Controller.Output()), 0o644)
		_ = os.WriteFile(filepath.Join(d, "leader.log"), []byte(leader.Controller.Output()), 0o644)
	}
	checkRanOnce(t, leader, names)
	if !strings.Contains(standby.Controller.Output(), "resumed=true") {
		t.Errorf("the standby did not resume the rollout")
	}
	after := controllerInfo(t, ctx, leader)
	if !strings.Contains(after.ID, fmt.Sprintf("/%d/", standby.Controller.PID())) || !after.LeaderSince.After(killed) {
		t.Errorf("controller status after the failover = %+v; want the standby (pid %d), leading since after %s", after, standby.Controller.PID(), killed)
	}
	checkLeaderMetric(t, ctx, metrics)
}

// controllerInfo runs `flotilla controller status -o json`.
func controllerInfo(t *testing.T, ctx context.Context, f *controllertest.Fleet) protocol.ControllerInfo {
	t.Helper()
	out, errOut, code := f.CLI(ctx, "controller", "status", "-o", "json")
	var info protocol.ControllerInfo
	if code != 0 {
		t.Fatalf("controller status: exit %d\n%s%s", code, out, errOut)
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("controller status -o json: %v\n%s", err, out)
	}
	return info
}

// checkLeaderMetric asserts that the controller serving metrics at addr
// says it leads, and since when.
func checkLeaderMetric(t *testing.T, ctx context.Context, addr string) {
	t.Helper()
	var body string
	err := poll.Until(ctx, 20*time.Second, 100*time.Millisecond, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return strings.Contains(body, "\nflotilla_controller_leader 1\n")
	})
	if err != nil {
		t.Fatalf("no controller at %s says flotilla_controller_leader 1: %v\n%s", addr, err, grepLines(body, "flotilla_controller_leader"))
	}
	if strings.Contains(body, "\nflotilla_controller_leader_since_timestamp_seconds 0\n") || !strings.Contains(body, "flotilla_controller_leader_since_timestamp_seconds") {
		t.Errorf("leader without a leader-since time:\n%s", grepLines(body, "flotilla_controller_leader"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func waitLog(t *testing.T, p *controllertest.Proc, want string, timeout time.Duration) {
	t.Helper()
	if err := poll.Until(context.Background(), timeout, 50*time.Millisecond, func() bool { return strings.Contains(p.Output(), want) }); err != nil {
		t.Fatalf("%s did not log %q within %s; log:\n%s", p.Name, want, timeout, p.Tail())
	}
}

// TestSiteLeafNode runs agents at a "site" whose nats-server is a leaf node
// dialing out to the hub (the controller's NATS): they join, exec and apply
// across the leaf connection; a removed node's stolen credentials stop
// working at the site too.
func TestSiteLeafNode(t *testing.T) {
	store := t.TempDir()
	t.Setenv("FLOTILLA_STORE", store)
	leafPort := natstest.FreePort(t)
	hub := startNATSServers(t, 1, func(int) string {
		return fmt.Sprintf("leafnodes { listen: %q }\n", fmt.Sprintf("127.0.0.1:%d", leafPort))
	})
	iss, err := natsauth.LoadIssuer(filepath.Join(hub.authDir, natsauth.FileAccountKey), filepath.Join(hub.authDir, natsauth.FileControllerCreds))
	if err != nil {
		t.Fatal(err)
	}
	// Two remotes: flotilla's account, and the system account that carries
	// the controller's revocations to the site's server.
	sysAccount := ""
	if _, err := fmt.Sscanf(hub.authConf[strings.Index(hub.authConf, "system_account:"):], "system_account: %s", &sysAccount); err != nil {
		t.Fatalf("system account in auth.conf: %v", err)
	}
	hubLeaf := fmt.Sprintf("nats-leaf://127.0.0.1:%d", leafPort)
	site := natstest.StartServer(t, "site", fmt.Sprintf("leafnodes { remotes: [ { urls: [%q], credentials: %q, account: %q }, { urls: [%q], credentials: %q, account: %q } ] }\n",
		hubLeaf, filepath.Join(hub.authDir, natsauth.FileLeafCreds), iss.Account(),
		hubLeaf, filepath.Join(hub.authDir, natsauth.FileLeafSysCreds), sysAccount)+hub.authConf)
	f := controllertest.StartExternal(t, hub.args...)
	slowImage(t, f.Bin, store, 1)
	names := []string{"s1", "s2"}
	for _, n := range names {
		f.StartAgent(n, "--nats-url", site.URL)
	}
	f.WaitOnline(60*time.Second, true, names...)
	for _, n := range names {
		if !strings.Contains(f.Agents[n].Output(), "url="+site.URL) {
			t.Errorf("agent %s did not connect to the site's leaf node %s", n, site.URL)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, errOut, code := f.CLI(ctx, "exec", "--all", "--", "echo", "hello-from-site")
	if code != 0 || strings.Count(out, "hello-from-site") != len(names) {
		t.Fatalf("exec --all across the leaf: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	out, errOut, code = f.CLI(ctx, "apply", "-f", clusterfile(t, names))
	if code != 0 {
		t.Fatalf("apply across the leaf: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	waitDone(t, f, 60*time.Second)
	checkRanOnce(t, f, names)

	// A thief with s1's credentials at the site: `nodes remove s1` reaches
	// the site's server too (its system account remote), which closes the
	// thief's connection and refuses the credentials from then on.
	stolen := f.AgentCredentials("s1")
	siteOnly := &natsCluster{Cluster: &natstest.Cluster{Servers: []*natstest.Server{site}}}
	taps := tapAll(t, siteOnly, stolen)
	removing := time.Now()
	if out, errOut, code := f.CLI(ctx, "nodes", "remove", "s1"); code != 0 {
		t.Fatalf("nodes remove s1: exit %d\n%s%s", code, out, errOut)
	}
	waitClosed(t, taps, removing, "nodes remove s1")
	refusedEverywhere(t, ctx, siteOnly, stolen, "after nodes remove s1, at the site")
}
