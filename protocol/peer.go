package protocol

import (
	"errors"
	"strings"
)

// Peer-to-peer distribution: every agent holds a TLS certificate signed by the
// cluster CA, used both to serve its blob pieces to other agents and to prove
// itself to them and to the controller's tracker and seed (mutual TLS).

// RequestPeerCert is the node request name (NodeRequestSubject) an agent uses to
// get or renew its peer certificate over NATS: PeerCertRequest, reply PeerCertReply.
const RequestPeerCert = "peer-cert"

// PeerCertRequest carries a PEM certificate signing request; the controller
// takes only the public key from it and names the certificate itself.
type PeerCertRequest struct {
	CSR []byte `json:"csr"`
}

// DecodePeerCertRequest decodes (DecodeStrict) a node's peer certificate request.
func DecodePeerCertRequest(data []byte) (*PeerCertRequest, error) {
	var r PeerCertRequest
	if err := DecodeStrict(data, MaxPeerCertRequestBytes, &r); err != nil {
		return nil, err
	}
	if len(r.CSR) == 0 {
		return nil, errors.New("peer certificate request without a CSR")
	}
	return &r, nil
}

// PeerCertReply is the signed certificate (PEM), or why not.
type PeerCertReply struct {
	Cert  []byte `json:"cert,omitempty"`
	Error string `json:"error,omitempty"`
}

// peerCertSuffix ends the only DNS name of an agent's peer certificate. It is
// not resolvable on purpose: the certificate proves "an agent of this cluster",
// and cannot pass as the controller's (or any real host's) server certificate.
const peerCertSuffix = ".peer.flotilla.invalid"

// PeerCertName is the DNS name in node's peer certificate.
func PeerCertName(node string) string { return node + peerCertSuffix }

// PeerCertNode returns the node a peer certificate's DNS name belongs to.
func PeerCertNode(dnsName string) (string, bool) {
	node, ok := strings.CutSuffix(dnsName, peerCertSuffix)
	return node, ok && ValidateNodeName(node) == nil
}
