package natsauth

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// MaxRevocations bounds the revoked user keys kept at once: the list travels
// inside flotilla's account JWT, which every server takes as one NATS message
// (about 100 bytes a key once encoded: 4096 keys are ~400 KiB, under the
// default 1 MiB max_payload). Entries leave the list once every JWT of their
// key has expired, so the bound is on revocations within one user lifetime.
const MaxRevocations = 4096

// ErrTooManyRevocations: the list is full of keys whose JWTs have not expired yet.
var ErrTooManyRevocations = errors.New("too many NATS users revoked within one user JWT lifetime")

// Revoked is one revoked user key.
type Revoked struct {
	// At: every JWT of the key issued at or before it (unix seconds) is refused.
	At int64 `json:"at"`
	// Until: every JWT of the key issued up to At has expired by then, so the
	// entry can be dropped (unix seconds).
	Until int64 `json:"until"`
}

// Revocations are revoked user keys by public key; the controller keeps them
// in JetStream KV and pushes them in flotilla's account JWT.
type Revocations map[string]Revoked

// Add revokes key; an entry that exists keeps the later of its times.
// It fails when the list holds MaxRevocations unexpired keys already.
func (r Revocations) Add(key string, at, until time.Time) error {
	if !nkeys.IsValidPublicUserKey(key) {
		return fmt.Errorf("revoke %q: not a user public key", key)
	}
	old, exists := r[key]
	if !exists && len(r) >= MaxRevocations {
		return fmt.Errorf("revoke %s: %w (%d, at most %d): the oldest leave once their JWTs have expired; "+
			"lower --nats-user-ttl if nodes come and go this fast", key, ErrTooManyRevocations, len(r), MaxRevocations)
	}
	e := Revoked{At: max(old.At, at.Unix()), Until: max(old.Until, until.Unix())}
	r[key] = e
	return nil
}

// Prune drops the entries whose JWTs have all expired by now and returns how many.
func (r Revocations) Prune(now time.Time) int {
	n := 0
	for k, e := range r {
		if e.Until < now.Unix() {
			delete(r, k)
			n++
		}
	}
	return n
}

// Has reports whether key is revoked.
func (r Revocations) Has(key string) bool {
	_, ok := r[key]
	return ok
}

// List is the account JWT's revocation list.
func (r Revocations) List() jwt.RevocationList {
	l := jwt.RevocationList{}
	for k, e := range r {
		l[k] = e.At
	}
	return l
}

// SysUserPermissions are the subjects of the controller's system account
// user: it publishes flotilla's account JWT to the servers and reads their
// answers, their start announcements (a restarted server forgot every pushed
// JWT) and the logins in flotilla's account (a revoked key that logs in
// somewhere is pushed again at once). Nothing else of the system account.
func SysUserPermissions(account string) (pub, sub []string) {
	return []string{claimsUpdateSubject(account)},
		[]string{"_INBOX.>", "$SYS.SERVER.*.STATSZ", connectEventSubject(account)}
}

// LeafSysPermissions are those of a site leaf node's system account remote,
// as the hub sees it: the hub passes it flotilla's account JWT pushes, and
// takes from it the site server's answers, start announcements and logins in
// flotilla's account (what the controller's system user reads). A site
// cannot send any other system request into the hub.
func LeafSysPermissions(account string) (pub, sub []string) {
	return []string{"_INBOX.>", "$SYS.SERVER.*.STATSZ", connectEventSubject(account)},
		[]string{claimsUpdateSubject(account)}
}

func claimsUpdateSubject(account string) string {
	return "$SYS.REQ.ACCOUNT." + account + ".CLAIMS.UPDATE"
}

func connectEventSubject(account string) string { return "$SYS.ACCOUNT." + account + ".CONNECT" }

// RevokerConfig is what a Revoker needs: the operator signing key (seed
// file), flotilla's account JWT as the servers were given it (its claims are
// kept, only the revocation list changes) and the system account user.
type RevokerConfig struct {
	OperatorKeyFile, AccountJWTFile, SysCredsFile string
	// Account is flotilla's account (the Issuer's): the JWT must be its.
	Account string
	URLs    []string
	TLS     *tls.Config // for tls:// URLs; nil: system roots
	Logger  *slog.Logger
	// OnServerStart is called when a server announces itself that was not
	// seen before (a new or restarted server: it has only its preloaded
	// account JWT) and after the system connection reconnects.
	OnServerStart func(server string)
	// OnLogin is called with the user key of every login in the account.
	OnLogin func(userKey, server string)
}

// FileError says which of the revoker's files (RevokerConfig) is wrong:
// "OperatorKey", "AccountJWT" or "SysCreds".
type FileError struct {
	Which string
	Err   error
}

