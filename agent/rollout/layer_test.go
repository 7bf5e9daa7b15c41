package rollout

import (
	"bytes"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/agent/unpack"
	"github.com/flotilla-dev/flotilla/protocol"
)

var appLayer = []string{"etc/", "etc/app/", "etc/app/app.conf=port: 1", "usr/", "usr/bin/", "usr/bin/app=#!/bin/sh\necho app\n"}

func TestLayerFetchUnpackAndRerun(t *testing.T) {
	l := makeLayer(t, appLayer...)
	srv := newBlobServer(t, l)
	n := newNode(t, srv.caPEM())

	ev, err := n.run(protocol.KindLayer, srv.payload(l, "good"))
	if err != nil {
		t.Fatalf("layer step: %v", err)
	}
	if got := readFile(t, filepath.Join(n.root, "etc/app/app.conf")); got != "port: 1" {
		t.Errorf("etc/app/app.conf = %q", got)
	}
	h := strings.TrimPrefix(l.digest, "sha256:")
	if got := readFile(t, blobPath(n.dataDir, h)); got != string(l.blob) {
		t.Error("the cached blob differs from the layer")
	}
	var rec LayerRecord
	if ok, err := readJSON(filepath.Join(n.dataDir, "clusters/c1/layers", h+".json"), &rec); !ok || err != nil {
		t.Fatalf("layer record: %v %v", ok, err)
	}
	if !rec.Complete || rec.Digest != l.digest || !slices.ContainsFunc(rec.Records, func(r unpack.Record) bool { return r.Path == "usr/bin/app" }) {
		t.Errorf("layer record %+v", rec)
	}
	prog := ev.progress()
	if len(prog) == 0 || prog[len(prog)-1].Done != int64(len(l.blob)) || prog[len(prog)-1].Total != int64(len(l.blob)) || prog[0].Message != "fetch" {
		t.Errorf("progress events %+v: want fetch progress ending at %d/%d", prog, len(l.blob), len(l.blob))
	}

	// Running it again is a no-op: no request, nothing unpacked again.
	if err := os.WriteFile(filepath.Join(n.root, "etc/app/app.conf"), []byte("edited"), 0o644); err != nil {
		t.Fatal(err)
	}
	ev, err = n.run(protocol.KindLayer, srv.payload(l, "good"))
	if err != nil {
		t.Fatal(err)
	}
	if gets, _ := srv.stats(); gets != 1 {
		t.Errorf("%d GET requests after a rerun, want 1", gets)
	}
	if got := readFile(t, filepath.Join(n.root, "etc/app/app.conf")); got != "edited" {
		t.Errorf("rerun unpacked again: app.conf = %q", got)
	}
	if !slices.ContainsFunc(ev.lines("stdout"), func(s string) bool { return strings.Contains(s, "already unpacked") }) {
		t.Errorf("rerun output %q does not say it was already unpacked", ev.lines(""))
	}

	// Another cluster with the same layer unpacks it from the cache, without a request.
	p := srv.payload(l, "good")
	p.Cluster = "c2"
	if _, err := n.run(protocol.KindLayer, p); err != nil {
		t.Fatal(err)
	}
	if gets, _ := srv.stats(); gets != 1 {
		t.Errorf("%d GET requests for a cached blob, want still 1", gets)
	}
	if got := readFile(t, filepath.Join(n.root, "etc/app/app.conf")); got != "port: 1" {
		t.Errorf("cluster c2's unpack: app.conf = %q", got)
	}
}

