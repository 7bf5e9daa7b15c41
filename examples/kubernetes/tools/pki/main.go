// Command pki makes and hands out the certificates of the Kubernetes cluster image.
//
//	pki init  --dir /etc/kubernetes --vip VIP --masters IP,IP,IP
//	pki serve --dir /etc/kubernetes --listen IP:6290
//	pki fetch --dir /etc/kubernetes --server IP:6290 --what master|node --node NAME --vip VIP
//
// init runs once on master0: a cluster CA, an etcd peer CA, the apiserver's
// serving and kubelet-client certificates, the service-account key pair, and the
// kubeconfigs of the admin, controller-manager, scheduler and kube-proxy. Files
// that exist are kept, so a second run changes nothing.
//
// serve (a unit on master0) hands them to the other nodes over the node network,
// under two secrets (at least 32 characters each, from the Clusterfile's env;
// never in the image, never on a command line, never logged):
// $K8S_PKI_MASTER_TOKEN, which only the masters get (the masters' host entry's
// env), for /v1/master, the whole control-plane PKI with the CA keys; and
// $K8S_PKI_TOKEN, which every node gets, for /v1/node/NAME: the cluster CA's
// certificate, kube-proxy's kubeconfig and a kubelet kubeconfig for NAME made on
// the spot. So a worker, compromised or not, never holds what opens the CA key.
// From each secret HKDF derives a MAC key and an encryption key: a request
// carries an HMAC over method, path and a timestamp (refused if off by more than
// 5 minutes, logged with the sender's address); an answer is AES-256-GCM with
// the request path as additional data, so only a holder of the path's secret can
// read it and an answer for one path cannot pass for another.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	tokenEnv       = "K8S_PKI_TOKEN"        // every node: /v1/node/NAME
	masterTokenEnv = "K8S_PKI_MASTER_TOKEN" // masters only: /v1/master
	minTokenLen   = 32
	maxClockSkew  = 5 * time.Minute
	maxBundleSize = 1 << 20
	validity      = 10 * 365 * 24 * time.Hour
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	var err error
	switch os.Args[1] {
	case "init":
		err = cmdInit(os.Args[2:])
	case "serve":
		err = cmdServe(os.Args[2:], log)
	case "fetch":
		err = cmdFetch(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "flotilla-k8s-pki:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: flotilla-k8s-pki init|serve|fetch [flags] (see the source's doc comment)")
	os.Exit(2)
}

// ---- init ----

func cmdInit(args []string) error {
	fs := flag.NewFlagSet("init", flag.ExitOnError)
	dir := fs.String("dir", "/etc/kubernetes", "output directory")
	vip := fs.String("vip", "", "the cluster's VIP (apiservers behind lvscare)")
	masters := fs.String("masters", "", "comma-separated master IPs")
	serviceIP := fs.String("service-ip", "10.96.0.1", "the kubernetes Service's ClusterIP")
	domain := fs.String("cluster-domain", "cluster.local", "cluster domain")
	_ = fs.Parse(args)
	ips, err := parseIPs(*masters)
	if err != nil {
		return fmt.Errorf("--masters: %w", err)
	}
	vipIP := net.ParseIP(*vip)
	if vipIP == nil {
		return fmt.Errorf("--vip %q is not an IP address", *vip)
	}
	svcIP := net.ParseIP(*serviceIP)
	if svcIP == nil {
		return fmt.Errorf("--service-ip %q is not an IP address", *serviceIP)
	}
	p := &pkiDir{dir: *dir}
	ca, caKey, err := p.ca("pki/ca", "kubernetes")
	if err != nil {
		return err
	}
	etcdCA, etcdKey, err := p.ca("pki/etcd/ca", "etcd-ca")
	if err != nil {
		return err
	}
	sans := append([]net.IP{vipIP, svcIP, net.ParseIP("127.0.0.1")}, ips...)
	names := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + *domain}
	if err := p.leaf("pki/apiserver", ca, caKey, pkix.Name{CommonName: "kube-apiserver"}, names, sans, true); err != nil {
		return err
	}
	if err := p.leaf("pki/apiserver-kubelet-client", ca, caKey, pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}}, nil, nil, false); err != nil {
		return err
	}
	for _, ip := range ips {
		if err := p.leaf("pki/etcd/peer-"+ip.String(), etcdCA, etcdKey, pkix.Name{CommonName: ip.String()}, nil, []net.IP{ip}, true); err != nil {
			return err
		}
	}
	if err := p.saKey(); err != nil {
		return err
	}
	vipURL := "https://" + net.JoinHostPort(vipIP.String(), "6443")
	local := "https://127.0.0.1:6443"
	confs := []struct {
		file, server string
		subject      pkix.Name
	}{
		{"admin.conf", vipURL, pkix.Name{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}}},
		{"controller-manager.conf", local, pkix.Name{CommonName: "system:kube-controller-manager"}},
		{"scheduler.conf", local, pkix.Name{CommonName: "system:kube-scheduler"}},
		{"kube-proxy.conf", vipURL, pkix.Name{CommonName: "system:kube-proxy"}},
	}
	for _, c := range confs {
		if _, err := os.Stat(filepath.Join(*dir, c.file)); err == nil {
			continue
		}
		b, err := kubeconfig(ca, caKey, c.server, c.subject)
		if err != nil {
			return err
		}
		if err := p.write(c.file, b, 0o600); err != nil {
			return err
		}
	}
	fmt.Printf("flotilla-k8s-pki: PKI ready in %s (%d masters, VIP %s)\n", *dir, len(ips), vipIP)
	return nil
}

