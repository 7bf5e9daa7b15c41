package pieces

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ServerTLSConfig returns the TLS config of a piece server: it presents the
// given certificate and serves only clients whose certificate chains to the
// cluster CA (tls.RequireAndVerifyClientCert), so a stranger gets nothing.
func ServerTLSConfig(caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	pool, cert, err := parseTLS(caPEM, certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("piece server TLS: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}

// ClientTLSConfig returns the TLS config of a piece client: it trusts only
// the cluster CA and presents the given certificate to the peer.
func ClientTLSConfig(caPEM, certPEM, keyPEM []byte) (*tls.Config, error) {
	pool, cert, err := parseTLS(caPEM, certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("piece client TLS: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
	}, nil
}

// LoadTLSFiles reads the CA certificate, certificate and key PEM files.
func LoadTLSFiles(caFile, certFile, keyFile string) (ca, cert, key []byte, err error) {
	if ca, err = os.ReadFile(caFile); err != nil {
		return nil, nil, nil, fmt.Errorf("read CA certificate: %w", err)
	}
	if cert, err = os.ReadFile(certFile); err != nil {
		return nil, nil, nil, fmt.Errorf("read certificate: %w", err)
	}
	if key, err = os.ReadFile(keyFile); err != nil {
		return nil, nil, nil, fmt.Errorf("read key: %w", err)
	}
	return ca, cert, key, nil
}

func parseTLS(caPEM, certPEM, keyPEM []byte) (*x509.CertPool, tls.Certificate, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, tls.Certificate{}, errors.New("CA certificate: no PEM certificate found")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("certificate and key: %w", err)
	}
	return pool, cert, nil
}
