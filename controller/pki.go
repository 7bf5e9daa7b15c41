package controller

import (
	"crypto/ecdsa"
	"crypto/ed25519"
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
	"os"
	"path/filepath"
	"time"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Files in the controller's data dir.
const (
	fileCACert     = "ca.crt"
	fileCAKey      = "ca.key"
	fileSigningKey = "signing.key"
	// FileAdminCreds is the admin credential file the CLI reads (mode 0600).
	FileAdminCreds = "admin.creds"
)

// pki is the controller's CA, its serving certificate and its task-signing key.
type pki struct {
	caPEM   []byte
	caCert  *x509.Certificate
	caKey   *ecdsa.PrivateKey
	server  tls.Certificate
	signing ed25519.PrivateKey
}

// loadOrCreatePKI reads the CA and signing key from dir, creating them at first
// start, and issues a fresh server certificate for hosts (IPs or names).
func loadOrCreatePKI(dir string, hosts []string) (*pki, error) {
	p := &pki{}
	caPath, keyPath := filepath.Join(dir, fileCACert), filepath.Join(dir, fileCAKey)
	if _, err := os.Stat(caPath); errors.Is(err, os.ErrNotExist) {
		if err := createCA(caPath, keyPath); err != nil {
			return nil, err
		}
	}
	var err error
	if p.caPEM, err = os.ReadFile(caPath); err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	blk, _ := pem.Decode(p.caPEM)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM certificate", caPath)
	}
	if p.caCert, err = x509.ParseCertificate(blk.Bytes); err != nil {
		return nil, fmt.Errorf("%s: %w", caPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("%s: no PEM key", keyPath)
	}
	if p.caKey, err = x509.ParseECPrivateKey(kb.Bytes); err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if p.server, err = p.issueServerCert(hosts); err != nil {
		return nil, err
	}
	if p.signing, err = loadOrCreateSigningKey(filepath.Join(dir, fileSigningKey)); err != nil {
		return nil, err
	}
	return p, nil
}

func createCA(certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: "flotilla CA " + host, Organization: []string{"flotilla"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return atomicfile.Write(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func (p *pki) issueServerCert(hosts []string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: "flotilla controller"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(2, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der, p.caCert.Raw}, PrivateKey: key}, nil
}

func loadOrCreateSigningKey(path string) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, err
		}
		if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, err
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	blk, _ := pem.Decode(data)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ed25519 key", path)
	}
	return ek, nil
}

func (p *pki) certPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.caCert)
	return pool
}

func randSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// localHosts lists names and addresses the server certificate must cover.
func localHosts(extra ...string) []string {
	hosts := append([]string{}, extra...)
	hosts = append(hosts, "127.0.0.1", "::1", "localhost")
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				hosts = append(hosts, ipn.IP.String())
			}
		}
	}
	return hosts
}

// defaultAdvertise picks the first global unicast address of this host, or 127.0.0.1.
func defaultAdvertise() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
				return ipn.IP.String()
			}
		}
	}
	return "127.0.0.1"
}

// peerCertValidity is how long an agent's peer certificate lasts; agents renew
// it over NATS (protocol.RequestPeerCert) when half of it is left. Short, so
// that a node removed from the inventory (which no longer gets one) holds a
// certificate other agents accept for a day at most; the inventory check on
// every tracker and seed request cuts it off at once.
const peerCertValidity = 24 * time.Hour

// signPeerCert issues node's peer certificate for the public key of csrPEM:
// client and server use, one DNS name (protocol.PeerCertName) and no IP
// address, so it proves "an agent of this cluster" to other agents and to the
// tracker, but never passes as the controller's or any host's server certificate.
func (p *pki) signPeerCert(node string, csrPEM []byte) ([]byte, error) {
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("peer certificate for %s: no PEM certificate request", node)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("peer certificate for %s: %w", node, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("peer certificate for %s: request not signed by its key: %w", node, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject:      pkix.Name{CommonName: protocol.PeerCertName(node), Organization: []string{"flotilla agents"}},
		DNSNames:     []string{protocol.PeerCertName(node)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(peerCertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, csr.PublicKey, p.caKey)
	if err != nil {
		return nil, fmt.Errorf("peer certificate for %s: %w", node, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}
