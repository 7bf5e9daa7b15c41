// Package mirror is the node-local registry mirror: it serves the read-only OCI
// distribution pull API (GET and HEAD of /v2/, manifests by tag or digest, blobs by
// digest with Range, tags/list) from a Content store, for every upstream registry at
// once. containerd names the upstream registry in the ns query parameter
// (/v2/library/nginx/manifests/1.27?ns=docker.io) when
// /etc/containerd/certs.d/_default/hosts.toml points at the mirror (see HostsTOML),
// over HTTPS with a certificate of the agent's own CA (Identity);
// a request without ns means docker.io, as Docker's registry-mirrors sends them.
// Anything the store does not hold is a plain 404 with the OCI error body, so a runtime
// that is online falls back to the upstream registry.
package mirror

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/time/rate"

	"github.com/flotilla-dev/flotilla/internal/httpserve"
)

// DefaultListen is the agent's default --registry-listen: a port below 1024,
// which only root (or CAP_NET_BIND_SERVICE) can bind where
// net.ipv4.ip_unprivileged_port_start has its default, so an unprivileged
// process cannot take it while the agent restarts; and the mirror serves TLS
// with a certificate of the agent's own CA, which containerd alone trusts for
// it (HostsTOML), for hosts where that does not hold.
const DefaultListen = "127.0.0.1:505"

// ErrNotFound is what Content returns (wrapped) for anything it does not hold.
var ErrNotFound = errors.New("not in the node's image cache")

// Content is what the mirror serves. Registry is as containerd spells it ("docker.io",
// "registry.local:5000"), repo the repository path ("library/nginx").
type Content interface {
	// Resolve returns the manifest or index a tag or digest names in registry/repo.
	Resolve(registry, repo, reference string) (v1.Descriptor, error)
	// Blob returns the descriptor of a blob (config, layer or manifest) of registry/repo.
	Blob(registry, repo string, digest v1.Hash) (v1.Descriptor, error)
	// Open opens a blob the store holds; its content matches its digest.
	Open(digest v1.Hash) (io.ReadSeekCloser, error)
	// Tags lists registry/repo's tags, sorted.
	Tags(registry, repo string) ([]string, error)
}

// Options configures a Server.
type Options struct {
	Content Content
	Logger  *slog.Logger // nil: slog.Default()
	// Listen is the address the mirror listens on (host:port). Requests are
	// answered only when their Host names a loopback name (127.0.0.1, [::1],
	// localhost) or this host, with or without a port: a web page that
	// rebinds its own name to 127.0.0.1 gets 421. With an unspecified host
	// (0.0.0.0, [::]) any IP address is accepted too: a rebinding page
	// always sends a name.
	Listen string
}

// Server is the mirror's http.Handler.
type Server struct {
	c   Content
	log *slog.Logger
	// listenHost is Options.Listen's host, lower-case ("" when none);
	// anyIP is true when it is unspecified.
	listenHost string
	anyIP      bool
	// Refusals are logged at most refusalLogRate a second; suppressed counts
	// the others, reported with the next line.
	refusals   *rate.Limiter
	suppressed atomic.Int64
}

// Refusal lines a second the mirror logs at most (a local process can send
// thousands of bad requests a second).
const (
	refusalLogRate  = 10
	refusalLogBurst = 50
)

// New returns the mirror's handler.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{c: o.Content, log: o.Logger, refusals: rate.NewLimiter(refusalLogRate, refusalLogBurst)}
	if h, _, err := net.SplitHostPort(o.Listen); err == nil {
		s.listenHost = strings.ToLower(h)
		if ip, err := netip.ParseAddr(h); h == "" || (err == nil && ip.IsUnspecified()) {
			s.listenHost, s.anyIP = "", true
		}
	}
	return s
}

// hostAllowed reports whether a request's Host names this mirror: loopback
// by name or address, or the listen host, with or without a port.
func (s *Server) hostAllowed(hostport string) bool {
	host := hostport
	if h, port, err := net.SplitHostPort(hostport); err == nil {
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return false
		}
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	host = strings.ToLower(host)
	switch {
	case host == "":
		return false
	case host == "localhost" || host == "127.0.0.1" || host == "::1" || host == s.listenHost:
		return true
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return s.anyIP && ip.Zone() == ""
	}
	return false
}

// Bounds of a served mirror, beside httpserve's read, write (per write: a
// 1 GiB layer streams for as long as the runtime keeps reading) and header bounds.
const (
	// DefaultMaxConns bounds open connections. At the cap a new client closes
	// the connection idle longest (httpserve.Server), so idle connections,
	// however many a local process opens, never lock a runtime out.
	DefaultMaxConns = 128
	idleTimeout     = 60 * time.Second
)

