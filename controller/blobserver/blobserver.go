// Package blobserver serves image blobs (layers, container image blobs) to
// agents over the controller's HTTPS: GET /v1/blobs/{digest}, with Range so a
// download resumes. A fetch needs three things, checked on every request: the
// node's peer certificate (mutual TLS, as for the tracker and the seed), a
// bearer token made for that node and that blob (an HMAC over the node, the
// digest and an expiry, which the rollout engine puts into the node's signed
// step and which lasts as long as the task may run), and the node in the
// inventory now. It is the fallback when the peer-to-peer fetch is not
// possible. It must not import the rollout engine or the agent.
package blobserver

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/bundle/store"
	"github.com/flotilla-dev/flotilla/internal/atomicfile"
	"github.com/flotilla-dev/flotilla/internal/ratelog"
	"github.com/flotilla-dev/flotilla/protocol"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Path is the HTTPS route agents fetch blobs from.
const Path = "/v1/blobs/"

// KeyFile is the file in the controller's data dir holding the HMAC key of blob tokens.
const KeyFile = "rollout-blob.key"

// blobTokens creates and checks the bearer tokens of blob fetches: an HMAC over the
// node, the blob digest and an expiry, so a token fetches one blob for a while only.
type blobTokens struct{ key []byte }

// loadBlobKey reads the key from dataDir, creating it once.
func loadBlobKey(dataDir string) (*blobTokens, error) {
	path := filepath.Join(dataDir, KeyFile)
	b, err := os.ReadFile(path)
	if err == nil && len(b) == 64 {
		key, err := hex.DecodeString(string(b))
		if err == nil {
			return &blobTokens{key: key}, nil
		}
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("blob token key %s: %w", path, err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("blob token key: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("blob token key: %w", err)
	}
	if err := atomicfile.Write(path, []byte(hex.EncodeToString(key)), 0o600); err != nil {
		return nil, fmt.Errorf("blob token key: %w", err)
	}
	return &blobTokens{key: key}, nil
}

func (t *blobTokens) mac(node, digest string, exp int64) string {
	m := hmac.New(sha256.New, t.key)
	fmt.Fprintf(m, "flotilla-blob\x00%s\x00%s\x00%d", node, digest, exp)
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// create returns a token that lets node fetch digest until expires.
func (t *blobTokens) create(node, digest string, expires time.Time) string {
	exp := expires.Unix()
	return "v1." + base64.RawURLEncoding.EncodeToString([]byte(node)) + "." + strconv.FormatInt(exp, 10) + "." + t.mac(node, digest, exp)
}

// check returns the node a valid token was made for, or why it is not valid.
func (t *blobTokens) check(token, digest string, now time.Time) (string, error) {
	if token == "" {
		return "", errors.New("missing bearer token: the step's LayerPayload.Token goes in the Authorization header")
	}
	parts := strings.Split(token, ".")
	if len(parts) != 4 || parts[0] != "v1" {
		return "", errors.New("malformed token")
	}
	nodeB, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", errors.New("malformed token")
	}
	exp, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return "", errors.New("malformed token")
	}
	node := string(nodeB)
	if !hmac.Equal([]byte(parts[3]), []byte(t.mac(node, digest, exp))) {
		return "", fmt.Errorf("token of node %s is not valid for blob %s", node, digest)
	}
	if now.Unix() > exp {
		return "", fmt.Errorf("token of node %s expired at %s: the rollout retries the step with a new one", node, time.Unix(exp, 0).UTC().Format(time.RFC3339))
	}
	return node, nil
}

// Server serves blobs to agents at Path, each fetch authorized by a token the
// engine put in the step. It exists before the engine (which needs a started
// controller): mount it on the controller's HTTPS server, then pass it to the
// engine (rollout.Options.Blobs).
type Server struct {
	blobHandler
	up uploads // backups being uploaded (upload.go)
}

// Options configure New.
type Options struct {
	// Member says whether node is in the controller's inventory now. It is
	// asked on every fetch, as the tracker and the seed do, so a removed
	// node's token (and its still valid peer certificate) stop fetching at
	// once. Nil refuses every fetch: a blob server must know the inventory.
	Member func(node string) bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// New loads the token key from dataDir (creating it once) and serves blobs from st.
func New(dataDir string, st *store.Store, opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	t, err := loadBlobKey(dataDir)
	if err != nil {
		return nil, err
	}
	log = log.With("component", "blobs")
	return &Server{blobHandler: blobHandler{tokens: t, store: st, member: opts.Member, log: log,
		refusals: ratelog.New(log, ratelog.DefaultEvery), now: time.Now}}, nil
}

// blobHandler serves GET /v1/blobs/{digest} from the store, with Range support so
// agents resume interrupted downloads.
type blobHandler struct {
	tokens   *blobTokens
	store    *store.Store
	member   func(node string) bool
	log      *slog.Logger
	refusals *ratelog.Logger // refusals name the sender; a flood of them logs a line per interval
	now      func() time.Time
}

// authorize returns the node a fetch of digest is for, or the HTTP status
// and reason of a refusal (logged). A fetch needs all of: the peer
// certificate of a node of this cluster (mutual TLS), a valid token for this
// blob made for that same node, and that node in the inventory now.
func (h *blobHandler) authorize(r *http.Request, digest string) (string, int, error) {
	certNode, hasCert := peerCertNode(r)
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	tokenNode, tokenErr := h.tokens.check(strings.TrimSpace(token), digest, h.now())
	switch {
	case !hasCert:
		h.refusals.Warn("remote", remoteHost(r), "no-cert", "blob fetch refused: no peer certificate of this cluster",
			"tokenNode", tokenNode, "digest", digest)
		return "", http.StatusForbidden, errors.New("forbidden: the blob server serves a node presenting its peer certificate (mutual TLS with the cluster CA); " +
			"the agent keeps it in its data dir (peer.crt) and renews it itself")
	case tokenErr != nil:
		h.refusals.Warn("node", certNode, "token", "blob fetch refused: bad token", "remote", r.RemoteAddr, "digest", digest, "err", tokenErr)
		return "", http.StatusUnauthorized, fmt.Errorf("unauthorized: %w", tokenErr)
	case tokenNode != certNode:
		h.refusals.Warn("node", certNode, "other-token", "blob fetch refused: another node's token",
			"certNode", certNode, "tokenNode", tokenNode, "remote", r.RemoteAddr, "digest", digest)
		return "", http.StatusForbidden, fmt.Errorf("forbidden: the token was made for node %s, the client certificate is node %s's", tokenNode, certNode)
	case h.member == nil || !h.member(certNode):
		h.refusals.Warn("node", certNode, "not-member", "blob fetch refused: node not in the inventory", "remote", r.RemoteAddr, "digest", digest)
		return "", http.StatusForbidden, fmt.Errorf("forbidden: node %s is not in the inventory: join it again with a token", certNode)
	}
	return certNode, 0, nil
}

func (h *blobHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	digest := strings.TrimPrefix(r.URL.Path, Path)
	h2, err := v1.NewHash(digest)
	if err != nil || h2.Algorithm != "sha256" {
		http.Error(w, fmt.Sprintf("bad blob digest %q: want sha256:<64 hex>", digest), http.StatusBadRequest)
		return
	}
	node, code, err := h.authorize(r, digest)
	if err != nil {
		if code == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="flotilla-blobs"`)
		}
		http.Error(w, err.Error(), code)
		return
	}
	path, err := h.store.BlobPath(h2)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		http.Error(w, fmt.Sprintf("blob %s is not in the controller's store: flotilla pull/load the image on the controller host", digest), http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, "open blob: "+err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		http.Error(w, "stat blob: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h.log.Debug("serving blob", "node", node, "digest", digest, "range", r.Header.Get("Range"))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", digest)
	w.Header().Set("ETag", `"`+digest+`"`)
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// remoteHost is the client's IP address, without the port (one key per host
// for the refusal log).
func remoteHost(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// peerCertNode returns the node named by a verified client (peer) certificate, if the
// client presented one.
func peerCertNode(r *http.Request) (string, bool) {
	cs := r.TLS
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 || len(cs.VerifiedChains[0][0].DNSNames) != 1 {
		return "", false
	}
	return protocol.PeerCertNode(cs.VerifiedChains[0][0].DNSNames[0])
}

// Token is the bearer token that lets node fetch the blob digest until expires.
func (s *Server) Token(node, digest string, expires time.Time) string {
	return s.tokens.create(node, digest, expires)
}
