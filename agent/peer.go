package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/time/rate"

	"github.com/flotilla-dev/flotilla/internal/atomicfile"
	"github.com/flotilla-dev/flotilla/internal/httpserve"
	"github.com/flotilla-dev/flotilla/p2p/fetch"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
	"github.com/flotilla-dev/flotilla/protocol"
)

// Files of the peer-to-peer part in the agent's data dir.
const (
	filePeerKey  = "peer.key"
	filePeerCert = "peer.crt"
	dirPeerStore = "p2p" // the piece store (p2p/pieces layout)
)

// DefaultPeerListen is the agent's default --peer-listen.
const DefaultPeerListen = ":9444"

// Peer is an agent's part in peer-to-peer layer distribution: a piece store,
// an HTTPS server that serves the pieces it holds to the cluster's other
// agents (mutual TLS with the cluster CA: a stranger gets nothing), and a
// fetcher that gets pieces from them and from the controller (the seed),
// finding them through the controller's tracker.
//
// Executors reach the running agent's peer as StepContext.Peer.
type Peer struct {
	node    string
	log     *slog.Logger
	dataDir string
	store   *pieces.Store
	fetcher *fetch.Fetcher
	client  *http.Client // to peers; the seed and the tracker go through ctlClient
	url     string       // https://host:port others reach the server at; "" when it does not serve
	metrics *metrics

	cert     atomic.Pointer[tls.Certificate]
	pool     *x509.CertPool
	peerSets *peerSets

	// Caps: the agent's own (flags) and the current ones (min with a step's).
	maxUp, maxDown int64
	up, down       *rate.Limiter
	capMu          sync.Mutex
	stepCaps       map[*StepCaps]struct{}

	srv *httpserve.Server

	progMu   sync.Mutex
	progress map[v1.Hash]func(fetch.Progress) // per blob being fetched
}

// StepCaps are a step's bandwidth caps in bytes per second (0: none), on top
// of the agent's own; while several steps run, the smallest cap applies.
type StepCaps struct{ Upload, Download int64 }

// URL is where this peer serves pieces ("" when it only fetches).
func (p *Peer) URL() string { return p.url }

// Store is the peer's piece store.
func (p *Peer) Store() *pieces.Store { return p.store }

// Fetch gets the blob of list from peers and the seed into the peer's store,
// every piece checked as it lands and the blob against its digest at the
// end, and returns its path. Pieces left by an interrupted fetch are kept; a
// blob already held is not fetched. caps apply while it runs.
func (p *Peer) Fetch(ctx context.Context, list pieces.PieceList, caps StepCaps, progress func(fetch.Progress)) (string, error) {
	if err := list.Validate(); err != nil {
		return "", err
	}
	p.addCaps(&caps)
	defer p.removeCaps(&caps)
	if progress != nil {
		p.progMu.Lock()
		p.progress[list.Digest] = progress
		p.progMu.Unlock()
		defer func() {
			p.progMu.Lock()
			delete(p.progress, list.Digest)
			p.progMu.Unlock()
		}()
	}
	return p.fetcher.Fetch(ctx, list)
}

// onProgress routes the fetcher's progress to the step fetching that blob.
func (p *Peer) onProgress(pr fetch.Progress) {
	p.progMu.Lock()
	f := p.progress[pr.Digest]
	p.progMu.Unlock()
	if f != nil {
		f(pr)
	}
}

func (p *Peer) addCaps(c *StepCaps) {
	p.capMu.Lock()
	p.stepCaps[c] = struct{}{}
	p.applyCapsLocked()
	p.capMu.Unlock()
}

func (p *Peer) removeCaps(c *StepCaps) {
	p.capMu.Lock()
	delete(p.stepCaps, c)
	p.applyCapsLocked()
	p.capMu.Unlock()
}

func (p *Peer) applyCapsLocked() {
	up, down := p.maxUp, p.maxDown
	for c := range p.stepCaps {
		up, down = minCap(up, c.Upload), minCap(down, c.Download)
	}
	setLimit(p.up, up)
	setLimit(p.down, down)
}

// minCap is the smaller of two caps where 0 means none.
func minCap(a, b int64) int64 {
	switch {
	case a <= 0:
		return b
	case b <= 0:
		return a
	}
	return min(a, b)
}