// ServeOptions bound a served mirror.
type ServeOptions struct {
	// MaxConns caps open connections (0: DefaultMaxConns).
	MaxConns int
	// Logger gets the server's lines: the connection cap reached (rate-limited)
	// and connection errors (nil: slog.Default()).
	Logger *slog.Logger
	// TLS serves HTTPS (Identity.TLSConfig: the agent always does, so that
	// containerd can tell the mirror from a process that took its address);
	// nil serves plain HTTP (tests of the handler).
	TLS *tls.Config
}

// Serve serves h on l until ctx ends, through httpserve's hardened server: read,
// write and idle timeouts, and a connection cap that closes idle connections for
// new clients.
func Serve(ctx context.Context, l net.Listener, h http.Handler, o ServeOptions) error {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	srv := httpserve.New(httpserve.Streaming(h), nil, slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug))
	srv.MaxConns, srv.Logger = o.MaxConns, o.Logger
	if srv.MaxConns <= 0 {
		srv.MaxConns = DefaultMaxConns
	}
	srv.IdleTimeout = idleTimeout
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		case <-done:
		}
	}()
	var err error
	if o.TLS != nil {
		srv.TLSConfig = o.TLS
		err = srv.ServeTLS(l, "", "")
	} else {
		err = srv.Serve(l)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

var (
	// nameRE is the OCI distribution name grammar: lower-case components separated by
	// "/", each starting and ending with a letter or digit. "..", "." and empty
	// components cannot match, so no path traversal.
	nameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	// digestRE is the OCI digest grammar; only sha256 can be held.
	digestRE = regexp.MustCompile(`^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$`)
	sha256RE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
	// nsRE is a registry host[:port] (containerd's ns parameter).
	nsRE = regexp.MustCompile(`^[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{1,5})?$`)
)

const maxNameLen = 255

// errorBody is the OCI distribution error JSON.
type errorBody struct {
	Errors []errorEntry `json:"errors"`
}
type errorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	if status == http.StatusBadRequest || status == http.StatusMethodNotAllowed || status == http.StatusMisdirectedRequest {
		// Refusals name who asked: the mirror listens on loopback, so a local
		// process or a browser on the node. Rate-limited: a flood gives one
		// line per refusal up to the limit, then a count.
		if s.refusals.Allow() {
			s.log.Warn("registry mirror refused a request", "from", r.RemoteAddr, "host", r.Host, "method", r.Method, "path", r.URL.Path,
				"ns", r.URL.Query().Get("ns"), "code", code, "why", msg, "refusals_not_logged", s.suppressed.Swap(0))
		} else {
			s.suppressed.Add(1)
		}
	}
	b, _ := json.Marshal(errorBody{Errors: []errorEntry{{Code: code, Message: msg}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
}

// ServeHTTP implements the pull API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if !s.hostAllowed(r.Host) {
		// DNS rebinding: a page on evil.example, rebound to 127.0.0.1, would
		// reach the mirror with its own name as Host.
		s.fail(w, r, http.StatusMisdirectedRequest, "DENIED",
			fmt.Sprintf("the registry mirror answers requests for 127.0.0.1, [::1], localhost or its listen address, not Host %q", r.Host))
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		s.fail(w, r, http.StatusMethodNotAllowed, "UNSUPPORTED", "the registry mirror is read-only: only GET and HEAD")
		return
	}
	p := r.URL.Path
	if p == "/v2/" || p == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, "{}")
		}
		return
	}
	if !strings.HasPrefix(p, "/v2/") {
		s.fail(w, r, http.StatusNotFound, "NOT_FOUND", "not a registry API path")
		return
	}
	rest := strings.TrimPrefix(p, "/v2/")
	registry := r.URL.Query().Get("ns")
	if registry == "" {
		registry = "docker.io"
	}
	if !nsRE.MatchString(registry) || len(registry) > maxNameLen {
		s.fail(w, r, http.StatusBadRequest, "NAME_INVALID", fmt.Sprintf("ns=%q is not a registry host[:port]", registry))
		return
	}
	switch {
	case strings.HasSuffix(rest, "/tags/list"):
		name := strings.TrimSuffix(rest, "/tags/list")
		if s.validName(w, r, name) {
			s.tags(w, r, registry, name)
		}
	case strings.Contains(rest, "/manifests/"):
		i := strings.LastIndex(rest, "/manifests/")
		name, ref := rest[:i], rest[i+len("/manifests/"):]
		if s.validName(w, r, name) {
			s.manifest(w, r, registry, name, ref)
		}
	case strings.Contains(rest, "/blobs/"):
		i := strings.LastIndex(rest, "/blobs/")
		name, ref := rest[:i], rest[i+len("/blobs/"):]
		if s.validName(w, r, name) {
			s.blob(w, r, registry, name, ref)
		}
	default:
		s.fail(w, r, http.StatusNotFound, "NOT_FOUND", "not a pull API path (manifests, blobs, tags/list)")
	}
}

func (s *Server) validName(w http.ResponseWriter, r *http.Request, name string) bool {
	if len(name) > maxNameLen || !nameRE.MatchString(name) {
		s.fail(w, r, http.StatusBadRequest, "NAME_INVALID", fmt.Sprintf("repository name %q does not match the OCI name grammar", name))
		return false
	}
	return true
}

