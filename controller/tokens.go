package controller

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go/jetstream"
)

// TokensBucket is the JetStream KV bucket of join tokens (key: token ID).
const TokensBucket = "flotilla_tokens"

type tokenRecord struct {
	ID          string    `json:"id"`
	SecretHash  []byte    `json:"secretHash"`
	Description string    `json:"description,omitempty"`
	Created     time.Time `json:"created"`
	Expires     time.Time `json:"expires"`
	Uses        int       `json:"uses"`
}

// Join-token errors, distinguishable with errors.Is.
var (
	ErrTokenUnknown = errors.New("unknown join token")
	ErrTokenExpired = errors.New("join token expired")
)

type tokenStore struct{ kv jetstream.KeyValue }

func openTokens(ctx context.Context, js jetstream.JetStream) (*tokenStore, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: TokensBucket, History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		return nil, fmt.Errorf("open KV %s: %w", TokensBucket, err)
	}
	return &tokenStore{kv: kv}, nil
}

// create makes a token "<id>.<secret>"; only the secret's hash is stored.
func (s *tokenStore) create(ctx context.Context, ttl time.Duration, desc string) (protocol.TokenInfo, error) {
	if ttl <= 0 {
		return protocol.TokenInfo{}, fmt.Errorf("--ttl %s: want a positive duration such as 24h", ttl)
	}
	idb, sec := make([]byte, 4), make([]byte, 16)
	if _, err := rand.Read(idb); err != nil {
		return protocol.TokenInfo{}, err
	}
	if _, err := rand.Read(sec); err != nil {
		return protocol.TokenInfo{}, err
	}
	id, secret := hex.EncodeToString(idb), hex.EncodeToString(sec)
	now := time.Now().UTC()
	rec := tokenRecord{ID: id, SecretHash: hashSecret(secret), Description: desc, Created: now, Expires: now.Add(ttl)}
	data, _ := json.Marshal(rec)
	if _, err := s.kv.Create(ctx, id, data); err != nil {
		return protocol.TokenInfo{}, fmt.Errorf("store token: %w", err)
	}
	return protocol.TokenInfo{ID: id, Token: id + "." + secret, Description: desc, Created: rec.Created, Expires: rec.Expires}, nil
}

func (s *tokenStore) get(ctx context.Context, id string) (*tokenRecord, uint64, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, ErrTokenUnknown
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read token %s: %w", id, err)
	}
	var rec tokenRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, 0, fmt.Errorf("token %s: %w", id, err)
	}
	return &rec, e.Revision(), nil
}

// use checks a presented token and counts the use.
func (s *tokenStore) use(ctx context.Context, token string) error {
	id, secret, ok := strings.Cut(strings.TrimSpace(token), ".")
	if !ok || len(id) != 8 || !isHex(id) {
		return fmt.Errorf("%w: not a flotilla token (want <id>.<secret> as printed by `flotilla token create`)", ErrTokenUnknown)
	}
	rec, rev, err := s.get(ctx, id)
	if errors.Is(err, ErrTokenUnknown) {
		return fmt.Errorf("%w %s (revoked or never created): create one with `flotilla token create --ttl 24h`", ErrTokenUnknown, id)
	}
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(hashSecret(secret), rec.SecretHash) != 1 {
		return fmt.Errorf("%w %s: wrong secret: copy the whole token printed by `flotilla token create`", ErrTokenUnknown, id)
	}
	if !time.Now().Before(rec.Expires) {
		return fmt.Errorf("%w: token %s expired at %s: create a new one with `flotilla token create --ttl 24h`",
			ErrTokenExpired, id, rec.Expires.Format(time.RFC3339))
	}
	rec.Uses++
	data, _ := json.Marshal(rec)
	_, _ = s.kv.Update(ctx, id, data, rev) // a lost race only undercounts uses
	return nil
}

func (s *tokenStore) list(ctx context.Context) ([]protocol.TokenInfo, error) {
	lister, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	var out []protocol.TokenInfo
	for id := range lister.Keys() {
		rec, _, err := s.get(ctx, id)
		if err != nil {
			continue
		}
		out = append(out, protocol.TokenInfo{ID: rec.ID, Description: rec.Description, Created: rec.Created, Expires: rec.Expires, Uses: rec.Uses})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

func (s *tokenStore) revoke(ctx context.Context, idOrToken string) error {
	id, _, _ := strings.Cut(strings.TrimSpace(idOrToken), ".")
	if _, _, err := s.get(ctx, id); err != nil {
		if errors.Is(err, ErrTokenUnknown) {
			return fmt.Errorf("no token %q: see `flotilla token list`", id)
		}
		return err
	}
	if err := s.kv.Purge(ctx, id); err != nil {
		return fmt.Errorf("revoke token %s: %w", id, err)
	}
	return nil
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// StateBucket holds small controller state (the task sequence reservation).
const StateBucket = "flotilla_state"

// seqBlock is how many sequence numbers one KV write reserves.
const seqBlock = 1000

// sequencer hands out task sequence numbers that stay increasing across
// restarts: it persists a reserved ceiling before using numbers below it.
type sequencer struct {
	kv      jetstream.KeyValue
	next    uint64
	ceiling uint64
	rev     uint64
}

func openSequencer(ctx context.Context, js jetstream.JetStream) (*sequencer, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: StateBucket, History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		return nil, fmt.Errorf("open KV %s: %w", StateBucket, err)
	}
	s := &sequencer{kv: kv}
	e, err := kv.Get(ctx, "seq")
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return nil, fmt.Errorf("read sequence: %w", err)
	default:
		var v uint64
		if _, err := fmt.Sscan(string(e.Value()), &v); err != nil {
			return nil, fmt.Errorf("sequence value %q: %w", e.Value(), err)
		}
		s.ceiling, s.rev = v, e.Revision()
	}
	// Never reuse what a previous run may have handed out: start above its ceiling,
	// and above the wall clock in ms so a lost data dir still moves forward.
	start := s.ceiling
	if ms := uint64(time.Now().UnixMilli()); ms > start {
		start = ms
	}
	s.next, s.ceiling = start+1, start
	return s, s.reserve(ctx)
}

func (s *sequencer) reserve(ctx context.Context) error {
	ceiling := s.ceiling + seqBlock
	rev, err := s.kv.Put(ctx, "seq", []byte(fmt.Sprint(ceiling)))
	if err != nil {
		return fmt.Errorf("reserve task sequence numbers: %w", err)
	}
	s.ceiling, s.rev = ceiling, rev
	return nil
}

// take returns the next sequence number; callers serialise (Controller.signMu).
func (s *sequencer) take(ctx context.Context) (uint64, error) {
	if s.next > s.ceiling {
		if err := s.reserve(ctx); err != nil {
			return 0, err
		}
	}
	n := s.next
	s.next++
	return n, nil
}
