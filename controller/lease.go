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
	log *slog.Logger
	nc  *nats.Conn
	kv  jetstream.KeyValue
	id  string
	ttl time.Duration
	rev uint64
	// sent is when the write that stored rev was sent: the server expires the
	// lease no earlier than ttl after it.
	sent time.Time
	lost chan struct{}
	// stopKeep ends keep; kept is closed when it returned.
	stopKeep context.CancelFunc
	kept     chan struct{}
}

// start renews the lease in the background until release (see keep).
func (l *lease) start(onLost func()) {
	ctx, cancel := context.WithCancel(context.Background())
	l.stopKeep, l.kept = cancel, make(chan struct{})
	go func() {
		defer close(l.kept)
		l.keep(ctx, onLost)
	}()
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
	l := &lease{log: log, nc: nc, ttl: ttl, lost: make(chan struct{}), id: processID(opts.Advertise)}
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
		sent := time.Now()
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
			l.rev, l.sent = rev, sent
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

// keep renews the lease every ttl/10 until ctx ends. When a renewal is
// refused (another controller took it) or none succeeded for long enough that
// the lease may expire on the server, it calls onLost and closes lost.
//
// The server expires the key ttl after the last renewal it stored, which is
// no earlier than the moment that renewal was sent (sent). A renewal may run
// until sent+0.8*ttl, and keep gives up once that moment passed without one,
// so the old leader stops answering before a standby can take the lease:
// there is never a moment with two leaders (clocks run at the same rate; no
// clock needs to agree with another).
func (l *lease) keep(ctx context.Context, onLost func()) {
	t := time.NewTicker(l.ttl / 10)
	defer t.Stop()
	lose := func(msg string, err error) {
		l.log.Error(msg, "id", l.id, "err", err)
		onLost()
		close(l.lost)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		deadline := l.sent.Add(l.ttl * 8 / 10)
		try := time.Now()
		cctx, cancel := context.WithDeadline(ctx, deadline)
		rev, err := l.kv.Update(cctx, leaseKey, []byte(l.id), l.rev)
		cancel()
		switch {
		case err == nil:
			l.rev, l.sent = rev, try
		case ctx.Err() != nil:
			return
		case errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyNotFound) || strings.Contains(err.Error(), "wrong last sequence"):
			lose("leader lease lost: another controller leads now; stopping", err)
			return
		case !time.Now().Before(deadline):
			lose("leader lease not renewed in time; stopping so that a standby can lead", err)
			return
		default:
			l.log.Warn("leader lease renewal failed; retrying", "err", err)
		}
	}
}

// release gives the lease up so that a standby takes over at once.
func (l *lease) release() {
	if l.stopKeep != nil {
		l.stopKeep()
		<-l.kept
	}
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
