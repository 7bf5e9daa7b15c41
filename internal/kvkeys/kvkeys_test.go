package kvkeys

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestList(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := List(ctx, kv); err != nil || len(keys) != 0 {
		t.Errorf("List(empty) = %v, %v; want no keys", keys, err)
	}
	for _, k := range []string{"a", "b.c", "d"} {
		if _, err := kv.Put(ctx, k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	keys, err := List(ctx, kv)
	slices.Sort(keys)
	if err != nil || !slices.Equal(keys, []string{"a", "b.c"}) {
		t.Errorf("List = %v, %v; want [a b.c]", keys, err)
	}
	// A ctx that ends gives an error, never a partial list.
	dead, stop := context.WithCancel(ctx)
	stop()
	if keys, err := List(dead, kv); err == nil {
		t.Errorf("List(ended ctx) = %v, nil; want an error", keys)
	}
}