// newLimiter returns a limiter whose rate changes with setLimit; without a
// cap it lets everything through at once.
func newLimiter(bps int64) *rate.Limiter {
	l := rate.NewLimiter(rate.Inf, 64<<10)
	setLimit(l, bps)
	return l
}

func setLimit(l *rate.Limiter, bps int64) {
	if bps <= 0 {
		l.SetLimit(rate.Inf)
		l.SetBurst(64 << 10)
		return
	}
	// The burst must hold the largest chunk a reader or writer asks for (64 KiB).
	l.SetBurst(int(max(64<<10, bps/20)))
	l.SetLimit(rate.Limit(bps))
}

// runPeer starts the peer, retrying while the controller cannot issue the
// certificate yet, then registers again so the controller learns the PeerURL.
// Until it runs, layer steps fetch from the controller alone.
func (a *Agent) runPeer(ctx context.Context) {
	for attempt := 1; ; attempt++ {
		err := a.startPeer(ctx)
		if err == nil {
			a.kickRegister()
			return
		}
		wait := min(30*time.Second, time.Duration(attempt)*2*time.Second)
		a.log.Warn("peer-to-peer distribution not ready; layers come from the controller alone meanwhile", "err", err, "retry in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// peerURL is what the agent reports at registration.
func (a *Agent) peerURL() string {
	if a.opts.PeerURL != "" {
		return a.opts.PeerURL
	}
	if p := a.peer.Load(); p != nil {
		return p.URL()
	}
	return ""
}

// startPeer opens the store, gets the peer certificate if the agent has none
// (or it expires soon), starts the piece server on opts.PeerListen and
// hands the peer to the steps that run from then on (StepContext.Peer). A failure to listen leaves a peer that
// only fetches: a busy port must not stop the agent.
func (a *Agent) startPeer(ctx context.Context) error {
	o := a.opts
	p := &Peer{node: o.Name, log: a.log.With("component", "p2p"), dataDir: o.DataDir, maxUp: o.MaxUpload, maxDown: o.MaxDownload,
		stepCaps: map[*StepCaps]struct{}{}, progress: map[v1.Hash]func(fetch.Progress){}}
	p.up, p.down = newLimiter(o.MaxUpload), newLimiter(o.MaxDownload)
	p.pool = x509.NewCertPool()
	if !p.pool.AppendCertsFromPEM(a.creds.CAPEM) {
		return errors.New("credentials: no CA certificate")
	}
	var err error
	if p.store, err = pieces.OpenStore(filepath.Join(o.DataDir, dirPeerStore)); err != nil {
		return fmt.Errorf("peer-to-peer store: %w", err)
	}
	if cert, err := loadPeerCert(o.DataDir); err == nil && !renewDue(cert) {
		p.cert.Store(cert)
	} else if err := a.renewPeerCert(ctx, p); err != nil {
		// Fetching from the controller still works; the step fallback uses it.
		p.store.Close()
		return fmt.Errorf("peer certificate: %w", err)
	}
	p.client = fetch.NewClient(p.clientTLS())
	p.client.Transport = a.metrics.countFetched(p.client.Transport, a.creds.HTTPURL)
	p.metrics = a.metrics
	tr := fetch.NewHTTPTracker(a.creds.HTTPURL, fetch.NewClient(p.controllerTLS()))
	p.peerSets = newPeerSets(tr, p.log)
	self := pieces.Peer{}
	if o.PeerListen != "" {
		if self, err = p.listen(o.PeerListen, o.PeerAdvertise, a.creds.HTTPURL); err != nil {
			p.log.Warn("not serving pieces to peers; fetching only", "err", err)
		}
	}
	p.fetcher = fetch.New(p.store, tr, fetch.Options{
		Self: self, Client: p.client, VerifyPeer: verifyPeerIdentity, DownloadLimit: p.down, Logger: p.log, Progress: p.onProgress,
	})
	a.peer.Store(p)
	p.reseed(ctx)
	a.bg.Go(func() { p.fetcher.Run(ctx) })
	a.bg.Go(func() { a.keepPeerCert(ctx, p) })
	a.bg.Go(func() {
		<-ctx.Done()
		a.peer.CompareAndSwap(p, nil)
		if p.srv != nil {
			// Peers waiting on a piece (?wait=) would hold a graceful shutdown:
			// they cope with a dropped connection by asking someone else.
			_ = p.srv.Close()
		}
	})
	return nil
}

// reseed announces the complete blobs the store kept from before a restart,
// so this agent serves them again although no step fetches them any more.
// A blob whose only link is the store's own was removed from the layer
// executor's cache (an undone layer): it is deleted instead, so the store
// never holds disk the node no longer uses.
func (p *Peer) reseed(ctx context.Context) {
	entries, err := os.ReadDir(p.store.Dir())
	if err != nil {
		return
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".pieces")
		if !ok {
			continue
		}
		d, err := v1.NewHash(name)
		if err != nil || !p.store.Has(d) {
			continue
		}
		if fi, err := os.Stat(p.store.Path(d)); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink == 1 {
				p.log.Info("dropping a blob no layer uses any more", "digest", d)
				os.Remove(p.store.Path(d))
				os.Remove(filepath.Join(p.store.Dir(), e.Name()))
				continue
			}
		}
		var list pieces.PieceList
		data, err := os.ReadFile(filepath.Join(p.store.Dir(), e.Name()))
		if err == nil {
			err = json.Unmarshal(data, &list)
		}
		if err == nil && list.Digest == d {
			err = p.fetcher.Seed(ctx, list)
		}
		if err != nil {
			p.log.Debug("not serving a kept blob", "digest", d, "err", err)
		}
	}
}

// listen starts the piece server and returns this peer's identity.
func (p *Peer) listen(addr, advertise, controllerURL string) (pieces.Peer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return pieces.Peer{}, fmt.Errorf("--peer-listen %s: %w", addr, err)
	}
	host := advertise
	if host == "" {
		host = advertiseHost(ln.Addr(), controllerURL)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	p.url = "https://" + net.JoinHostPort(host, port)
	// Pieces are long answers under an upload cap: each write is bounded, not the whole answer.
	p.srv = httpserve.New(p.metrics.countServed(httpserve.Streaming(pieces.NewHandler(p.store, pieces.WithUploadLimit(p.up), pieces.WithLogger(p.log), pieces.WithAuthorize(p.authorize)))),
		p.serverTLS(), slog.NewLogLogger(p.log.Handler(), slog.LevelDebug)) // the error log: refused strangers
	p.srv.Logger = p.log
	go func() {
		if err := p.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.log.Error("piece server stopped", "err", err)
		}
	}()
	p.log.Info("serving pieces to peers", "listen", ln.Addr().String(), "url", p.url)
	return pieces.Peer{ID: p.node, Addr: p.url}, nil
}

