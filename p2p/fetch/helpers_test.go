package fetch_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/p2p/fetch"
	"github.com/flotilla-dev/flotilla/p2p/pieces"
	"github.com/flotilla-dev/flotilla/p2p/pieces/piecestest"
	"github.com/flotilla-dev/flotilla/p2p/tracker"
)

// cluster is a tracker and a CA on loopback; nodes are real piece servers
// and fetchers in this process, talking mTLS over real sockets.
type cluster struct {
	t          *testing.T
	serverTLS  *tls.Config
	client     *http.Client
	tracker    *tracker.Tracker
	trackerSrv *httptest.Server
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	ca, err := piecestest.NewCA("cluster-ca")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue("node", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, tracker: tracker.New(time.Minute)}
	if c.serverTLS, err = pieces.ServerTLSConfig(ca.CertPEM, cert, key); err != nil {
		t.Fatal(err)
	}
	clientTLS, err := pieces.ClientTLSConfig(ca.CertPEM, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	c.client = fetch.NewClient(clientTLS)
	c.trackerSrv = c.serve(c.tracker.Handler())
	return c
}

// serve starts h behind the cluster's mutual TLS.
func (c *cluster) serve(h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = c.serverTLS.Clone()
	srv.StartTLS()
	c.t.Cleanup(srv.Close)
	return srv
}

type node struct {
	id       string
	store    *pieces.Store
	srv      *httptest.Server
	fetcher  *fetch.Fetcher
	served   atomic.Int64 // requests answered with 200
	requests atomic.Int64 // requests received
}

func fastOptions() fetch.Options {
	return fetch.Options{
		WaitAhead:        time.Second,
		StallTimeout:     time.Second,
		GiveUpAfter:      20 * time.Second,
		RefreshInterval:  100 * time.Millisecond,
		AnnounceInterval: 50 * time.Millisecond,
	}
}

func (c *cluster) node(id string, dir string, mod func(*fetch.Options), hopts ...pieces.HandlerOption) *node {
	c.t.Helper()
	if dir == "" {
		dir = c.t.TempDir()
	}
	st, err := pieces.OpenStore(dir)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { st.Close() })
	n := &node{id: id, store: st}
	h := pieces.NewHandler(st, hopts...)
	n.srv = c.serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.requests.Add(1)
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		if rec.status == 0 || rec.status == 200 {
			n.served.Add(1)
		}
	}))
	o := fastOptions()
	o.Self = pieces.Peer{ID: id, Addr: n.srv.URL}
	o.Client = c.client
	if mod != nil {
		mod(&o)
	}
	n.fetcher = fetch.New(st, fetch.NewHTTPTracker(c.trackerSrv.URL, c.client), o)
	return n
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) { r.status = code; r.ResponseWriter.WriteHeader(code) }

// seed makes a node holding blob and announcing it, like the controller.
func (c *cluster) seed(blob []byte) (*node, pieces.PieceList) {
	c.t.Helper()
	n := c.node("seed", "", nil)
	src := filepath.Join(c.t.TempDir(), "layer")
	if err := os.WriteFile(src, blob, 0o644); err != nil {
		c.t.Fatal(err)
	}
	list, err := n.store.Add(context.Background(), src, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := n.fetcher.Seed(context.Background(), list); err != nil {
		c.t.Fatal(err)
	}
	return n, list
}

func randomBlob(t *testing.T, size int) []byte {
	t.Helper()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func checkBlob(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the seeded blob", path)
	}
}

func pieceOf(blob []byte, l pieces.PieceList, i int) []byte {
	return blob[l.Offset(i) : l.Offset(i)+l.Len(i)]
}