// checkDigest parses a digest reference: ok false after answering the request.
func (s *Server) checkDigest(w http.ResponseWriter, r *http.Request, ref, unknown string) (v1.Hash, bool) {
	if !digestRE.MatchString(ref) {
		s.fail(w, r, http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("%q is not a digest", ref))
		return v1.Hash{}, false
	}
	if !sha256RE.MatchString(ref) {
		// Well-formed but of an algorithm (or length) the cache never holds.
		s.fail(w, r, http.StatusNotFound, unknown, fmt.Sprintf("%s is not in the node's image cache", ref))
		return v1.Hash{}, false
	}
	h, err := v1.NewHash(ref)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, "DIGEST_INVALID", err.Error())
		return v1.Hash{}, false
	}
	return h, true
}

func (s *Server) manifest(w http.ResponseWriter, r *http.Request, registry, name, ref string) {
	if strings.Contains(ref, ":") {
		if _, ok := s.checkDigest(w, r, ref, "MANIFEST_UNKNOWN"); !ok {
			return
		}
	} else if !tagRE.MatchString(ref) {
		s.fail(w, r, http.StatusBadRequest, "TAG_INVALID", fmt.Sprintf("%q is neither a tag nor a digest", ref))
		return
	}
	d, err := s.c.Resolve(registry, name, ref)
	if err != nil {
		s.notFound(w, r, "MANIFEST_UNKNOWN", registry, name, ref, err)
		return
	}
	if s.serveBlob(w, r, d, string(d.MediaType), "MANIFEST_UNKNOWN", registry, name, ref) {
		// One line per manifest a runtime resolves or fetches (not per blob): the
		// node's journal says which images its runtime took from the mirror.
		s.log.Info("registry mirror served a manifest", "image", registry+"/"+name, "ref", ref, "digest", d.Digest.String(), "method", r.Method)
	}
}

func (s *Server) blob(w http.ResponseWriter, r *http.Request, registry, name, ref string) {
	h, ok := s.checkDigest(w, r, ref, "BLOB_UNKNOWN")
	if !ok {
		return
	}
	d, err := s.c.Blob(registry, name, h)
	if err != nil {
		s.notFound(w, r, "BLOB_UNKNOWN", registry, name, ref, err)
		return
	}
	s.serveBlob(w, r, d, "application/octet-stream", "BLOB_UNKNOWN", registry, name, ref)
}

func (s *Server) notFound(w http.ResponseWriter, r *http.Request, code, registry, name, ref string, err error) {
	if !errors.Is(err, ErrNotFound) {
		s.log.Warn("registry mirror: cache lookup failed", "repo", registry+"/"+name, "ref", ref, "err", err)
	}
	s.fail(w, r, http.StatusNotFound, code, fmt.Sprintf("%s/%s %s is not in the node's image cache", registry, name, ref))
}

// serveBlob answers with the blob's bytes (Range, HEAD and If-None-Match handled by
// http.ServeContent) and the registry headers; false when the blob is missing.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, d v1.Descriptor, contentType, code, registry, name, ref string) bool {
	f, err := s.c.Open(d.Digest)
	if err != nil {
		s.notFound(w, r, code, registry, name, ref, err)
		return false
	}
	defer f.Close()
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Docker-Content-Digest", d.Digest.String())
	w.Header().Set("ETag", `"`+d.Digest.String()+`"`)
	w.Header().Set("Accept-Ranges", "bytes")
	http.ServeContent(w, r, "", time.Time{}, f)
	return true
}

func (s *Server) tags(w http.ResponseWriter, r *http.Request, registry, name string) {
	tags, err := s.c.Tags(registry, name)
	if err != nil || len(tags) == 0 {
		if err == nil {
			err = ErrNotFound
		}
		s.notFound(w, r, "NAME_UNKNOWN", registry, name, "tags", err)
		return
	}
	q := r.URL.Query()
	if last := q.Get("last"); last != "" {
		i := 0
		for i < len(tags) && tags[i] <= last {
			i++
		}
		tags = tags[i:]
	}
	if ns := q.Get("n"); ns != "" {
		n, err := strconv.Atoi(ns)
		if err != nil || n < 0 {
			s.fail(w, r, http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", fmt.Sprintf("n=%q is not a count", ns))
			return
		}
		if n < len(tags) {
			tags = tags[:n]
			if n > 0 {
				next := url.Values{"n": {strconv.Itoa(n)}, "last": {tags[n-1]}}
				if ns := q.Get("ns"); ns != "" {
					next.Set("ns", ns)
				}
				w.Header().Set("Link", fmt.Sprintf(`</v2/%s/tags/list?%s>; rel="next"`, name, next.Encode()))
			}
		}
	}
	b, _ := json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{name, append([]string{}, tags...)})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	if r.Method == http.MethodGet {
		_, _ = w.Write(b)
	}
}
