package mirror

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
)

// Files of the mirror's identity in its directory (<agent data dir>/mirror, 0700).
const (
	// CAFile is the certificate of the mirror's own CA (PEM, 0644): what
	// containerd is told to trust for the mirror (hosts.toml ca), and nothing else.
	CAFile    = "ca.crt"
	caKeyFile = "ca.key" // 0600: whoever holds it can pose as the mirror
)

// Lifetimes of the mirror's certificates.
const (
	caLifetime = 10 * 365 * 24 * time.Hour
	// caRenewBefore: a CA this close to its end is replaced at start (and the
	// agent rewrites the CA file containerd reads).
	caRenewBefore = 365 * 24 * time.Hour
	// leafLifetime: the server certificate is made at start and again once
	// half of this has passed; its key never touches the disk.
	leafLifetime = 30 * 24 * time.Hour
	clockSlack   = 5 * time.Minute
)

// Identity is what the mirror proves itself with: a CA of this node alone,
// whose key stays in the agent's data dir (root only), and a server
// certificate it issues for the loopback names and the listen host. containerd
// trusts only that CA for the mirror (HostsTOML's ca), so a process that takes
// the mirror's address cannot pose as it: TLS fails and containerd goes on to
// the upstream registry.
type Identity struct {
	dir   string
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
	caPEM []byte
	ips   []net.IP
	names []string
	now   func() time.Time

	mu   sync.Mutex
	leaf *tls.Certificate
}

// LoadIdentity reads the mirror's CA from dir, or makes one (dir 0700, key
// 0600) when there is none, or it cannot be read, or it ends within a year.
// listen is the mirror's host:port: its host goes into the server certificate
// beside 127.0.0.1, ::1 and localhost.
func LoadIdentity(dir, listen string) (*Identity, error) {
	id := &Identity{dir: dir, now: time.Now,
		ips: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, names: []string{"localhost"}}
	if host, _, err := net.SplitHostPort(listen); err == nil && host != "" {
		if ip, err := netip.ParseAddr(host); err == nil {
			if !ip.IsUnspecified() && ip != netip.MustParseAddr("127.0.0.1") && ip != netip.IPv6Loopback() {
				id.ips = append(id.ips, net.IP(ip.AsSlice()))
			}
		} else if nsRE.MatchString(host) && !strings.EqualFold(host, "localhost") {
			id.names = append(id.names, strings.ToLower(host))
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("registry mirror identity: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("registry mirror identity: %w", err)
	}
	err := id.load()
	if err == nil && id.now().Add(caRenewBefore).After(id.ca.NotAfter) {
		err = fmt.Errorf("CA ends %s", id.ca.NotAfter.Format(time.DateOnly))
	}
	if err != nil {
		if err := id.create(); err != nil {
			return nil, fmt.Errorf("registry mirror identity in %s: %w", dir, err)
		}
	}
	return id, nil
}

// CAPEM is the CA certificate containerd must trust for the mirror.
func (id *Identity) CAPEM() []byte { return bytes.Clone(id.caPEM) }

// CAPath is the CA certificate's file.
func (id *Identity) CAPath() string { return filepath.Join(id.dir, CAFile) }

func (id *Identity) load() error {
	certPEM, err := os.ReadFile(filepath.Join(id.dir, CAFile))
	if err != nil {
		return err
	}
	keyPEM, err := os.ReadFile(filepath.Join(id.dir, caKeyFile))
	if err != nil {
		return err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return errors.New("not PEM")
	}
	ca, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return err
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return err
	}
	if !ca.IsCA || !key.PublicKey.Equal(ca.PublicKey) {
		return errors.New("CA certificate and key do not match")
	}
	id.ca, id.caKey, id.caPEM = ca, key, certPEM
	return nil
}

func (id *Identity) create() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := id.now()
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{SerialNumber: serial(),
		Subject:   pkix.Name{CommonName: "flotilla registry mirror CA " + host},
		NotBefore: now.Add(-clockSlack), NotAfter: now.Add(caLifetime),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// The key first: a CA file whose key is missing is made again next start.
	if err := atomicfile.Write(filepath.Join(id.dir, caKeyFile), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(id.dir, CAFile), certPEM, 0o644); err != nil {
		return err
	}
	id.ca, id.caKey, id.caPEM = ca, key, certPEM
	return nil
}

// TLSConfig is the mirror's server TLS configuration: TLS 1.2 or later, the
// certificate made afresh once half its life has passed.
func (id *Identity) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return id.certificate()
	}}
}

func (id *Identity) certificate() (*tls.Certificate, error) {
	id.mu.Lock()
	defer id.mu.Unlock()
	now := id.now()
	if id.leaf != nil && now.Before(id.leaf.Leaf.NotBefore.Add(leafLifetime/2)) {
		return id.leaf, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("registry mirror certificate: %w", err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "flotilla registry mirror"},
		NotBefore: now.Add(-clockSlack), NotAfter: now.Add(leafLifetime),
		IPAddresses: id.ips, DNSNames: id.names,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if tmpl.NotAfter.After(id.ca.NotAfter) {
		tmpl.NotAfter = id.ca.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, id.ca, &key.PublicKey, id.caKey)
	if err != nil {
		return nil, fmt.Errorf("registry mirror certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("registry mirror certificate: %w", err)
	}
	id.leaf = &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	return id.leaf, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// ClientTLS is a client configuration that trusts caPEM alone: what
// containerd does with HostsTOML's ca.
func ClientTLS(caPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("registry mirror CA: no certificate in the PEM")
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