// advertiseHost is the listen address when it names one, else the local
// address this host uses to reach the controller (what peers on that
// network reach it at).
func advertiseHost(ln net.Addr, controllerURL string) string {
	if ta, ok := ln.(*net.TCPAddr); ok && !ta.IP.IsUnspecified() {
		return ta.IP.String()
	}
	if u, err := url.Parse(controllerURL); err == nil && u.Host != "" {
		// UDP "connects" send nothing; they only pick the route's source address.
		if c, err := net.Dial("udp", u.Host); err == nil {
			defer c.Close()
			return c.LocalAddr().(*net.UDPAddr).IP.String()
		}
	}
	return "127.0.0.1"
}

// serverTLS accepts only clients with a peer certificate of this cluster.
func (p *Peer) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.cert.Load(), nil },
		ClientCAs:      p.pool,
		ClientAuth:     tls.RequireAndVerifyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !isPeerCert(cs.PeerCertificates[0]) {
				return errors.New("client certificate is not a flotilla agent's")
			}
			return nil
		},
	}
}

// clientTLS presents the peer certificate and trusts only the cluster CA: a
// server with a peer certificate is an agent of the cluster, and the fetcher
// checks it is the one the tracker named (verifyPeerIdentity) before it
// reads a byte; any other server (the controller's seed) must match the
// host name as usual.
func (p *Peer) clientTLS() *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return p.cert.Load(), nil },
		InsecureSkipVerify:   true, // verified by VerifyConnection against the cluster CA only
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPeerServer(cs, p.pool)
		},
	}
}

func verifyPeerServer(cs tls.ConnectionState, pool *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if !isPeerCert(leaf) {
		opts.DNSName = cs.ServerName
	}
	if _, err := leaf.Verify(opts); err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	return nil
}