func TestLayerFetchFailuresLeaveNothing(t *testing.T) {
	l := makeLayer(t, appLayer...)
	for _, tc := range []struct {
		name    string
		token   string
		corrupt bool
		want    []string
	}{
		{"wrong token", "bad", false, []string{"HTTP 401", "refused the layer token", l.digest}},
		{"corrupted body", "good", true, []string{"digest mismatch", l.digest, "nothing was unpacked"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newBlobServer(t, l)
			srv.corrupt = tc.corrupt
			n := newNode(t, srv.caPEM())
			_, err := n.run(protocol.KindLayer, srv.payload(l, tc.token))
			if err == nil {
				t.Fatal("layer step succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if tc.corrupt && !errors.Is(err, unpack.ErrDigestMismatch) {
				t.Errorf("error %v is not ErrDigestMismatch", err)
			}
			if got := tree(t, n.root); len(got) != 0 {
				t.Errorf("root has %v after a failed fetch", got)
			}
			if got := tree(t, filepath.Join(n.dataDir, "blobs")); len(got) > 1 { // only sha256/
				t.Errorf("blob cache has %v after a failed fetch", got)
			}
			if exists(filepath.Join(n.dataDir, "clusters/c1/layers")) {
				t.Error("a layer record was written for a failed fetch")
			}
		})
	}
}

func TestLayerResumesPartialDownload(t *testing.T) {
	l := makeLayer(t, append(appLayer, "big="+strings.Repeat("0123456789", 20000))...)
	h := strings.TrimPrefix(l.digest, "sha256:")
	for _, tc := range []struct {
		name      string
		part      []byte
		wantRange string
		wantGets  int
	}{
		{"prefix", l.blob[:len(l.blob)/2], "bytes=" + strconv.Itoa(len(l.blob)/2) + "-", 1},
		{"garbage", []byte("not a prefix of the blob"), "bytes=24-", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newBlobServer(t, l)
			n := newNode(t, srv.caPEM())
			if err := os.MkdirAll(filepath.Dir(blobPath(n.dataDir, h)), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(blobPath(n.dataDir, h)+".part", tc.part, 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := n.run(protocol.KindLayer, srv.payload(l, "good")); err != nil {
				t.Fatalf("layer step: %v", err)
			}
			gets, ranges := srv.stats()
			if gets != tc.wantGets || ranges[0] != tc.wantRange {
				t.Errorf("GET requests %d with ranges %q; want %d, the first with %q", gets, ranges, tc.wantGets, tc.wantRange)
			}
			if got := readFile(t, blobPath(n.dataDir, h)); got != string(l.blob) {
				t.Error("the cached blob differs from the layer")
			}
			if exists(blobPath(n.dataDir, h) + ".part") {
				t.Error(".part left behind")
			}
			if got := readFile(t, filepath.Join(n.root, "etc/app/app.conf")); got != "port: 1" {
				t.Errorf("app.conf = %q", got)
			}
		})
	}
}

func TestLayerRefetchesBadCachedBlob(t *testing.T) {
	l := makeLayer(t, appLayer...)
	srv := newBlobServer(t, l)
	n := newNode(t, srv.caPEM())
	h := strings.TrimPrefix(l.digest, "sha256:")
	if err := os.MkdirAll(filepath.Dir(blobPath(n.dataDir, h)), 0o700); err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), l.blob...)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(blobPath(n.dataDir, h), bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := n.run(protocol.KindLayer, srv.payload(l, "good")); err != nil {
		t.Fatalf("layer step: %v", err)
	}
	if gets, _ := srv.stats(); gets != 1 {
		t.Errorf("%d GETs, want 1 (refetch of the damaged cached blob)", gets)
	}
	if got := readFile(t, blobPath(n.dataDir, h)); got != string(l.blob) {
		t.Error("the damaged cached blob was not replaced")
	}
}

func TestLayerStepRefusesBadPayloads(t *testing.T) {
	l := makeLayer(t, appLayer...)
	n := newNode(t, nil)
	for _, tc := range []struct {
		name string
		p    protocol.LayerPayload
		want string
	}{
		{"bad digest", protocol.LayerPayload{Cluster: "c1", Digest: "sha256:12", URL: "https://x"}, "not sha256:<64 hex digits>"},
		{"cluster escapes", protocol.LayerPayload{Cluster: "../x", Digest: l.digest, URL: "https://x"}, `cluster name "../x"`},
		{"no CA", protocol.LayerPayload{Cluster: "c1", Digest: l.digest, URL: "https://127.0.0.1:1/b"}, "has this agent joined?"},
		{"no URL", protocol.LayerPayload{Cluster: "c1", Digest: l.digest}, "no blob URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := n.run(protocol.KindLayer, tc.p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestLayerStalledDownloadFailsThenResumes(t *testing.T) {
	l := makeLayer(t, append(appLayer, "big="+strings.Repeat("x", 1<<20))...)
	stall := make(chan struct{})
	var stalled atomic.Bool
	stalled.Store(true)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !stalled.Load() {
			http.ServeContent(w, r, "blob", time.Unix(1, 0), bytes.NewReader(l.blob))
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(l.blob)))
		_, _ = w.Write(l.blob[:len(l.blob)/2])
		w.(http.Flusher).Flush()
		select { // then nothing, until the client gives up
		case <-r.Context().Done():
		case <-stall:
		}
	}))
	t.Cleanup(func() { close(stall); srv.Close() })
	n := newNode(t, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	n.configure(func(o *Options) { o.StallTimeout, o.ProgressEvery = 300*time.Millisecond, 20*time.Millisecond })
	p := protocol.LayerPayload{Cluster: "c1", Digest: l.digest, Size: int64(len(l.blob)), URL: srv.URL + "/b", Token: "t"}
	_, err := n.run(protocol.KindLayer, p)
	if err == nil || !strings.Contains(err.Error(), "no data for 300ms") {
		t.Fatalf("stalled download: %v, want the stall error", err)
	}
	h := strings.TrimPrefix(l.digest, "sha256:")
	fi, err := os.Stat(blobPath(n.dataDir, h) + ".part")
	if err != nil || fi.Size() != int64(len(l.blob)/2) {
		t.Fatalf("partial download: %v %v, want %d bytes kept for resuming", fi, err, len(l.blob)/2)
	}
	stalled.Store(false)
	if _, err := n.run(protocol.KindLayer, p); err != nil {
		t.Fatalf("resumed download: %v", err)
	}
	if got := readFile(t, filepath.Join(n.root, "big")); len(got) != 1<<20 {
		t.Errorf("big has %d bytes", len(got))
	}
}

