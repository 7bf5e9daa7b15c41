package e2e_test

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/e2e/e2etest"
	"github.com/flotilla-dev/flotilla/e2e/fleettest"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/internal/testbin"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/flotilla-dev/flotilla/sandbox"
)

// The Kubernetes scenario has a fleet of its own (fltk, 10.77.11.0/27: host .1,
// node1..node5 = .2-.6, the apiservers' VIP .20).
const (
	k8sFleet   = "fltk"
	k8sSubnet  = "10.77.11.0/27"
	k8sVIP     = "10.77.11.20"
	k8sVersion = "v1.34.4"
	k8sExample = "../examples/kubernetes"
)

// k8sWorkload is what the test runs in the cluster: two web pods on two different
// workers (required anti-affinity; the masters are tainted), a Service in front of
// them, and a client pod to fetch from it by its DNS name.
const k8sWorkload = `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - topologyKey: kubernetes.io/hostname
            labelSelector: {matchLabels: {app: web}}
      containers:
      - name: web
        image: flotilla.local/busybox:1.35
        imagePullPolicy: IfNotPresent
        command: [/bin/sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" >/www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node4
  containers:
  - name: client
    image: flotilla.local/busybox:1.35
    imagePullPolicy: IfNotPresent
    command: [/bin/sleep, "3600"]
`

