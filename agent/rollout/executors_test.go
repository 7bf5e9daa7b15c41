package rollout

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-dev/flotilla/agent"
	"github.com/flotilla-dev/flotilla/protocol"
)

func TestExecutorsKinds(t *testing.T) {
	got := []string{}
	for k := range Executors(Options{}) {
		got = append(got, k)
	}
	slices.Sort(got)
	want := []string{protocol.KindFile, protocol.KindImages, protocol.KindLayer, protocol.KindRun, protocol.KindService, protocol.KindUndo,
		protocol.KindBackup, protocol.KindRestore}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("kinds %v, want %v", got, want)
	}
}

// TestOptionsFetch: a layer step gets its blob through Options.Fetch, and
// its result is checked like any other (a fetcher that did not verify gets
// the digest checked by the layer executor).
func TestOptionsFetch(t *testing.T) {
	l := makeLayer(t, appLayer...)
	for _, tc := range []struct {
		name    string
		content []byte
		want    string // error text; "" for success
	}{
		{"the blob", l.blob, ""},
		{"wrong bytes", []byte(strings.Repeat("x", len(l.blob))), "digest mismatch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, nil)
			var calls atomic.Int32
			n.configure(func(o *Options) {
				o.Fetch = func(_ context.Context, sc *agent.StepContext, p protocol.LayerPayload, dst string) (bool, error) {
					calls.Add(1)
					if p.Digest != l.digest || !strings.HasPrefix(dst, sc.DataDir) {
						return false, errors.New("unexpected request")
					}
					return false, os.WriteFile(dst, tc.content, 0o600)
				}
			})
			p := protocol.LayerPayload{Cluster: "c1", Digest: l.digest, Size: int64(len(l.blob))}
			_, err := n.run(protocol.KindLayer, p)
			if calls.Load() != 1 {
				t.Fatalf("Options.Fetch called %d times, want 1", calls.Load())
			}
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got := readFile(t, filepath.Join(n.root, "etc/app/app.conf")); got != "port: 1" {
					t.Errorf("etc/app/app.conf = %q", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if exists(filepath.Join(n.root, "etc")) {
				t.Error("a blob that failed its digest check was unpacked")
			}
		})
	}
}

// TestExecutorSetsAreIndependent: the locks live in the value Executors
// returns, not in the package: one set's held blob lock does not stop another.
func TestExecutorSetsAreIndependent(t *testing.T) {
	a, b := newSteps(Options{}), newSteps(Options{})
	unlock := a.blobs.lock("h")
	done := make(chan struct{})
	go func() { b.blobs.lock("h")(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("another set's blob lock waited for this one's")
	}
	unlock()
}

func TestKeyedMutex(t *testing.T) {
	var k keyedMutex
	var mu sync.Mutex
	inside := map[string]int{}
	var wg sync.WaitGroup
	for i := range 50 {
		key := []string{"a", "b"}[i%2]
		wg.Go(func() {
			unlock := k.lock(key)
			mu.Lock()
			inside[key]++
			if inside[key] > 1 {
				t.Errorf("two holders of %q at once", key)
			}
			mu.Unlock()
			runtime.Gosched() // let the others run into the lock while it is held
			mu.Lock()
			inside[key]--
			mu.Unlock()
			unlock()
		})
	}
	wg.Wait()
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) != 0 {
		t.Errorf("%d keys kept after every lock was released: the map grows with every blob", len(k.m))
	}
}