func TestLayerDownloadLimit(t *testing.T) {
	l := makeLayer(t, "random="+randomBytes(t, 200<<10))
	srv := newBlobServer(t, l)
	n := newNode(t, srv.caPEM())
	p := srv.payload(l, "good")
	p.MaxDownload = 400 << 10 // 200 KiB at 400 KiB/s (32 KiB burst): at least 0.4 s
	start := time.Now()
	if _, err := n.run(protocol.KindLayer, p); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("%d bytes limited to %d B/s took %s", len(l.blob), p.MaxDownload, d)
	}
}

func TestLayerPartialUnpackIsRecordedForUndo(t *testing.T) {
	l := makeLayer(t, "etc/", "etc/ok.conf=ok", "../evil=x")
	srv := newBlobServer(t, l)
	n := newNode(t, srv.caPEM())
	_, err := n.run(protocol.KindLayer, srv.payload(l, "good"))
	if err == nil || !strings.Contains(err.Error(), `"../evil"`) {
		t.Fatalf("layer with ../evil: %v", err)
	}
	if exists(filepath.Join(filepath.Dir(n.root), "evil")) {
		t.Fatal("../evil was written outside the root")
	}
	var rec LayerRecord
	h := strings.TrimPrefix(l.digest, "sha256:")
	if ok, err := readJSON(layerRecordPath(filepath.Join(n.dataDir, "clusters/c1"), h), &rec); !ok || err != nil || rec.Complete || len(rec.Records) == 0 {
		t.Fatalf("record of the partial unpack: %+v %v %v, want incomplete with etc/ok.conf", rec, ok, err)
	}
	if _, err := n.run(protocol.KindUndo, undo(protocol.UndoRemoveLayer, l.digest)); err != nil {
		t.Fatal(err)
	}
	if got := tree(t, n.root); len(got) != 0 {
		t.Errorf("root after undoing the partial layer: %v", got)
	}
}

func randomBytes(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return string(b)
}