func (e *FileError) Error() string { return e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// Revoker pushes flotilla's account JWT, re-signed with a revocation list, to
// every server of the cluster over a system account connection.
type Revoker struct {
	cfg    RevokerConfig
	signer nkeys.KeyPair
	base   string // the account JWT of AccountJWTFile
	nc     *nats.Conn

	mu      sync.Mutex
	servers map[string]time.Time // server id -> last announcement
}

// OpenRevoker checks the files of cfg and connects as the system user.
func OpenRevoker(cfg RevokerConfig) (*Revoker, error) {
	opErr := func(format string, a ...any) error {
		return &FileError{Which: "OperatorKey", Err: fmt.Errorf(format, a...)}
	}
	accErr := func(format string, a ...any) error {
		return &FileError{Which: "AccountJWT", Err: fmt.Errorf(format, a...)}
	}
	sysErr := func(format string, a ...any) error {
		return &FileError{Which: "SysCreds", Err: fmt.Errorf(format, a...)}
	}
	seed, err := os.ReadFile(cfg.OperatorKeyFile)
	if err != nil {
		return nil, opErr("operator signing key: %w", err)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
	if err != nil {
		return nil, opErr("operator signing key %s: %w", cfg.OperatorKeyFile, err)
	}
	if pub, _ := kp.PublicKey(); !nkeys.IsValidPublicOperatorKey(pub) {
		return nil, opErr("operator signing key %s: not an operator key (its seed starts with SO)", cfg.OperatorKeyFile)
	}
	base, err := os.ReadFile(cfg.AccountJWTFile)
	if err != nil {
		return nil, accErr("account JWT: %w", err)
	}
	ac, err := jwt.DecodeAccountClaims(strings.TrimSpace(string(base)))
	if err != nil {
		return nil, accErr("account JWT %s: %w", cfg.AccountJWTFile, err)
	}
	if ac.Subject != cfg.Account {
		return nil, accErr("account JWT %s is of account %s, but the controller issues users in %s: give flotilla's account JWT", cfg.AccountJWTFile, ac.Subject, cfg.Account)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Revoker{cfg: cfg, signer: kp, base: strings.TrimSpace(string(base)), servers: map[string]time.Time{}}
	opts := []nats.Option{nats.UserCredentials(cfg.SysCredsFile), nats.Name("flotilla-controller-sys"), nats.MaxReconnects(-1),
		nats.Timeout(5 * time.Second), nats.IgnoreAuthErrorAbort(),
		nats.ReconnectHandler(func(*nats.Conn) { r.serverStarted("(reconnected)") }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			cfg.Logger.Warn("NATS system account connection", "err", err)
		})}
	if cfg.TLS != nil {
		opts = append(opts, nats.Secure(cfg.TLS))
	}
	nc, err := nats.Connect(strings.Join(cfg.URLs, ","), opts...)
	if err != nil {
		return nil, sysErr("connect to NATS as the system account user of %s: %w", cfg.SysCredsFile, err)
	}
	r.nc = nc
	if _, err := nc.Subscribe("$SYS.SERVER.*.STATSZ", r.onStatsz); err != nil {
		nc.Close()
		return nil, sysErr("subscribe to server announcements: %w", err)
	}
	if _, err := nc.Subscribe(connectEventSubject(cfg.Account), r.onConnect); err != nil {
		nc.Close()
		return nil, sysErr("subscribe to logins: %w", err)
	}
	if err := nc.Flush(); err != nil {
		nc.Close()
		return nil, sysErr("system account user %s: %w (may it subscribe to $SYS.SERVER.*.STATSZ and the account's CONNECT events? see natsauth.SysUserPermissions)", cfg.SysCredsFile, err)
	}
	return r, nil
}

// Close ends the system connection.
func (r *Revoker) Close() { r.nc.Close() }

// maxServers bounds the servers remembered (ids change at every restart);
// the oldest announcement goes first.
const maxServers = 1024

func (r *Revoker) onStatsz(m *nats.Msg) {
	var msg struct {
		Server struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"server"`
	}
	if json.Unmarshal(m.Data, &msg) != nil || msg.Server.ID == "" {
		return
	}
	r.mu.Lock()
	_, known := r.servers[msg.Server.ID]
	if !known && len(r.servers) >= maxServers {
		oldest, at := "", time.Time{}
		for id, t := range r.servers {
			if oldest == "" || t.Before(at) {
				oldest, at = id, t
			}
		}
		delete(r.servers, oldest)
	}
	r.servers[msg.Server.ID] = time.Now()
	r.mu.Unlock()
	if !known {
		r.serverStarted(msg.Server.Name)
	}
}

// serverSeenFor is how long a server counts as up after its last
// announcement (servers announce themselves every 10 s or more often).
const serverSeenFor = time.Minute

// liveServers counts the servers that announced themselves lately: a push
// waits for that many answers (or pushWait).
func (r *Revoker) liveServers(now time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, t := range r.servers {
		if now.Sub(t) < serverSeenFor {
			n++
		}
	}
	return n
}

func (r *Revoker) serverStarted(name string) {
	if r.cfg.OnServerStart != nil {
		r.cfg.OnServerStart(name)
	}
}

func (r *Revoker) onConnect(m *nats.Msg) {
	var ev struct {
		Server struct {
			Name string `json:"name"`
		} `json:"server"`
		Client struct {
			JWT string `json:"jwt"`
		} `json:"client"`
	}
	if json.Unmarshal(m.Data, &ev) != nil || ev.Client.JWT == "" || r.cfg.OnLogin == nil {
		return
	}
	uc, err := jwt.DecodeUserClaims(ev.Client.JWT)
	if err != nil {
		return
	}
	r.cfg.OnLogin(uc.Subject, ev.Server.Name)
}

// AccountJWT is flotilla's account JWT with revoked as its revocation list,
// signed by the operator signing key.
func (r *Revoker) AccountJWT(revoked Revocations) (string, error) {
	ac, err := jwt.DecodeAccountClaims(r.base)
	if err != nil {
		return "", fmt.Errorf("account JWT %s: %w", r.cfg.AccountJWTFile, err)
	}
	ac.Revocations = nil
	if len(revoked) > 0 {
		ac.Revocations = revoked.List()
	}
	tok, err := ac.Encode(r.signer)
	if err != nil {
		return "", fmt.Errorf("sign the account JWT with the operator signing key: %w", err)
	}
	return tok, nil
}

// PushResult is what the servers answered to a push.
type PushResult struct {
	Applied []string // servers that took the JWT (or had it already)
	Skipped []string // servers that have no client of the account (they load the preloaded JWT at the first login)
	Failed  []string // "server: reason"
}

func (p PushResult) String() string {
	return fmt.Sprintf("applied on %d server(s) %v, skipped on %v, failed on %v", len(p.Applied), p.Applied, p.Skipped, p.Failed)
}

// Pending is a published account JWT whose answers are still coming.
type Pending struct {
	r    *Revoker
	sub  *nats.Subscription
	want int
}

// Publish sends accountJWT to every server (in the order of the calls);
// Wait collects their answers.
func (r *Revoker) Publish(ctx context.Context, accountJWT string) (*Pending, error) {
	inbox := r.nc.NewRespInbox()
	sub, err := r.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("push the account JWT: %w", err)
	}
	if err := r.nc.PublishRequest(claimsUpdateSubject(r.cfg.Account), inbox, []byte(accountJWT)); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("push the account JWT: %w", err)
	}
	if err := r.nc.FlushWithContext(ctx); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("push the account JWT: %w", err)
	}
	return &Pending{r: r, sub: sub, want: max(len(r.nc.Servers()), r.liveServers(time.Now()))}, nil
}

// Wait collects the servers' answers for up to wait (less once as many
// servers answered as announced themselves lately).
func (p *Pending) Wait(ctx context.Context, wait time.Duration) (PushResult, error) {
	var res PushResult
	defer func() { _ = p.sub.Unsubscribe() }()
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for len(res.Applied)+len(res.Skipped)+len(res.Failed) < p.want {
		m, err := p.sub.NextMsgWithContext(ctx)
		if err != nil {
			break
		}
		var a struct {
			Server struct {
				Name string `json:"name"`
			} `json:"server"`
			Data *struct {
				Message string `json:"message"`
			} `json:"data"`
			Error *struct {
				Description string `json:"description"`
			} `json:"error"`
		}
		if json.Unmarshal(m.Data, &a) != nil {
			continue
		}
		switch {
		case a.Error != nil:
			res.Failed = append(res.Failed, a.Server.Name+": "+a.Error.Description)
		case a.Data != nil && strings.Contains(a.Data.Message, "skipped"):
			res.Skipped = append(res.Skipped, a.Server.Name)
		default:
			res.Applied = append(res.Applied, a.Server.Name)
		}
	}
	sort.Strings(res.Applied)
	if len(res.Applied) == 0 && len(res.Skipped) == 0 {
		if len(res.Failed) > 0 {
			return res, fmt.Errorf("no server took the account JWT: %s (is the operator signing key %s in the operator JWT's signing keys?)",
				strings.Join(res.Failed, "; "), p.r.cfg.OperatorKeyFile)
		}
		return res, fmt.Errorf("no server answered the account JWT push within %s (may the system user of %s publish on %s?)",
			wait, p.r.cfg.SysCredsFile, claimsUpdateSubject(p.r.cfg.Account))
	}
	return res, nil
}
