package rollout

import (
	"crypto/rand"
	"os"
	"testing"

	"github.com/flotilla-dev/flotilla/protocol"
)

// BenchmarkLayerStep measures a whole layer step on a cold cache: HTTPS fetch
// from loopback, sha256 check, move into the cache, then unpack (which hashes
// again before placing). Bytes are the blob's (incompressible content).
func BenchmarkLayerStep(b *testing.B) {
	content := make([]byte, 32<<20)
	_, _ = rand.Read(content)
	l := makeLayer(b, "big.bin="+string(content), "etc/", "etc/a.conf=a")
	srv := newBlobServer(b, l)
	b.SetBytes(int64(len(l.blob)))
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		dir, err := os.MkdirTemp("", "flotilla-bench-*")
		if err != nil {
			b.Fatal(err)
		}
		n := newNodeIn(b, dir, srv.caPEM())
		b.StartTimer()
		_, err = n.run(protocol.KindLayer, srv.payload(l, "good"))
		b.StopTimer()
		os.RemoveAll(dir)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
