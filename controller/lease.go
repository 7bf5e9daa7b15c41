package controller

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Leader lease in JetStream KV (Options.HA).
const (
	LeaseBucket = "flotilla_leader"
	leaseKey    = "controller"
	// DefaultLeaseTTL is how long a lease outlives its holder's last renewal.
	DefaultLeaseTTL = 5 * time.Second
)

// lease is the leader lease this controller holds: a KV key that expires
// (the bucket's TTL) unless renewed, renewed with revision-checked updates.
type lease struct {
	log  *slog.Logger
	nc   *nats.Conn
	kv   jetstream.KeyValue
	id   string
	ttl  time.Duration
	rev  uint64
	lost chan struct{}
}

// acquireLease waits until this controller holds the lease (or ctx ends).
func acquireLease(ctx context.Context, opts Options, log *slog.Logger) (*lease, error) {
	ttl := opts.LeaseTTL
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	nopts := []nats.Option{nats.UserCredentials(opts.NATSCreds), nats.Name("flotilla-controller-lease"), nats.MaxReconnects(-1), nats.Timeout(5 * time.Second)}
	if opts.NATSCA != "" {
		pem, err := os.ReadFile(opts.NATSCA)
		if err != nil {
			return nil, fmt.Errorf("NATS CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("NATS CA %s: no PEM certificate", opts.NATSCA)
		}
		nopts = append(nopts, nats.Secure(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	}
	nc, err := nats.Connect(strings.Join(opts.NATSURLs, ","), nopts...)
	if err != nil {
		return nil, fmt.Errorf("leader lease: connect to NATS %v: %w", opts.NATSURLs, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	replicas := opts.Replicas
	if replicas == 0 {
		replicas = 1
		if len(nc.Servers()) >= 3 {
			replicas = 3
		}
	}
	host, _ := os.Hostname()
	l := &lease{log: log, nc: nc, ttl: ttl, lost: make(chan struct{}), id: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), opts.Advertise)}
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		l.kv, err = js.CreateOrUpdateKeyValue(cctx, jetstream.KeyValueConfig{Bucket: LeaseBucket,
			Description: "flotilla: the leading controller (HA)", History: 1, TTL: ttl, Storage: jetstream.FileStorage, Replicas: replicas})
		cancel()
		if err == nil {
			break
		}
		log.Warn("leader lease bucket not available yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	waiting := ""
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		rev, err := l.kv.Create(cctx, leaseKey, []byte(l.id))
		var holder string
		if errors.Is(err, jetstream.ErrKeyExists) {
			if e, gerr := l.kv.Get(cctx, leaseKey); gerr == nil {
				holder = string(e.Value())
			}
		}
		cancel()
		switch {
		case err == nil:
			l.rev = rev
			log.Info("leader lease acquired: this controller leads", "id", l.id, "ttl", ttl)
			return l, nil
		case errors.Is(err, jetstream.ErrKeyExists):
			if holder != waiting {
				log.Info("standby: another controller holds the leader lease", "leader", holder, "id", l.id)
				waiting = holder
			}
		default:
			log.Warn("leader lease", "err", err)
		}
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, ctx.Err()
		case <-time.After(ttl / 10):
		}
	}
}

// keep renews the lease every ttl/5 until ctx ends; when a renewal is refused
// (another controller took it) or none succeeded for ttl, it closes lost.
func (l *lease) keep(ctx context.Context) {
	t := time.NewTicker(l.ttl / 5)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, l.ttl/2)
		rev, err := l.kv.Update(cctx, leaseKey, []byte(l.id), l.rev)
		cancel()
		switch {
		case err == nil:
			l.rev, last = rev, time.Now()
		case ctx.Err() != nil:
			return
		case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyNotFound) || strings.Contains(err.Error(), "wrong last sequence"):
			l.log.Error("leader lease lost: another controller leads now; stopping", "id", l.id, "err", err)
			close(l.lost)
			return
		case time.Since(last) > l.ttl:
			l.log.Error("leader lease not renewed within its TTL; stopping", "id", l.id, "err", err)
			close(l.lost)
			return
		default:
			l.log.Warn("leader lease renewal failed; retrying", "err", err)
		}
	}
}

// release gives the lease up so that a standby takes over at once.
func (l *lease) release() {
	select {
	case <-l.lost:
	default:
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := l.kv.Delete(ctx, leaseKey, jetstream.LastRevision(l.rev)); err != nil {
			l.log.Warn("release leader lease", "err", err)
		}
		cancel()
	}
	l.nc.Close()
}
