package mirror_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/flotilla-dev/flotilla/agent/imagecache"
	"github.com/flotilla-dev/flotilla/agent/imagecache/imagecachetest"
	"github.com/flotilla-dev/flotilla/agent/mirror"
	"github.com/flotilla-dev/flotilla/bundle/recipe"
	"github.com/flotilla-dev/flotilla/internal/poll"
	"github.com/flotilla-dev/flotilla/internal/syncbuf"
)

// content is a cache holding docker.io/library/nginx:1.27 (one image), a two-platform
// index registry.local:5000/team/app:v1, and the same index by digest only.
type content struct {
	cache                *imagecache.Cache
	src                  imagecachetest.Source
	nginx, nginxLayer    v1.Hash
	nginxCfg             v1.Hash
	app, appAMD, appARM  v1.Hash
	nginxSize, layerSize int
}

func newContent(t *testing.T) *content {
	t.Helper()
	c := &content{src: imagecachetest.Source{}}
	l := imagecachetest.Layer(t, 3000)
	c.nginxLayer, _ = l.Digest()
	img := imagecachetest.Image(t, nil, l)
	c.nginxCfg, _ = img.ConfigName()
	nginx := c.src.AddImage(t, "docker.io/library/nginx:1.27", img)
	c.nginx, _ = v1.NewHash(nginx.Digest)
	c.nginxSize = int(nginx.Size)
	c.layerSize = len(c.src[c.nginxLayer])
	app, d := c.src.AddIndex(t, "registry.local:5000/team/app:v1", map[string]v1.Image{
		"linux/amd64": imagecachetest.Image(t, nil, imagecachetest.Layer(t, 500)),
		"linux/arm64": imagecachetest.Image(t, &v1.Platform{OS: "linux", Architecture: "arm64"}, imagecachetest.Layer(t, 500)),
	})
	c.app, _ = v1.NewHash(app.Digest)
	c.appAMD, c.appARM = d["linux/amd64"], d["linux/arm64"]
	byDigest := app
	byDigest.Name = "registry.local:5000/team/app@" + app.Digest
	var err error
	if c.cache, err = imagecache.Open(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cache.Import(context.Background(), "test", []recipe.ContainerImage{nginx, app, byDigest}, nil, c.src.Open); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPullAPI checks every pull endpoint, header and error code of the mirror.
func TestPullAPI(t *testing.T) {
	c := newContent(t)
	srv := httptest.NewServer(mirror.New(mirror.Options{Content: c.cache}))
	defer srv.Close()
	const reg = "?ns=registry.local:5000"
	ociManifest, ociIndex := string(types.OCIManifestSchema1), string(types.OCIImageIndex)
	type want struct {
		status int
		ctype  string
		digest v1.Hash
		length int    // Content-Length; -1: unchecked
		body   []byte // exact body; nil: unchecked
		code   string // OCI error code
	}
	cases := []struct {
		name, method, path string
		header             map[string]string
		want               want
	}{
		{"base GET", "GET", "/v2/", nil, want{status: 200, ctype: "application/json", length: 2, body: []byte("{}")}},
		{"base HEAD", "HEAD", "/v2/", nil, want{status: 200, length: 2}},
		{"base without slash", "GET", "/v2", nil, want{status: 200, length: 2}},
		{"docker.io library name, no ns", "GET", "/v2/library/nginx/manifests/1.27", nil, want{status: 200, ctype: ociManifest, digest: c.nginx, length: c.nginxSize, body: c.src[c.nginx]}},
		{"docker.io with ns", "GET", "/v2/library/nginx/manifests/1.27?ns=docker.io", nil, want{status: 200, ctype: ociManifest, digest: c.nginx, length: c.nginxSize}},
		{"manifest HEAD", "HEAD", "/v2/library/nginx/manifests/1.27", nil, want{status: 200, ctype: ociManifest, digest: c.nginx, length: c.nginxSize, body: []byte{}}},
		{"manifest by digest", "GET", "/v2/library/nginx/manifests/" + c.nginx.String(), nil, want{status: 200, ctype: ociManifest, digest: c.nginx, length: c.nginxSize}},
		{"same name, other registry", "GET", "/v2/library/nginx/manifests/1.27?ns=quay.io", nil, want{status: 404, code: "MANIFEST_UNKNOWN", length: -1}},
		{"index by tag", "GET", "/v2/team/app/manifests/v1" + reg, nil, want{status: 200, ctype: ociIndex, digest: c.app, length: len(c.src[c.app])}},
		{"index by digest", "GET", "/v2/team/app/manifests/" + c.app.String() + reg, nil, want{status: 200, ctype: ociIndex, digest: c.app, length: -1}},
		{"platform manifest by digest", "GET", "/v2/team/app/manifests/" + c.appARM.String() + reg, nil, want{status: 200, ctype: ociManifest, digest: c.appARM, length: -1}},
		{"unknown tag", "GET", "/v2/library/nginx/manifests/1.28", nil, want{status: 404, code: "MANIFEST_UNKNOWN", length: -1}},
		{"unknown tag HEAD", "HEAD", "/v2/library/nginx/manifests/1.28", nil, want{status: 404, length: -1, body: []byte{}}},
		{"unknown repo", "GET", "/v2/library/redis/manifests/7", nil, want{status: 404, code: "MANIFEST_UNKNOWN", length: -1}},
		{"manifest of another repo by digest", "GET", "/v2/library/nginx/manifests/" + c.app.String(), nil, want{status: 404, code: "MANIFEST_UNKNOWN", length: -1}},
		{"sha512 digest", "GET", "/v2/library/nginx/manifests/sha512:" + strings.Repeat("ab", 64), nil, want{status: 404, code: "MANIFEST_UNKNOWN", length: -1}},
		{"malformed digest", "GET", "/v2/library/nginx/manifests/sha256:xyz!", nil, want{status: 400, code: "DIGEST_INVALID", length: -1}},
		{"bad tag", "GET", "/v2/library/nginx/manifests/-1.27", nil, want{status: 400, code: "TAG_INVALID", length: -1}},
		{"blob", "GET", "/v2/library/nginx/blobs/" + c.nginxLayer.String(), nil, want{status: 200, ctype: "application/octet-stream", digest: c.nginxLayer, length: c.layerSize, body: c.src[c.nginxLayer]}},
		{"config blob", "GET", "/v2/library/nginx/blobs/" + c.nginxCfg.String(), nil, want{status: 200, digest: c.nginxCfg, length: len(c.src[c.nginxCfg]), body: c.src[c.nginxCfg]}},
		{"blob HEAD", "HEAD", "/v2/library/nginx/blobs/" + c.nginxLayer.String(), nil, want{status: 200, ctype: "application/octet-stream", digest: c.nginxLayer, length: c.layerSize, body: []byte{}}},
		{"blob Range", "GET", "/v2/library/nginx/blobs/" + c.nginxLayer.String(), map[string]string{"Range": "bytes=10-19"}, want{status: 206, digest: c.nginxLayer, length: 10, body: c.src[c.nginxLayer][10:20]}},
		{"blob open Range", "GET", "/v2/library/nginx/blobs/" + c.nginxLayer.String(), map[string]string{"Range": "bytes=" + strconv.Itoa(c.layerSize-5) + "-"}, want{status: 206, length: 5, body: c.src[c.nginxLayer][c.layerSize-5:]}},
		{"Range beyond the blob", "GET", "/v2/library/nginx/blobs/" + c.nginxLayer.String(), map[string]string{"Range": "bytes=" + strconv.Itoa(c.layerSize+10) + "-"}, want{status: 416, length: -1}},
		{"If-None-Match", "GET", "/v2/library/nginx/blobs/" + c.nginxLayer.String(), map[string]string{"If-None-Match": `"` + c.nginxLayer.String() + `"`}, want{status: 304, length: -1}},
		{"blob of another repo", "GET", "/v2/team/app/blobs/" + c.nginxLayer.String() + reg, nil, want{status: 404, code: "BLOB_UNKNOWN", length: -1}},
		{"unknown blob", "GET", "/v2/library/nginx/blobs/sha256:" + strings.Repeat("0", 64), nil, want{status: 404, code: "BLOB_UNKNOWN", length: -1}},
		{"blob by tag", "GET", "/v2/library/nginx/blobs/latest", nil, want{status: 400, code: "DIGEST_INVALID", length: -1}},
		{"tags", "GET", "/v2/library/nginx/tags/list", nil, want{status: 200, ctype: "application/json", length: -1, body: []byte(`{"name":"library/nginx","tags":["1.27"]}`)}},
		{"tags n=0", "GET", "/v2/team/app/tags/list?n=0&ns=registry.local:5000", nil, want{status: 200, length: -1, body: []byte(`{"name":"team/app","tags":[]}`)}},
		{"tags unknown repo", "GET", "/v2/library/redis/tags/list", nil, want{status: 404, code: "NAME_UNKNOWN", length: -1}},
		{"referrers", "GET", "/v2/library/nginx/referrers/" + c.nginx.String(), nil, want{status: 404, code: "NOT_FOUND", length: -1}},
		{"not v2", "GET", "/v1/_ping", nil, want{status: 404, code: "NOT_FOUND", length: -1}},
		{"upper-case name", "GET", "/v2/Library/Nginx/manifests/1.27", nil, want{status: 400, code: "NAME_INVALID", length: -1}},
		{"traversal", "GET", "/v2/../../etc/passwd/manifests/1", nil, want{status: 400, code: "NAME_INVALID", length: -1}},
		{"encoded traversal", "GET", "/v2/library/%2e%2e/%2e%2e/blobs/" + c.nginxLayer.String(), nil, want{status: 400, code: "NAME_INVALID", length: -1}},
		{"empty component", "GET", "/v2/library//nginx/manifests/1.27", nil, want{status: 400, code: "NAME_INVALID", length: -1}},
		{"bad ns", "GET", "/v2/library/nginx/manifests/1.27?ns=a/b", nil, want{status: 400, code: "NAME_INVALID", length: -1}},
		{"PUT", "PUT", "/v2/library/nginx/manifests/1.27", nil, want{status: 405, code: "UNSUPPORTED", length: -1}},
		{"POST upload", "POST", "/v2/library/nginx/blobs/uploads/", nil, want{status: 405, code: "UNSUPPORTED", length: -1}},
		{"DELETE", "DELETE", "/v2/library/nginx/manifests/" + c.nginx.String(), nil, want{status: 405, code: "UNSUPPORTED", length: -1}},
		{"PATCH", "PATCH", "/v2/library/nginx/blobs/uploads/x", nil, want{status: 405, code: "UNSUPPORTED", length: -1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			w := tc.want
			if resp.StatusCode != w.status {
				t.Fatalf("status %d, want %d (body %s)", resp.StatusCode, w.status, body)
			}
			if w.ctype != "" && resp.Header.Get("Content-Type") != w.ctype {
				t.Errorf("Content-Type %q, want %q", resp.Header.Get("Content-Type"), w.ctype)
			}
			if w.digest != (v1.Hash{}) && resp.Header.Get("Docker-Content-Digest") != w.digest.String() {
				t.Errorf("Docker-Content-Digest %q, want %s", resp.Header.Get("Docker-Content-Digest"), w.digest)
			}
			if w.length >= 0 && resp.Header.Get("Content-Length") != strconv.Itoa(w.length) {
				t.Errorf("Content-Length %q, want %d", resp.Header.Get("Content-Length"), w.length)
			}
			if w.body != nil && !bytes.Equal(body, w.body) {
				t.Errorf("body %q, want %q", trim(body), trim(w.body))
			}
			if resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
				t.Error("no Docker-Distribution-API-Version header")
			}
			if w.code != "" {
				var e struct {
					Errors []struct{ Code, Message string }
				}
				if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) != 1 || e.Errors[0].Code != w.code || e.Errors[0].Message == "" {
					t.Errorf("error body %s, want code %s", body, w.code)
				}
				if resp.Header.Get("Content-Type") != "application/json" {
					t.Errorf("error Content-Type %q", resp.Header.Get("Content-Type"))
				}
			}
			if w.status == 405 && resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("405 without Allow: GET, HEAD")
			}
		})
	}
}