func parseIPs(s string) ([]net.IP, error) {
	var out []net.IP
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		ip := net.ParseIP(f)
		if ip == nil {
			return nil, fmt.Errorf("%q is not an IP address", f)
		}
		out = append(out, ip)
	}
	if len(out) == 0 {
		return nil, errors.New("no IP addresses")
	}
	return out, nil
}

type pkiDir struct{ dir string }

func (p *pkiDir) write(name string, data []byte, mode os.FileMode) error {
	path := filepath.Join(p.dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (p *pkiDir) exists(name string) bool {
	_, err := os.Stat(filepath.Join(p.dir, name))
	return err == nil
}

func newKey() (*ecdsa.PrivateKey, []byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// ca loads the CA at base.{crt,key}, or makes it.
func (p *pkiDir) ca(base, cn string) (*x509.Certificate, crypto.Signer, error) {
	if p.exists(base+".crt") && p.exists(base+".key") {
		return loadPair(filepath.Join(p.dir, base))
	}
	k, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", base, err)
	}
	if err := p.write(base+".key", keyPEM, 0o600); err != nil {
		return nil, nil, err
	}
	if err := p.write(base+".crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, k, err
}

func loadPair(base string) (*x509.Certificate, crypto.Signer, error) {
	cb, err := os.ReadFile(base + ".crt")
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(base + ".key")
	if err != nil {
		return nil, nil, err
	}
	cp, _ := pem.Decode(cb)
	kp, _ := pem.Decode(kb)
	if cp == nil || kp == nil {
		return nil, nil, fmt.Errorf("%s: not PEM", base)
	}
	c, err := x509.ParseCertificate(cp.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s.crt: %w", base, err)
	}
	k, err := x509.ParseECPrivateKey(kp.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s.key: %w", base, err)
	}
	return c, k, nil
}

func issue(ca *x509.Certificate, caKey crypto.Signer, subject pkix.Name, dns []string, ips []net.IP, server bool) (certPEM, keyPEM []byte, err error) {
	k, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if server {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: subject,
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: usage, DNSNames: dns, IPAddresses: ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, k.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate %s: %w", subject.CommonName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

func (p *pkiDir) leaf(base string, ca *x509.Certificate, caKey crypto.Signer, subject pkix.Name, dns []string, ips []net.IP, server bool) error {
	if p.exists(base+".crt") && p.exists(base+".key") {
		return nil
	}
	c, k, err := issue(ca, caKey, subject, dns, ips, server)
	if err != nil {
		return err
	}
	if err := p.write(base+".key", k, 0o600); err != nil {
		return err
	}
	return p.write(base+".crt", c, 0o644)
}

func (p *pkiDir) saKey() error {
	if p.exists("pki/sa.key") && p.exists("pki/sa.pub") {
		return nil
	}
	k, keyPEM, err := newKey()
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		return err
	}
	if err := p.write("pki/sa.key", keyPEM, 0o600); err != nil {
		return err
	}
	return p.write("pki/sa.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

func kubeconfig(ca *x509.Certificate, caKey crypto.Signer, server string, subject pkix.Name) ([]byte, error) {
	c, k, err := issue(ca, caKey, subject, nil, nil, false)
	if err != nil {
		return nil, err
	}
	b64 := base64.StdEncoding.EncodeToString
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: kubernetes
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: default
  context: {cluster: kubernetes, user: %s}
current-context: default
`, server, b64(caPEM), strconv.Quote(subject.CommonName), b64(c), b64(k), strconv.Quote(subject.CommonName)), nil
}

// ---- the secret ----

type keys struct{ mac, enc []byte }

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9._~+/=-]+$`)

// loadKeys derives the keys of the secret in the environment variable env
// (tokenEnv or masterTokenEnv).
func loadKeys(env string) (keys, error) {
	tok := os.Getenv(env)
	where := "the Clusterfile's spec.env"
	if env == masterTokenEnv {
		where = "the env of the Clusterfile's masters entry, not spec.env: workers must not get it"
	}
	if len(tok) < minTokenLen {
		return keys{}, fmt.Errorf("$%s must be set to a secret of at least %d characters (%s); it has %d", env, minTokenLen, where, len(tok))
	}
	if !tokenRE.MatchString(tok) {
		return keys{}, fmt.Errorf("$%s may hold only letters, digits and . _ ~ + / = - (it goes into a systemd EnvironmentFile)", env)
	}
	if env == masterTokenEnv && tok == os.Getenv(tokenEnv) {
		return keys{}, fmt.Errorf("$%s must differ from $%s: every node holds the latter", masterTokenEnv, tokenEnv)
	}
	mac, err := hkdf.Key(sha256.New, []byte(tok), nil, "flotilla-k8s-pki v1 mac", 32)
	if err != nil {
		return keys{}, err
	}
	enc, err := hkdf.Key(sha256.New, []byte(tok), nil, "flotilla-k8s-pki v1 enc", 32)
	if err != nil {
		return keys{}, err
	}
	return keys{mac: mac, enc: enc}, nil
}

func (k keys) sign(method, path string, ts int64) string {
	h := hmac.New(sha256.New, k.mac)
	fmt.Fprintf(h, "%s\n%s\n%d", method, path, ts)
	return hex.EncodeToString(h.Sum(nil))
}

func (k keys) aead() (cipher.AEAD, error) {
	b, err := aes.NewCipher(k.enc)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// ---- serve ----

var nodeNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$`)

// masterFiles are what the other masters get: everything but kubelet.conf.
func masterFiles(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if d.Type().IsRegular() && rel != "kubelet.conf" && !strings.HasSuffix(rel, ".tmp") &&
			(strings.HasPrefix(rel, "pki/") || strings.HasSuffix(rel, ".conf")) {
			out = append(out, rel)
		}
		return nil
	})
	return out, err
}

type server struct {
	dir    string
	keys   keys // tokenEnv's: /v1/node/NAME
	master keys // masterTokenEnv's: /v1/master
	log    *slog.Logger
	mu   sync.Mutex // one bundle at a time: bounded CPU and memory
}

func cmdServe(args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	dir := fs.String("dir", "/etc/kubernetes", "the PKI made by init")
	listen := fs.String("listen", "", "address to serve on (the node's IP and a port)")
	_ = fs.Parse(args)
	k, err := loadKeys(tokenEnv)
	if err != nil {
		return err
	}
	mk, err := loadKeys(masterTokenEnv)
	if err != nil {
		return err
	}
	if _, _, err := loadPair(filepath.Join(*dir, "pki/ca")); err != nil {
		return fmt.Errorf("no CA in %s (run init first): %w", *dir, err)
	}
	s := &server{dir: *dir, keys: k, master: mk, log: log}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hs := &http.Server{Addr: *listen, Handler: s, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, MaxHeaderBytes: 8 << 10}
	go func() {
		<-ctx.Done()
		_ = hs.Close()
	}()
	log.Info("serving the cluster PKI (encrypted to the holders of the secret)", "listen", *listen)
	if err := hs.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (s *server) refuse(w http.ResponseWriter, r *http.Request, code int, why string) {
	s.log.Warn("refused", "from", r.RemoteAddr, "path", r.URL.Path, "why", why)
	http.Error(w, why, code)
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		s.refuse(w, r, http.StatusMethodNotAllowed, "only GET")
		return
	}
	ts, mac, ok := parseAuth(r.Header.Get("Authorization"))
	if !ok {
		s.refuse(w, r, http.StatusUnauthorized, "no or malformed Authorization")
		return
	}
	if d := time.Since(time.Unix(ts, 0)); d > maxClockSkew || d < -maxClockSkew {
		s.refuse(w, r, http.StatusUnauthorized, "timestamp off by more than 5 minutes")
		return
	}
	k := s.keys
	if r.URL.Path == "/v1/master" {
		k = s.master
	}
	if !hmac.Equal([]byte(mac), []byte(k.sign(r.Method, r.URL.Path, ts))) {
		s.refuse(w, r, http.StatusUnauthorized, "bad MAC (wrong secret for this path?)")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var files map[string][]byte
	var err error
	switch {
	case r.URL.Path == "/v1/master":
		files, err = s.masterBundle()
	case strings.HasPrefix(r.URL.Path, "/v1/node/"):
		name := strings.TrimPrefix(r.URL.Path, "/v1/node/")
		if !nodeNameRE.MatchString(name) {
			s.refuse(w, r, http.StatusBadRequest, "node name is not a DNS-1123 subdomain")
			return
		}
		files, err = s.nodeBundle(name)
	default:
		s.refuse(w, r, http.StatusNotFound, "unknown path")
		return
	}
	if err != nil {
		s.log.Error("bundle", "path", r.URL.Path, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	body, err := seal(k, r.URL.Path, files)
	if err != nil {
		s.log.Error("seal", "path", r.URL.Path, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	s.log.Info("handed out", "to", r.RemoteAddr, "path", r.URL.Path, "files", len(files))
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write(body)
}

func parseAuth(h string) (int64, string, bool) {
	rest, ok := strings.CutPrefix(h, "Flotilla-PKI ")
	if !ok {
		return 0, "", false
	}
	tsStr, mac, ok := strings.Cut(rest, ":")
	if !ok || len(mac) != 64 {
		return 0, "", false
	}
	ts, err := strconv.ParseInt(tsStr, 10, 64)
	return ts, mac, err == nil
}

func (s *server) masterBundle() (map[string][]byte, error) {
	names, err := masterFiles(s.dir)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(s.dir, n))
		if err != nil {
			return nil, err
		}
		files[n] = b
	}
	return files, nil
}

func (s *server) nodeBundle(name string) (map[string][]byte, error) {
	ca, caKey, err := loadPair(filepath.Join(s.dir, "pki/ca"))
	if err != nil {
		return nil, err
	}
	proxy, err := os.ReadFile(filepath.Join(s.dir, "kube-proxy.conf"))
	if err != nil {
		return nil, err
	}
	server, err := serverOf(proxy)
	if err != nil {
		return nil, err
	}
	kubelet, err := kubeconfig(ca, caKey, server, pkix.Name{CommonName: "system:node:" + name, Organization: []string{"system:nodes"}})
	if err != nil {
		return nil, err
	}
	return map[string][]byte{
		"pki/ca.crt":      pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}),
		"kube-proxy.conf": proxy,
		"kubelet.conf":    kubelet,
	}, nil
}

func serverOf(conf []byte) (string, error) {
	for _, l := range strings.Split(string(conf), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "server: "); ok {
			return v, nil
		}
	}
	return "", errors.New("kube-proxy.conf has no server")
}

func seal(k keys, path string, files map[string][]byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, b := range files {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Size: int64(len(b))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	a, err := k.aead()
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, a.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return a.Seal(nonce, nonce, buf.Bytes(), []byte(path)), nil
}

// ---- fetch ----

var bundleNameRE = regexp.MustCompile(`^(pki/(etcd/)?[a-z0-9.-]+\.(crt|key|pub)|[a-z-]+\.conf)$`)

func cmdFetch(args []string) error {
	fs := flag.NewFlagSet("fetch", flag.ExitOnError)
	dir := fs.String("dir", "/etc/kubernetes", "where to put the files")
	srv := fs.String("server", "", "master0's pki serve address, IP:PORT")
	what := fs.String("what", "node", "master (the control-plane PKI) or node (kubelet and kube-proxy kubeconfigs)")
	node := fs.String("node", "", "this node's name (--what node)")
	wait := fs.Duration("wait", 3*time.Minute, "how long to retry while master0 does not answer")
	_ = fs.Parse(args)
	var path, marker, env string
	switch *what {
	case "master":
		path, marker, env = "/v1/master", "pki/ca.key", masterTokenEnv
	case "node":
		if !nodeNameRE.MatchString(*node) {
			return fmt.Errorf("--node %q is not a DNS-1123 subdomain", *node)
		}
		path, marker, env = "/v1/node/"+*node, "kubelet.conf", tokenEnv
	default:
		return fmt.Errorf("--what %q: want master or node", *what)
	}
	k, err := loadKeys(env)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(*dir, marker)); err == nil {
		fmt.Printf("flotilla-k8s-pki: %s exists; nothing to fetch\n", filepath.Join(*dir, marker))
		return nil
	}
	if _, _, err := net.SplitHostPort(*srv); err != nil {
		return fmt.Errorf("--server %q: %w", *srv, err)
	}
	body, err := get(k, "http://"+*srv+path, *wait)
	if err != nil {
		return err
	}
	a, err := k.aead()
	if err != nil {
		return err
	}
	if len(body) < a.NonceSize() {
		return errors.New("answer too short")
	}
	plain, err := a.Open(nil, body[:a.NonceSize()], body[a.NonceSize():], []byte(path))
	if err != nil {
		return fmt.Errorf("answer does not decrypt with our secret (a different $%s on master0?)", env)
	}
	p := &pkiDir{dir: *dir}
	tr := tar.NewReader(bytes.NewReader(plain))
	n := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("bundle: %w", err)
		}
		if h.Typeflag != tar.TypeReg || !bundleNameRE.MatchString(h.Name) || h.Size > maxBundleSize {
			return fmt.Errorf("bundle: refusing entry %q", h.Name)
		}
		b, err := io.ReadAll(io.LimitReader(tr, maxBundleSize))
		if err != nil {
			return err
		}
		mode := os.FileMode(0o600)
		if strings.HasSuffix(h.Name, ".crt") || strings.HasSuffix(h.Name, ".pub") {
			mode = 0o644
		}
		if err := p.write(h.Name, b, mode); err != nil {
			return err
		}
		n++
	}
	fmt.Printf("flotilla-k8s-pki: fetched %d files (%s) from %s into %s\n", n, *what, *srv, *dir)
	return nil
}

func get(k keys, url string, wait time.Duration) ([]byte, error) {
	deadline := time.Now().Add(wait)
	c := &http.Client{Timeout: 10 * time.Second}
	var last error
	for {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		ts := time.Now().Unix()
		req.Header.Set("Authorization", fmt.Sprintf("Flotilla-PKI %d:%s", ts, k.sign(http.MethodGet, req.URL.Path, ts)))
		resp, err := c.Do(req)
		if err == nil {
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, 4*maxBundleSize))
			resp.Body.Close()
			switch {
			case rerr != nil:
				last = rerr
			case resp.StatusCode == http.StatusOK:
				return body, nil
			case resp.StatusCode/100 == 4:
				return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
			default:
				last = fmt.Errorf("GET %s: %s", url, resp.Status)
			}
		} else {
			last = err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no answer within %s: %w", wait, last)
		}
		time.Sleep(2 * time.Second)
	}
}
