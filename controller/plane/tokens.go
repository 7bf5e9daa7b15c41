package plane

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

	"github.com/flotilla-dev/flotilla/internal/kvkeys"
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
	// MaxUses is how many joins the token allows (0: any number until it expires).
	MaxUses int `json:"maxUses,omitempty"`
	// For is the one node name the token joins; only such a token may re-join
	// (replace) a node that is already in the inventory.
	For string `json:"for,omitempty"`
	// Labels are all the labels of a node that joins with the token
	// (admin-chosen; labels the node asks for are not applied, see joinLabels).
	Labels map[string]string `json:"labels,omitempty"`
}

// Join-token errors, distinguishable with errors.Is. They are for the
// controller's log: a refused join answers errJoinToken whatever the reason.
var (
	ErrTokenUnknown  = errors.New("unknown join token")
	ErrTokenExpired  = errors.New("join token expired")
	ErrTokenUsedUp   = errors.New("join token used up")
	ErrTokenWrongFor = errors.New("join token is for another node name")
)

// errJoinToken is the one answer to a join whose token is not good, so that a
// caller learns nothing about which tokens exist.
const errJoinToken = "invalid join token: unknown, wrong secret, expired, revoked, used up or for another node name; " +
	"create a new one with `flotilla token create`"

type tokenStore struct{ kv jetstream.KeyValue }

func openTokens(ctx context.Context, js jetstream.JetStream) (*tokenStore, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: TokensBucket, History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		return nil, fmt.Errorf("open KV %s: %w", TokensBucket, err)
	}
	return &tokenStore{kv: kv}, nil
}

// create makes a token "<id>.<secret>"; only the secret's hash is stored.
func (s *tokenStore) create(ctx context.Context, req protocol.TokenCreate) (protocol.TokenInfo, error) {
	if req.TTL <= 0 {
		return protocol.TokenInfo{}, fmt.Errorf("token TTL %s: want a positive duration such as 24h", req.TTL)
	}
	if req.Uses < 0 {
		return protocol.TokenInfo{}, fmt.Errorf("token uses %d: want 0 (any number within the TTL) or more", req.Uses)
	}
	if req.For != "" {
		if err := protocol.ValidateNodeName(req.For); err != nil {
			return protocol.TokenInfo{}, fmt.Errorf("the token's node name: %w", err)
		}
	}
	if err := protocol.ValidateLabels("token labels", req.Labels); err != nil {
		return protocol.TokenInfo{}, err
	}
	if err := freeTextOK("--description", req.Description, 256); err != nil {
		return protocol.TokenInfo{}, err
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
	rec := tokenRecord{ID: id, SecretHash: hashSecret(secret), Description: req.Description, Created: now, Expires: now.Add(req.TTL),
		MaxUses: req.Uses, For: req.For, Labels: req.Labels}
	data, _ := json.Marshal(rec)
	if _, err := s.kv.Create(ctx, id, data); err != nil {
		return protocol.TokenInfo{}, fmt.Errorf("store token: %w", err)
	}
	ti := rec.info()
	ti.Token = id + "." + secret
	return ti, nil
}

func (r *tokenRecord) info() protocol.TokenInfo {
	return protocol.TokenInfo{ID: r.ID, Description: r.Description, Created: r.Created, Expires: r.Expires, Uses: r.Uses,
		MaxUses: r.MaxUses, For: r.For, Labels: r.Labels}
}

func freeTextOK(field, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%s: %d bytes, at most %d", field, len(s), max)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s: control character %q not allowed", field, r)
		}
	}
	return nil
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

// check tells whether token may join node now, without counting a use. The
// error says why not, for the controller's log only (see errJoinToken).
func (s *tokenStore) check(ctx context.Context, token, node string) (*tokenRecord, uint64, error) {
	id, secret, ok := strings.Cut(strings.TrimSpace(token), ".")
	if !ok || len(id) != 8 || !isHex(id) {
		return nil, 0, fmt.Errorf("%w: not a flotilla token (want <id>.<secret>)", ErrTokenUnknown)
	}
	rec, rev, err := s.get(ctx, id)
	if errors.Is(err, ErrTokenUnknown) {
		// Hash anyway, so that an unknown id takes as long as a wrong secret.
		_ = subtle.ConstantTimeCompare(hashSecret(secret), make([]byte, 32))
		return nil, 0, fmt.Errorf("%w %s (revoked or never created)", ErrTokenUnknown, id)
	}
	if err != nil {
		return nil, 0, err
	}
	if subtle.ConstantTimeCompare(hashSecret(secret), rec.SecretHash) != 1 {
		return nil, 0, fmt.Errorf("%w %s: wrong secret", ErrTokenUnknown, id)
	}
	if !time.Now().Before(rec.Expires) {
		return nil, 0, fmt.Errorf("%w: token %s expired at %s", ErrTokenExpired, id, rec.Expires.Format(time.RFC3339))
	}
	if rec.MaxUses > 0 && rec.Uses >= rec.MaxUses {
		return nil, 0, fmt.Errorf("%w: token %s was used %d of %d times", ErrTokenUsedUp, id, rec.Uses, rec.MaxUses)
	}
	if rec.For != "" && rec.For != node {
		return nil, 0, fmt.Errorf("%w: token %s is for %q", ErrTokenWrongFor, id, rec.For)
	}
	return rec, rev, nil
}

// use checks token for node and counts the use; with --uses, concurrent joins
// never get more uses than allowed (compare-and-set on the record's revision).
func (s *tokenStore) use(ctx context.Context, token, node string) (*tokenRecord, error) {
	for range 8 {
		rec, rev, err := s.check(ctx, token, node)
		if err != nil {
			return nil, err
		}
		rec.Uses++
		data, _ := json.Marshal(rec)
		_, err = s.kv.Update(ctx, rec.ID, data, rev)
		if err == nil {
			return rec, nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("count a use of token %s: %w", rec.ID, err)
		}
		// Another join (or a revoke) changed the record: read it again.
	}
	return nil, errors.New("join token: too many concurrent uses, retry")
}

// giveBack returns a use that use counted for a join that then failed, with
// the same compare-and-set: it never overwrites a concurrent join's count or
// brings back a revoked token.
func (s *tokenStore) giveBack(ctx context.Context, id string) error {
	for range 8 {
		rec, rev, err := s.get(ctx, id)
		if errors.Is(err, ErrTokenUnknown) {
			return nil // revoked meanwhile: nothing to give back
		}
		if err != nil {
			return err
		}
		if rec.Uses == 0 {
			return nil
		}
		rec.Uses--
		data, _ := json.Marshal(rec)
		_, err = s.kv.Update(ctx, id, data, rev)
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("give back a use of token %s: %w", id, err)
		}
	}
	return fmt.Errorf("give back a use of token %s: the record kept changing under concurrent joins", id)
}

func (s *tokenStore) list(ctx context.Context) ([]protocol.TokenInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*kvkeys.Try)
	defer cancel()
	ids, err := kvkeys.List(ctx, s.kv)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	var out []protocol.TokenInfo
	for _, id := range ids {
		rec, _, err := s.get(ctx, id)
		if err != nil {
			continue
		}
		out = append(out, rec.info())
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

// take returns the next sequence number; callers serialise (Controller.seqMu).
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