func trim(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}

// serve runs the real mirror server on a loopback port.
func serve(t *testing.T, h http.Handler, o mirror.ServeOptions) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mirror.Serve(ctx, l, h, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("mirror did not stop")
		}
	})
	return l.Addr().String()
}

// rawRequest sends a request line as written (no client-side path cleaning).
func rawRequest(t *testing.T, addr, line string) string {
	t.Helper()
	return rawRequestHost(t, addr, "Host: 127.0.0.1\r\n", line)
}

// rawRequestHost is rawRequest with hostHeader ("Host: x\r\n", or none) as written.
func rawRequestHost(t *testing.T, addr, hostHeader, line string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, line+"\r\n"+hostHeader+"Connection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(conn)
	return string(b)
}

// TestHostileMirrorRequests sends path traversal and write attempts to the real
// server: none reads a file outside the cache or changes anything, and every refusal
// is logged naming the requester.
func TestHostileMirrorRequests(t *testing.T) {
	c := newContent(t)
	logs := &syncbuf.Buffer{}
	h := mirror.New(mirror.Options{Content: c.cache, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	addr := serve(t, h, mirror.ServeOptions{})
	before, _ := c.cache.Images()
	attacks := []string{
		"GET /v2/../../../../etc/passwd HTTP/1.1",
		"GET /v2/../../../../etc/passwd/blobs/sha256:" + strings.Repeat("0", 64) + " HTTP/1.1",
		"GET /v2/library/nginx/blobs/sha256:../../../../../../etc/passwd HTTP/1.1",
		"GET /v2/library/nginx/blobs/sha256%2f..%2f..%2fimages.json HTTP/1.1",
		"GET /v2/%2e%2e/%2e%2e/manifests/images.json HTTP/1.1",
		"GET /v2/library/nginx/manifests/..%2f..%2fimages.json HTTP/1.1",
		"PUT /v2/library/nginx/manifests/1.27 HTTP/1.1",
		"DELETE /v2/library/nginx/blobs/" + c.nginxLayer.String() + " HTTP/1.1",
	}
	for _, a := range attacks {
		resp := rawRequest(t, addr, a)
		status := strings.SplitN(resp, " ", 3)
		if len(status) < 2 || (status[1] != "400" && status[1] != "404" && status[1] != "405") {
			t.Errorf("%s: answered %q", a, firstLine(resp))
		}
		if strings.Contains(resp, "root:") || strings.Contains(resp, `"owners"`) {
			t.Errorf("%s: leaked a file: %q", a, trim([]byte(resp)))
		}
	}
	after, _ := c.cache.Images()
	if len(after) != len(before) || !c.cache.Has(c.nginxLayer) {
		t.Error("a refused request changed the cache")
	}
	l := logs.String()
	if n := strings.Count(l, "registry mirror refused a request"); n < 6 {
		t.Errorf("%d refusals logged, want every 400 and 405:\n%s", n, l)
	}
	if !strings.Contains(l, "from=127.0.0.1:") || !strings.Contains(l, "code=NAME_INVALID") || !strings.Contains(l, "code=UNSUPPORTED") {
		t.Errorf("refusals do not name the requester and the reason:\n%s", l)
	}
}

// TestHostileMirrorHostHeader (issue 23, finding 11b): a web page on the node
// that rebinds its own name to 127.0.0.1 reaches the mirror with that name as
// Host. The real server answers only Host values naming loopback or its listen
// address (with or without a port): anything else gets 421 and nothing of the
// cache, and each refusal is logged with the requester and the Host.
func TestHostileMirrorHostHeader(t *testing.T) {
	c := newContent(t)
	manifest := "GET /v2/library/nginx/manifests/1.27 HTTP/1.1"
	cases := []struct {
		listen, host string // host: the Host header as sent ("": none, HTTP/1.0)
		want         int
	}{
		{"127.0.0.1:505", "127.0.0.1", 200},
		{"127.0.0.1:505", "127.0.0.1:505", 200},
		{"127.0.0.1:505", "localhost", 200},
		{"127.0.0.1:505", "LocalHost:505", 200},
		{"127.0.0.1:505", "[::1]", 200},
		{"127.0.0.1:505", "[::1]:505", 200},
		{"10.1.2.3:505", "10.1.2.3:505", 200},
		{"mirror.node.internal:505", "mirror.node.internal", 200},
		{"0.0.0.0:505", "10.9.8.7:505", 200},
		{"127.0.0.1:505", "evil.example", 421},
		{"127.0.0.1:505", "evil.example:505", 421},
		{"127.0.0.1:505", "127.0.0.1.nip.io:505", 421},
		{"127.0.0.1:505", "localhost.evil.example", 421},
		{"127.0.0.1:505", "10.1.2.3:505", 421},
		{"127.0.0.1:505", "127.0.0.1:http", 421},
		{"127.0.0.1:505", "", 421},
		{"0.0.0.0:505", "evil.example:505", 421},
		{"[::]:505", "rebind.evil.example", 421},
	}
	for _, tc := range cases {
		t.Run(tc.listen+" Host "+tc.host, func(t *testing.T) {
			logs := &syncbuf.Buffer{}
			h := mirror.New(mirror.Options{Content: c.cache, Logger: slog.New(slog.NewTextHandler(logs, nil)), Listen: tc.listen})
			addr := serve(t, h, mirror.ServeOptions{})
			line, header := manifest, "Host: "+tc.host+"\r\n"
			if tc.host == "" {
				line, header = strings.Replace(manifest, "HTTP/1.1", "HTTP/1.0", 1), ""
			}
			resp := rawRequestHost(t, addr, header, line)
			if got := strings.SplitN(resp, " ", 3); len(got) < 2 || got[1] != strconv.Itoa(tc.want) {
				t.Fatalf("answered %q, want %d", firstLine(resp), tc.want)
			}
			if tc.want == 200 {
				return
			}
			if strings.Contains(resp, c.nginx.String()) || strings.Contains(resp, "schemaVersion") {
				t.Errorf("a refused request got the manifest: %q", trim([]byte(resp)))
			}
			l := logs.String()
			if !strings.Contains(l, "registry mirror refused a request") || !strings.Contains(l, "from=127.0.0.1:") || !strings.Contains(l, "code=DENIED") {
				t.Errorf("refusal not logged with the requester:\n%s", l)
			}
		})
	}
}

// TestMirrorRefusalLogIsRateLimited: a flood of refused requests gives a
// bounded number of log lines, and the next line counts the ones left out.
func TestMirrorRefusalLogIsRateLimited(t *testing.T) {
	c := newContent(t)
	logs := &syncbuf.Buffer{}
	srv := httptest.NewServer(mirror.New(mirror.Options{Content: c.cache, Logger: slog.New(slog.NewTextHandler(logs, nil))}))
	defer srv.Close()
	const flood = 500
	for range flood {
		resp, err := http.Post(srv.URL+"/v2/library/nginx/blobs/uploads/", "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if n := strings.Count(logs.String(), "registry mirror refused a request"); n < 1 || n > flood/4 {
		t.Errorf("%d refusal lines for %d refused requests, want at least 1 and at most %d", n, flood, flood/4)
	}
	// The limiter allows a line again within 1/refusalLogRate: it carries the count.
	counted := func() bool {
		if resp, err := http.Post(srv.URL+"/v2/x/blobs/uploads/", "text/plain", nil); err == nil {
			resp.Body.Close()
		}
		return regexp.MustCompile(`refusals_not_logged=[1-9]`).MatchString(logs.String())
	}
	if err := poll.Until(context.Background(), 5*time.Second, 50*time.Millisecond, counted); err != nil {
		t.Errorf("no line counts the refusals left out (%v):\n%s", err, logs.String())
	}
}

// TestMirrorLogsServedManifests: every manifest served (GET or HEAD, by tag or
// digest) is one Info line naming the image and digest; blobs and misses are not.
func TestMirrorLogsServedManifests(t *testing.T) {
	c := newContent(t)
	logs := &syncbuf.Buffer{}
	srv := httptest.NewServer(mirror.New(mirror.Options{Content: c.cache, Logger: slog.New(slog.NewTextHandler(logs, nil))}))
	defer srv.Close()
	for _, r := range []struct{ method, path string }{
		{"HEAD", "/v2/library/nginx/manifests/1.27?ns=docker.io"},
		{"GET", "/v2/team/app/manifests/" + c.appAMD.String() + "?ns=registry.local:5000"},
		{"GET", "/v2/library/nginx/blobs/" + c.nginxLayer.String()},
		{"GET", "/v2/library/nginx/manifests/1.28"},
	} {
		req, _ := http.NewRequest(r.method, srv.URL+r.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	l := logs.String()
	for _, want := range []string{
		`msg="registry mirror served a manifest" image=docker.io/library/nginx ref=1.27 digest=` + c.nginx.String() + " method=HEAD",
		`msg="registry mirror served a manifest" image=registry.local:5000/team/app ref=` + c.appAMD.String() + " digest=" + c.appAMD.String() + " method=GET",
	} {
		if !strings.Contains(l, want) {
			t.Errorf("log lacks %q:\n%s", want, l)
		}
	}
	if n := strings.Count(l, "served a manifest"); n != 2 {
		t.Errorf("%d manifests logged, want 2 (no blob, no miss):\n%s", n, l)
	}
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\r\n"); return l }

// mirrorVia sends a registry client's requests to the mirror at addr, naming
// the registry they were meant for in containerd's ns parameter.
type mirrorVia struct{ addr string }

func (m mirrorVia) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	q := r.URL.Query()
	q.Set("ns", r.URL.Host)
	r.URL.RawQuery = q.Encode()
	r.URL.Scheme, r.URL.Host, r.Host = "http", m.addr, m.addr
	return http.DefaultTransport.RoundTrip(r)
}

// TestHostileIdleConnectionsHoldTheMirror (issue 23, finding 7): a local
// process holds every one of the mirror's connections idle, most as keep-alive
// connections that asked once, some never asking. A runtime's pull (a
// go-containerregistry client: /v2/, the index, the platform manifest, config
// and layer, as containerd asks) is served at once: idle connections are
// closed for it, and the server says so in its log.
func TestHostileIdleConnectionsHoldTheMirror(t *testing.T) {
	c := newContent(t)
	logs := &syncbuf.Buffer{}
	lg := slog.New(slog.NewTextHandler(logs, nil))
	addr := serve(t, mirror.New(mirror.Options{Content: c.cache, Logger: lg}), mirror.ServeOptions{Logger: lg})
	const silent = 16
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := range mirror.DefaultMaxConns {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, conn)
		if i < silent {
			continue
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(conn, "GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		resp.Body.Close()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	start := time.Now()
	ref, err := name.ParseReference("registry.local:5000/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithContext(ctx), remote.WithTransport(mirrorVia{addr}),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		t.Fatalf("pull while %d idle connections hold the mirror: %v", mirror.DefaultMaxConns, err)
	}
	if err := validate.Image(img); err != nil { // every blob fetched and checked
		t.Fatalf("pull while %d idle connections hold the mirror: %v", mirror.DefaultMaxConns, err)
	}
	if d, _ := img.Digest(); d != c.appAMD {
		t.Errorf("pulled %s, want %s", d, c.appAMD)
	}
	took := time.Since(start)
	t.Logf("pull with the mirror's %d connections held idle: %s", mirror.DefaultMaxConns, took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("the pull waited %s for the idle connections", took.Round(time.Millisecond))
	}
	if !strings.Contains(logs.String(), "connection cap reached") {
		t.Errorf("the cap is not logged:\n%s", logs.String())
	}
}