// k8sBuild makes sure examples/kubernetes/_out is complete. With the Kubernetes
// binaries absent from the cache it skips, unless CI is set: then it builds them
// (about 15 minutes of a 2-core machine; see examples/kubernetes/README.md).
func k8sBuild(t *testing.T) {
	t.Helper()
	cache := filepath.Join("/var/cache/flotilla-k8s", k8sVersion, "bin", ".stamp")
	if _, err := os.Stat(cache); err != nil && os.Getenv("CI") == "" {
		t.Skipf("no cached Kubernetes %s binaries (%s): run examples/kubernetes/build.sh once (about 15 minutes on 2 cores), or set CI=1 to build them here", k8sVersion, cache)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(k8sExample, "build.sh")).CombinedOutput()
	if err != nil {
		t.Fatalf("examples/kubernetes/build.sh: %v\n%s", err, out)
	}
	t.Logf("build.sh: %s", strings.TrimSpace(lastLine(string(out))))
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// TestKubernetes rolls examples/kubernetes out to 3 masters and 2 workers of the
// sandbox fleet and proves the cluster works: 5 nodes Ready, a Deployment on two
// workers, a Service reached by its DNS name from a pod on another node, a worker
// that leaves (drained, deleted, its node clean) and comes back, and kubectl
// through the VIP with master0 gone.
func TestKubernetes(t *testing.T) {
	fleettest.Require(t)
	var stages []string
	stage := func(name string, start time.Time) {
		d := time.Since(start).Round(100 * time.Millisecond)
		stages = append(stages, fmt.Sprintf("%-44s %8s", name, d))
		t.Logf("stage %s: %s", name, d)
	}
	defer func() { t.Logf("stage timings:\n%s", strings.Join(stages, "\n")) }()

	start := time.Now()
	k8sBuild(t)
	stage("build.sh (binaries, tools, images; cached)", start)

	e2etest.UseStore(t)
	start = time.Now()
	bin, err := testbin.Path()
	if err != nil {
		t.Fatalf("flotilla binary: %v", err)
	}
	bctx, bcancel := context.WithTimeout(context.Background(), 15*time.Minute)
	out, err := exec.CommandContext(bctx, bin, "build", "-q", "-t", "e2e/kubernetes:"+k8sVersion, k8sExample).CombinedOutput()
	bcancel()
	if err != nil {
		t.Fatalf("flotilla build: %v\n%s", err, out)
	}
	stage("flotilla build (cluster image)", start)

	start = time.Now()
	env := e2etest.Start(t, sandbox.Options{Name: k8sFleet, Subnet: k8sSubnet, N: 5, Kubernetes: true})
	stage("boot and join 5 nodes", start)
	f, c := env.Fleet, env.Controller
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	secret, masterSecret := make([]byte, 24), make([]byte, 24)
	_, _ = rand.Read(secret)
	_, _ = rand.Read(masterSecret)
	cf := filepath.Join(t.TempDir(), "Clusterfile")
	doc := fmt.Sprintf(`apiVersion: flotilla.dev/v1
kind: Cluster
metadata: {name: e2e-k8s}
spec:
  image: e2e/kubernetes:%s
  vip: %s
  env: {K8S_PKI_TOKEN: %s}
  hosts:
    - names: [node1, node2, node3]
      roles: [master]
      env: {K8S_PKI_MASTER_TOKEN: %s}
    - names: [node4, node5]
      roles: [node]
  rollout: {stepTimeout: 5m}
`, k8sVersion, k8sVIP, hex.EncodeToString(secret), hex.EncodeToString(masterSecret))
	if err := os.WriteFile(cf, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	res, progress, err := c.Apply(ctx, cf)
	if err != nil || res == nil || !res.OK {
		t.Fatalf("apply: %v\n%+v\n%s", err, res, progress)
	}
	stage("flotilla apply (3 masters, 2 workers)", start)
	t.Logf("health after apply:\n%s", res.Health)
	for _, sec := range []string{hex.EncodeToString(secret), hex.EncodeToString(masterSecret)} {
		if strings.Contains(progress, sec) || strings.Contains(res.Health, sec) {
			t.Errorf("a PKI secret appears in the apply output")
		}
		if b, err := os.ReadFile(c.Log); err != nil || strings.Contains(string(b), sec) {
			t.Errorf("a PKI secret appears in the controller's log (or the log is unreadable: %v)", err)
		}
		for _, n := range []string{"node1", "node2", "node4"} {
			if out, err := f.Exec(ctx, n, "journalctl", "--no-pager", "-q", "-o", "cat"); err != nil || strings.Contains(string(out), sec) {
				t.Errorf("%s: a PKI secret appears in the node's journal (or journalctl failed: %v)", n, err)
			}
		}
	}
	// A worker, compromised, tries the control-plane PKI (the CA keys) from
	// master0 with the only secret it holds: refused, and master0 logs it.
	hostile := fmt.Sprintf("K8S_PKI_TOKEN=another-secret-of-at-least-32-characters K8S_PKI_MASTER_TOKEN=%s /usr/local/bin/flotilla-k8s-pki fetch --what master --dir /tmp/stolen --server 10.77.11.2:6290 --wait 1s", hex.EncodeToString(secret))
	if out, err := f.Exec(ctx, "node4", "/bin/sh", "-c", hostile); err == nil || !strings.Contains(string(out), "401") {
		t.Errorf("node4 fetching the master PKI with the node secret: %v, want a 401:\n%s", err, out)
	}
	if out, _ := f.Exec(ctx, "node4", "/bin/sh", "-c", "ls /tmp/stolen/pki 2>/dev/null; test -e /etc/kubernetes/pki/ca.key && echo ca.key"); strings.TrimSpace(string(out)) != "" {
		t.Errorf("node4 holds control-plane keys: %s", out)
	}
	if out, _ := f.Exec(ctx, "node1", "journalctl", "--no-pager", "-q", "-o", "cat", "-u", "flotilla-k8s-pki.service"); !strings.Contains(string(out), "refused") || !strings.Contains(string(out), "10.77.11.5") {
		t.Errorf("master0 did not log node4's refused request:\n%s", out)
	}

	kubectl := func(node string, args ...string) (string, error) {
		argv := append([]string{"/usr/local/bin/kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "--request-timeout", "10s"}, args...)
		out, err := f.Exec(ctx, node, argv...)
		return strings.TrimSpace(string(out)), err
	}
	// waitFor polls fn every 2 s until it returns nil or the timeout passes.
	waitFor := func(what string, timeout time.Duration, fn func() error) {
		t.Helper()
		var err error
		if poll.Until(ctx, timeout, 2*time.Second, func() bool { err = fn(); return err == nil }) != nil {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
	}

	start = time.Now()
	waitFor("5 nodes Ready", 3*time.Minute, func() error {
		out, err := kubectl("node2", "get", "nodes", "--no-headers")
		if err != nil {
			return err
		}
		ready := 0
		for _, l := range strings.Split(out, "\n") {
			if fs := strings.Fields(l); len(fs) > 1 && fs[1] == "Ready" {
				ready++
			}
		}
		if ready != 5 {
			return fmt.Errorf("%d of 5 Ready:\n%s", ready, out)
		}
		return nil
	})
	stage("5 nodes Ready (after apply)", start)
	nodesWide, _ := kubectl("node2", "get", "nodes", "-o", "wide")
	t.Logf("kubectl get nodes -o wide:\n%s", nodesWide)

	start = time.Now()
	if _, err := f.Exec(ctx, "node2", "/bin/sh", "-c", "cat >/root/workload.yaml <<'EOF'\n"+k8sWorkload+"EOF"); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("node2", "apply", "-f", "/root/workload.yaml"); err != nil {
		t.Fatalf("apply workload: %v\n%s", err, out)
	}
	waitFor("deployment web rolled out", 3*time.Minute, func() error {
		_, err := kubectl("node2", "rollout", "status", "deployment/web", "--timeout", "5s")
		return err
	})
	wide, _ := kubectl("node2", "get", "pods", "-o", "wide", "-l", "app=web")
	t.Logf("web pods:\n%s", wide)
	nodesOf, err := kubectl("node2", "get", "pods", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.spec.nodeName}{\" \"}{end}")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(nodesOf)
	if len(got) != 2 || got[0] == got[1] || !strings.HasPrefix(got[0]+got[1], "node") ||
		strings.Contains(nodesOf, "node1") || strings.Contains(nodesOf, "node2") || strings.Contains(nodesOf, "node3") {
		t.Fatalf("web pods on %q, want one on each worker (node4, node5)", nodesOf)
	}
	stage("deployment of 2 on two workers", start)

	start = time.Now()
	waitFor("client pod running", 2*time.Minute, func() error {
		_, err := kubectl("node2", "wait", "--for=condition=Ready", "pod/client", "--timeout", "5s")
		return err
	})
	k8sImagesFromMirror(ctx, t, f, "node4")
	remotePod, err := kubectl("node2", "get", "pods", "-l", "app=web", "--field-selector", "spec.nodeName=node5", "-o", "jsonpath={.items[0].metadata.name}")
	if err != nil || remotePod == "" {
		t.Fatalf("web pod on node5: %v %q", err, remotePod)
	}
	// kube-proxy balances at random: fetch until the pod on node5 has answered the
	// client on node4 (cross-node pod network), by the Service's DNS name.
	var answers []string
	waitFor("client on node4 reaches the web pod on node5 through web.default.svc.cluster.local", 2*time.Minute, func() error {
		// Not wget -T: Debian's busybox-static wget segfaults with it (here, 1.35.0).
		out, err := kubectl("node2", "exec", "client", "--", "timeout", "5", "wget", "-q", "-O-", "http://web.default.svc.cluster.local/")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		answers = append(answers, out)
		if !strings.Contains(out, remotePod) {
			return fmt.Errorf("answered by another pod: %q", out)
		}
		return nil
	})
	t.Logf("answers from web.default.svc.cluster.local: %q", answers)
	stage("pod to Service on another node by DNS name", start)

	// Scale down: node5 leaves the Clusterfile. Its CLEANUP drains it, deletes
	// its Node object and takes back what Kubernetes made on it.
	start = time.Now()
	down := strings.Replace(doc, "names: [node4, node5]", "names: [node4]", 1)
	if err := os.WriteFile(cf, []byte(down), 0o600); err != nil {
		t.Fatal(err)
	}
	// The nodes that stay run the routes unit again (it names every node) and
	// nothing else: no restart of containerd, the control plane or kubelet.
	planOut, planErr, err := c.CLI(ctx, "plan", "-f", cf, "-o", "json")
	if err != nil {
		t.Fatalf("plan without node5: %v\n%s", err, planErr)
	}
	var plan protocol.ClusterPlan
	if err := json.Unmarshal([]byte(planOut), &plan); err != nil {
		t.Fatalf("plan -o json: %v", err)
	}
	for _, ph := range plan.Phases {
		for _, n := range ph.Nodes {
			var runs []string
			for _, st := range n.Steps {
				if !st.Skip {
					runs = append(runs, st.Command)
				}
			}
			switch {
			case n.Node == "node5" && n.Action != protocol.ActionRemove:
				t.Errorf("plan: node5 %s, want remove", n.Action)
			case n.Node != "node5" && (len(runs) != 1 || runs[0] != "flotilla-k8s-routes.service"):
				t.Errorf("plan: %s runs %q when node5 leaves, want only flotilla-k8s-routes.service", n.Node, runs)
			}
		}
	}
	res, progress, err = c.Apply(ctx, cf)
	if err != nil || res == nil || !res.OK {
		t.Fatalf("apply without node5: %v\n%+v\n%s", err, res, progress)
	}
	if !strings.Contains(progress, "cleanup: flotilla-k8s-leave") || !strings.Contains(progress, "cleanup: flotilla-k8s-reset") {
		t.Errorf("node5's removal did not run its CLEANUP steps:\n%s", progress)
	}
	if out, err := kubectl("node2", "get", "nodes", "--no-headers", "-o", "custom-columns=NAME:.metadata.name"); err != nil || strings.Contains(out, "node5") || len(strings.Fields(out)) != 4 {
		t.Errorf("nodes after node5 left: %v\n%s", err, out)
	}
	if out, err := kubectl("node2", "get", "pods", "-A", "--field-selector", "spec.nodeName=node5", "--no-headers"); err != nil || out != "" && !strings.Contains(out, "No resources") {
		t.Errorf("pods still bound to node5 after it left: %v\n%s", err, out)
	}
	// What must be gone from node5 (names of what is left, one word each).
	const leftovers = `left=""
ip link show cni0 >/dev/null 2>&1 && left="$left cni0"
ip -4 route | grep -q '^10\.244\.' && left="$left pod-routes"
[ -e /etc/containerd/certs.d/_default/hosts.toml ] && left="$left mirror-hosts.toml"
[ -e /etc/containerd/certs.d/_default/flotilla-mirror-ca.crt ] && left="$left mirror-ca"
[ -e /etc/kubernetes/kubelet.conf ] && left="$left kubelet.conf"
[ -e /var/lib/kubelet/pods ] && left="$left kubelet-pods"
[ -n "$(ls -A /var/lib/containerd 2>/dev/null)" ] && left="$left containerd-state"
for u in containerd kubelet kube-proxy flotilla-lvscare; do systemctl is-active -q "$u" && left="$left $u"; done
grep -q ' /var/lib/kubelet/\| /run/containerd/' /proc/self/mountinfo && left="$left mounts"
echo "$left"`
	if out, err := f.Exec(ctx, "node5", "/bin/sh", "-c", leftovers); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("node5 after it left the cluster: %v; left behind:%s", err, out)
	}
	// The node's iptables went with the image's files: read its netns's rules with the host's nft.
	rules, err := exec.CommandContext(ctx, "nsenter", "--net="+f.NetnsPath("node5"), "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Errorf("nft list ruleset in node5's netns: %v\n%s", err, rules)
	}
	for _, left := range []string{"chain KUBE-", "chain CNI-", "flotilla-k8s"} {
		if strings.Contains(string(rules), left) {
			t.Errorf("node5 after it left the cluster: its netns still has %q:\n%s", left, rules)
		}
	}
	stage("scale down: node5 drained, deleted, reset", start)

	// Scale up: node5 comes back (a node that was reset joins like a new one),
	// and the web replica that had nowhere to go runs on it again.
	start = time.Now()
	if err := os.WriteFile(cf, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	res, progress, err = c.Apply(ctx, cf)
	if err != nil || res == nil || !res.OK {
		t.Fatalf("apply with node5 again: %v\n%+v\n%s", err, res, progress)
	}
	waitFor("node5 Ready again and web rolled out on two workers", 3*time.Minute, func() error {
		out, err := kubectl("node2", "get", "node", "node5", "--no-headers")
		if err != nil || !strings.Contains(out, " Ready ") {
			return fmt.Errorf("node5: %v %s", err, out)
		}
		_, err = kubectl("node2", "rollout", "status", "deployment/web", "--timeout", "5s")
		return err
	})
	stage("scale up: node5 joins again", start)

	// A worker gets the admin kubeconfig too (server: the VIP), so kubectl goes
	// through lvscare on a master (node2) and on a worker (node4).
	admin, err := os.ReadFile(filepath.Join(f.Root("node2"), "etc/kubernetes/admin.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.Root("node4"), "root/admin.conf"), admin, 0o600); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := f.Kill("node1"); err != nil {
		t.Fatalf("stop master0: %v", err)
	}
	for _, node := range []string{"node2", "node4"} {
		kc := "/etc/kubernetes/admin.conf"
		if node == "node4" {
			kc = "/root/admin.conf"
		}
		oks := 0
		waitFor("kubectl on "+node+" through the VIP with master0 stopped (5 answers in a row)", 90*time.Second, func() error {
			for oks < 5 {
				out, err := f.Exec(ctx, node, "/usr/local/bin/kubectl", "--kubeconfig", kc, "--request-timeout", "5s", "get", "nodes", "--no-headers")
				if err != nil {
					oks = 0
					return fmt.Errorf("%v: %s", err, out)
				}
				oks++
			}
			return nil
		})
	}
	stage("kubectl via VIP with master0 killed", start)
}

// k8sImagesFromMirror proves that node's container images came through the agent's
// registry mirror, carried in the cluster image (IMAGE --from), and not from an
// import: containerd (CRI) holds registry.k8s.io/pause:3.10 (the sandbox image) and
// flotilla.local/busybox:1.35 with the digests of build.sh's archives, pulled
// (containerd labels pulled content with its distribution source, an import does
// not), the agent's journal has the mirror serving those manifests, and the old
// import directory does not exist.
func k8sImagesFromMirror(ctx context.Context, t *testing.T, f *sandbox.Fleet, node string) {
	t.Helper()
	journal, err := f.Exec(ctx, node, "journalctl", "-u", "flotilla-agent", "--no-pager", "-q", "-o", "cat")
	if err != nil {
		t.Fatalf("%s: agent journal: %v", node, err)
	}
	for _, im := range []struct{ archive, name, repo string }{
		{"pause.tar", "registry.k8s.io/pause:3.10", "registry.k8s.io/pause"},
		{"busybox.tar", "flotilla.local/busybox:1.35", "flotilla.local/busybox"},
	} {
		digest := ociArchiveDigest(t, filepath.Join(k8sExample, "_out/images", im.archive))
		out, err := f.Exec(ctx, node, "/usr/bin/ctr", "-n", "k8s.io", "images", "ls", "name=="+im.name)
		if err != nil || !strings.Contains(string(out), digest) {
			t.Errorf("%s: containerd does not hold %s as %s (the carried digest): %v\n%s", node, im.name, digest, err, out)
		}
		info, err := f.Exec(ctx, node, "/usr/bin/ctr", "-n", "k8s.io", "content", "ls")
		if err != nil || !contentPulledFrom(string(info), digest, im.repo) {
			t.Errorf("%s: containerd's content %s has no distribution source label of %s (not pulled?): %v\n%s", node, digest, im.repo, err, info)
		}
		served := false
		for _, l := range strings.Split(string(journal), "\n") {
			if strings.Contains(l, "registry mirror served a manifest") && strings.Contains(l, im.repo) && strings.Contains(l, digest) {
				served = true
			}
		}
		if !served {
			t.Errorf("%s: the agent's mirror never served %s (%s); agent journal:\n%s", node, im.name, digest, lastLines(string(journal), 40))
		} else {
			t.Logf("%s: %s %s pulled by containerd through the agent's mirror", node, im.name, digest)
		}
	}
	if _, err := os.Stat(filepath.Join(f.Root(node), "var/lib/flotilla-k8s/images")); !os.IsNotExist(err) {
		t.Errorf("%s: /var/lib/flotilla-k8s/images exists (%v): images are carried, not copied and imported", node, err)
	}
}

// contentPulledFrom reports whether ctr content ls lists digest with the label
// containerd.io/distribution.source.<registry>=<repo> a pull sets.
func contentPulledFrom(ls, digest, repo string) bool {
	registry, path, _ := strings.Cut(repo, "/")
	for _, l := range strings.Split(ls, "\n") {
		if strings.HasPrefix(l, digest) && strings.Contains(l, "containerd.io/distribution.source."+registry+"="+path) {
			return true
		}
	}
	return false
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// ociArchiveDigest returns the digest of the one image an OCI layout tar (as
// tools/ociimage writes it) holds: its index.json's only entry.
func ociArchiveDigest(t *testing.T, path string) string {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	tr := tar.NewReader(fh)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s: no index.json: %v", path, err)
		}
		if strings.TrimPrefix(h.Name, "./") != "index.json" {
			continue
		}
		var idx struct {
			Manifests []struct {
				Digest string `json:"digest"`
			} `json:"manifests"`
		}
		if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(&idx); err != nil || len(idx.Manifests) != 1 {
			t.Fatalf("%s: index.json: %v (%d entries, want 1)", path, err, len(idx.Manifests))
		}
		return idx.Manifests[0].Digest
	}
}

// The lvscare templates of examples/kubernetes are copies of lvscare/'s (a cluster
// image's sources must be inside its context): they must not drift.
func TestKubernetesExampleLvscareTemplatesMatch(t *testing.T) {
	for _, name := range []string{"flotilla-lvscare.service.tmpl", "lvscare.yaml.tmpl"} {
		want, err := os.ReadFile(filepath.Join("../lvscare", name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(k8sExample, "units", name))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("examples/kubernetes/units/%s differs from lvscare/%s: copy it again (cp lvscare/%s examples/kubernetes/units/)", name, name, name)
		}
	}
}