func isPeerCert(c *x509.Certificate) bool {
	if len(c.DNSNames) != 1 || len(c.IPAddresses) != 0 {
		return false
	}
	_, ok := protocol.PeerCertNode(c.DNSNames[0])
	return ok
}

// peerKey returns the agent's peer key, creating it at first use.
func peerKey(dataDir string) (*ecdsa.PrivateKey, error) {
	path := filepath.Join(dataDir, filePeerKey)
	data, err := os.ReadFile(path)
	if err == nil {
		blk, _ := pem.Decode(data)
		if blk == nil {
			return nil, fmt.Errorf("%s: no PEM key (remove it to make a new one)", path)
		}
		k, err := x509.ParseECPrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	return k, nil
}

// peerCSR is a certificate request for the agent's peer key; the controller
// names the certificate itself, so the subject is only informative.
func peerCSR(dataDir, node string) ([]byte, error) {
	k, err := peerKey(dataDir)
	if err != nil {
		return nil, fmt.Errorf("peer key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: protocol.PeerCertName(node)}}, k)
	if err != nil {
		return nil, fmt.Errorf("peer certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

func savePeerCert(dataDir string, certPEM []byte) error {
	return atomicfile.Write(filepath.Join(dataDir, filePeerCert), certPEM, 0o644)
}

// PeerCertificate is the peer certificate of the agent whose data dir is
// dataDir (StepContext.DataDir), as its join or its last renewal left it:
// executors present it to the controller's blob server, which serves a blob
// only to the node its token was made for.
func PeerCertificate(dataDir string) (*tls.Certificate, error) {
	cert, err := loadPeerCert(dataDir)
	if err != nil {
		return nil, fmt.Errorf("peer certificate of the agent in %s: %w (the agent asks the controller for one when it starts; see its log)", dataDir, err)
	}
	return cert, nil
}

func loadPeerCert(dataDir string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dataDir, filePeerCert), filepath.Join(dataDir, filePeerKey))
	if err != nil {
		return nil, err
	}
	return &cert, nil
}

// renewDue says the certificate has half of its life left or less: with
// 24-hour certificates an agent renews every 12 hours and rides out a
// controller that is away for up to half a day.
func renewDue(c *tls.Certificate) bool {
	leaf := c.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return true
		}
	}
	return time.Until(leaf.NotAfter) < leaf.NotAfter.Sub(leaf.NotBefore)/2
}

// peerCertCheckEvery is how often a running agent looks at its certificate's
// age (a local check; it asks the controller only when renewal is due).
const peerCertCheckEvery = 10 * time.Minute

// keepPeerCert renews the certificate of a long-running agent before it expires.
func (a *Agent) keepPeerCert(ctx context.Context, p *Peer) {
	t := time.NewTicker(peerCertCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !renewDue(p.cert.Load()) {
			continue
		}
		if err := a.renewPeerCert(ctx, p); err != nil {
			p.log.Warn("renew peer certificate; trying again later", "err", err)
		} else {
			p.log.Info("renewed peer certificate")
		}
	}
}

// renewPeerCert asks the controller over NATS for a peer certificate (an
// agent that joined before it had one, or one close to expiry).
func (a *Agent) renewPeerCert(ctx context.Context, p *Peer) error {
	csr, err := peerCSR(a.opts.DataDir, a.opts.Name)
	if err != nil {
		return err
	}
	data, _ := protocol.Encode(protocol.PeerCertRequest{CSR: csr})
	var lastErr error
	for attempt := 1; attempt <= 5; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		m, err := a.nc.RequestWithContext(rctx, protocol.NodeRequestSubject(a.opts.Name, protocol.RequestPeerCert), data)
		cancel()
		if err == nil {
			var rep protocol.PeerCertReply
			if err := protocol.Decode(m.Data, &rep); err != nil {
				return fmt.Errorf("controller's reply: %w", err)
			}
			if rep.Error != "" {
				return fmt.Errorf("controller refused: %s", rep.Error)
			}
			if err := savePeerCert(a.opts.DataDir, rep.Cert); err != nil {
				return err
			}
			cert, err := loadPeerCert(a.opts.DataDir)
			if err != nil {
				return err
			}
			p.cert.Store(cert)
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff(attempt)):
		}
	}
	return fmt.Errorf("no reply from the controller: %w", lastErr)
}
