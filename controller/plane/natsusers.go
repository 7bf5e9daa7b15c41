package plane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/controller/natsauth"
	"github.com/flotilla-dev/flotilla/internal/atomicfile"
	"github.com/flotilla-dev/flotilla/internal/kvkeys"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// On an existing NATS cluster (Options.NATSURLs) the controller cannot close
// a node's connections or change its password as the embedded server does:
// every node user is a JWT that the cluster's servers check by themselves.
// So node JWTs expire (Options.NATSUserTTL) and the agent renews its own over
// HTTPS (natsrenew.go), and a removed or re-joined node's user key is revoked
// in flotilla's account JWT, which the controller re-signs and pushes to every
// server (natsauth.Revoker): servers close the key's connections at once and
// refuse its logins. The revocations live in JetStream KV, because a server
// that restarts has only its preloaded account JWT again: the controller
// pushes at start, when a server announces itself, when a revoked key logs
// in anywhere, and every pushEvery.

// NATSAuthBucket keeps each node's current NATS user key (key
// "node.<NodeToken>") and the revoked user keys (key "revoked").
const NATSAuthBucket = "flotilla_natsauth"

// Lifetimes of the user JWTs the controller issues.
const (
	// DefaultNATSUserTTL: a stolen node JWT works at most an hour after the
	// node's removal where revocation cannot reach (no operator signing key
	// given, a server cut off from the controller); renewing costs each node
	// one HTTPS request per half hour (10,000 nodes: ~6 a second); and an
	// agent whose controller is down for less than half an hour never
	// notices. Removal with revocation configured does not wait for it.
	DefaultNATSUserTTL = time.Hour
	// DefaultNATSAdminTTL: admin.creds is the admin's key (like the embedded
	// server's admin password) and the controller renews it in its data dir;
	// a copy elsewhere must be refreshed within a week.
	DefaultNATSAdminTTL = 7 * 24 * time.Hour
	MinNATSUserTTL      = 5 * time.Second
	MaxNATSUserTTL      = 7 * 24 * time.Hour
	MaxNATSAdminTTL     = 90 * 24 * time.Hour
)

const (
	revokedKey = "revoked"
	// pushEvery re-sends the account JWT to every server, a backstop for a
	// restart the controller did not see.
	pushEvery = time.Minute
	// pushWait is how long a push waits for the servers' answers.
	pushWait = 2 * time.Second
	// revokeMargin extends a revocation to JWTs of the key issued shortly
	// after it: a renewal in flight on another controller of an HA group.
	revokeMargin = time.Minute
)

// nodeUser is a node's current NATS user.
type nodeUser struct {
	Key string `json:"key"`
	// TTL is the longest lifetime of a JWT issued for Key: a revocation of
	// Key can be dropped that long after it.
	TTL time.Duration `json:"ttl"`
}

func nodeUserKey(node string) string { return "node." + protocol.NodeToken(node) }

// natsUsers issues, renews and revokes the NATS users of an existing cluster.
type natsUsers struct {
	c        *Controller
	log      *slog.Logger
	kv       jetstream.KeyValue
	issuer   *natsauth.Issuer
	revoker  *natsauth.Revoker // nil: revocation is not configured
	ttl      time.Duration
	adminTTL time.Duration
	nonces   *nonceMinter
	limit    *nodeLimiter // renewals over NATS, per node

	mu       sync.Mutex // one read-modify-write of the bucket at a time in this process
	pushMu   sync.Mutex // signs and publishes one push at a time, in order
	lastJWT  string     // the account JWT last signed, for lastList
	lastList jwt.RevocationList
	kick     chan struct{}
	cacheMu  sync.RWMutex
	revoked  natsauth.Revocations // as last read or written
	// loginWarned: a revoked login is logged at most every loginWarnEvery.
	loginWarned time.Time
}

// loginWarnEvery bounds the warnings about revoked logins (a thief may retry fast).
const loginWarnEvery = 10 * time.Second

// nodeSpec is a node's user: exactly the embedded server's permissions.
func (u *natsUsers) nodeSpec(node string, ttl time.Duration) natsauth.UserSpec {
	pub, sub := protocol.AgentPermissions(node)
	return natsauth.UserSpec{Name: AgentUser(node), Pub: pub, Sub: sub, Respond: true, TTL: ttl}
}

func adminSpec(ttl time.Duration) natsauth.UserSpec {
	return natsauth.UserSpec{Name: UserAdmin, Pub: []string{protocol.AllAdmin}, Sub: []string{"_INBOX.>"}, TTL: ttl}
}

// checkNATSUsers checks the user lifetimes and the revocation files (all or none).
func checkNATSUsers(o *Options) error {
	if o.NATSUserTTL == 0 {
		o.NATSUserTTL = DefaultNATSUserTTL
	}
	if o.NATSAdminTTL == 0 {
		o.NATSAdminTTL = DefaultNATSAdminTTL
	}
	if o.NATSUserTTL < MinNATSUserTTL || o.NATSUserTTL > MaxNATSUserTTL {
		return &OptionError{Option: "NATSUserTTL", Err: fmt.Errorf("node user JWT lifetime %s: want %s to %s", o.NATSUserTTL, MinNATSUserTTL, MaxNATSUserTTL)}
	}
	if o.NATSAdminTTL < MinNATSUserTTL || o.NATSAdminTTL > MaxNATSAdminTTL {
		return &OptionError{Option: "NATSAdminTTL", Err: fmt.Errorf("admin user JWT lifetime %s: want %s to %s", o.NATSAdminTTL, MinNATSUserTTL, MaxNATSAdminTTL)}
	}
	given := map[string]bool{"NATSOperatorKey": o.NATSOperatorKey != "", "NATSAccountJWT": o.NATSAccountJWT != "", "NATSSysCreds": o.NATSSysCreds != ""}
	n := 0
	for _, ok := range given {
		if ok {
			n++
		}
	}
	if n == 0 || n == len(given) {
		return nil
	}
	for _, opt := range []string{"NATSOperatorKey", "NATSAccountJWT", "NATSSysCreds"} {
		if !given[opt] {
			return &OptionError{Option: opt, Err: errors.New("revoking NATS users needs the operator signing key, flotilla's account JWT and the system account user together (`flotilla nats-auth init` writes all three)")}
		}
	}
	return nil
}

// openRevoker connects the revocation side when its three files are given.
func (c *Controller) openRevoker() (*natsauth.Revoker, error) {
	o := c.opts
	if o.NATSOperatorKey == "" && o.NATSAccountJWT == "" && o.NATSSysCreds == "" {
		return nil, nil
	}
	r, err := natsauth.OpenRevoker(natsauth.RevokerConfig{
		OperatorKeyFile: o.NATSOperatorKey, AccountJWTFile: o.NATSAccountJWT, SysCredsFile: o.NATSSysCreds,
		Account: c.issuer.Account(), URLs: o.NATSURLs, TLS: c.natsTLS, Logger: c.log,
		OnServerStart: func(server string) {
			c.log.Info("NATS server (re)started or system connection reconnected: pushing the revocations", "server", server)
			c.nu.kickPush()
		},
		OnLogin: func(key, server string) { c.nu.onLogin(key, server) },
	})
	var fe *natsauth.FileError
	if errors.As(err, &fe) {
		return nil, &OptionError{Option: "NATS" + fe.Which, Err: err}
	}
	return r, err
}

// openNATSUsers opens the bucket and starts pushing revocations.
func (c *Controller) openNATSUsers(ctx context.Context) error {
	kv, err := c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: NATSAuthBucket, History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		return fmt.Errorf("open KV %s: %w", NATSAuthBucket, err)
	}
	u := c.nu
	u.kv = kv
	revs, _, err := u.load(ctx)
	if err != nil {
		return err
	}
	u.setCache(revs)
	if err := c.subscribeNATSRenewal(); err != nil {
		return err
	}
	if u.revoker == nil {
		c.log.Warn("NATS user revocation is off (no --nats-operator-key, --nats-account-jwt and --nats-sys-creds): "+
			"a removed or re-joined node's previous NATS user keeps working until its JWT expires", "userTTL", u.ttl)
	}
	// A node removed while its revocation failed, or by an older controller.
	if err := u.reconcile(ctx); err != nil {
		c.log.Warn("revoke the NATS users of nodes no longer in the inventory", "err", err)
	}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); c.renewAdmin() }()
	if u.revoker != nil {
		u.push(ctx, "")
		c.wg.Add(2)
		go func() { defer c.wg.Done(); u.pushLoop() }()
		go func() { defer c.wg.Done(); u.watchRevoked() }()
	}
	return nil
}

func newNATSUsers(c *Controller) *natsUsers {
	return &natsUsers{c: c, log: c.log, issuer: c.issuer, ttl: c.opts.NATSUserTTL, adminTTL: c.opts.NATSAdminTTL,
		nonces: newNonceMinter(), limit: newNodeLimiter(), kick: make(chan struct{}, 1), revoked: natsauth.Revocations{}}
}

// issueNode makes a new user key for node (at its join or re-join) and
// revokes the one it had: whoever kept a copy of the old credentials loses
// them now, as with the embedded server's new password.
func (u *natsUsers) issueNode(ctx context.Context, node string) (token, seed, userKey string, err error) {
	if token, seed, userKey, err = u.issuer.NewUser(u.nodeSpec(node, u.ttl)); err != nil {
		return "", "", "", fmt.Errorf("node %s: NATS user: %w", node, err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	old, err := u.revokeLocked(ctx, node, userKey)
	if err != nil {
		return "", "", "", err
	}
	data, _ := json.Marshal(nodeUser{Key: userKey, TTL: u.ttl})
	if _, err := u.kv.Put(ctx, nodeUserKey(node), data); err != nil {
		return "", "", "", fmt.Errorf("node %s: store its NATS user: %w", node, err)
	}
	if old != "" {
		u.push(ctx, "re-join of "+node)
	}
	return token, seed, userKey, nil
}

// revokeNode revokes node's NATS user (`nodes remove`, the infrastructure
// driver's scale-down) and returns once the servers took the revocation (or
// a push failed: then the pushes that follow retry it, and it is logged).
func (u *natsUsers) revokeNode(ctx context.Context, node string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	old, err := u.revokeLocked(ctx, node, "")
	if err != nil {
		return err
	}
	if err := u.kv.Purge(ctx, nodeUserKey(node)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("node %s: forget its NATS user: %w", node, err)
	}
	if old != "" {
		u.push(ctx, "removal of "+node)
	}
	return nil
}

// revokeLocked adds node's current user key (unless it is keep) to the
// revocations and returns it ("" when the node had none).
func (u *natsUsers) revokeLocked(ctx context.Context, node, keep string) (string, error) {
	cur, ok, err := u.nodeUser(ctx, node)
	if err != nil || !ok || cur.Key == keep {
		return "", err
	}
	now := time.Now()
	at := now.Add(revokeMargin)
	ttl := max(cur.TTL, u.ttl)
	if _, err := u.update(ctx, func(r natsauth.Revocations) error { return r.Add(cur.Key, at, at.Add(ttl)) }); err != nil {
		return "", fmt.Errorf("node %s: revoke its NATS user %s: %w", node, cur.Key, err)
	}
	if u.revoker == nil {
		u.log.Warn("node's previous NATS user stays valid until its JWT expires: revocation is off (see --nats-operator-key)",
			"node", node, "natsUser", cur.Key, "until", now.Add(ttl).Round(time.Second))
	} else {
		u.log.Info("revoked the node's previous NATS user", "node", node, "natsUser", cur.Key)
	}
	return cur.Key, nil
}

func (u *natsUsers) nodeUser(ctx context.Context, node string) (nodeUser, bool, error) {
	e, err := u.kv.Get(ctx, nodeUserKey(node))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nodeUser{}, false, nil
	}
	if err != nil {
		return nodeUser{}, false, fmt.Errorf("node %s: read its NATS user: %w", node, err)
	}
	var nu nodeUser
	if err := json.Unmarshal(e.Value(), &nu); err != nil {
		return nodeUser{}, false, fmt.Errorf("node %s: NATS user record: %w", node, err)
	}
	return nu, true, nil
}

// renewNode issues a new JWT for node's current user key.
func (u *natsUsers) renewNode(ctx context.Context, node, userKey string) (string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.c.inv.get(node); !ok {
		return "", fmt.Errorf("node %s: %w", node, errNotCurrentUser)
	}
	cur, ok, err := u.nodeUser(ctx, node)
	if err != nil {
		return "", err
	}
	if !ok || cur.Key != userKey || u.isRevoked(userKey) {
		return "", fmt.Errorf("node %s user %s: %w", node, userKey, errNotCurrentUser)
	}
	if u.ttl > cur.TTL {
		cur.TTL = u.ttl
		data, _ := json.Marshal(cur)
		if _, err := u.kv.Put(ctx, nodeUserKey(node), data); err != nil {
			return "", fmt.Errorf("node %s: store its NATS user: %w", node, err)
		}
	}
	return u.issuer.SignUser(userKey, u.nodeSpec(node, u.ttl))
}

var errNotCurrentUser = errors.New("not the node's current NATS user: the node was removed or joined again since")

// reconcile revokes the users of nodes that are not in the inventory.
func (u *natsUsers) reconcile(ctx context.Context) error {
	keys, err := kvkeys.List(ctx, u.kv)
	if err != nil {
		return err
	}
	var gone []string
	have := map[string]bool{}
	for _, k := range keys {
		if !strings.HasPrefix(k, "node.") {
			continue
		}
		node := strings.ReplaceAll(strings.TrimPrefix(k, "node."), "~", ".")
		have[node] = true
		if _, ok := u.c.inv.get(node); !ok {
			gone = append(gone, node)
		}
	}
	// Nodes that joined before user JWTs expired: their user never expires
	// and its key is nowhere on record, so their removal cannot revoke it.
	for _, n := range u.c.inv.list() {
		if !have[n.Name] {
			u.log.Warn("node's NATS user was issued by an older controller: it never expires and its removal cannot revoke it; "+
				"re-join the node to give it an expiring, revocable user", "node", n.Name, "how", "flotilla token create --for "+n.Name)
		}
	}
	for _, node := range gone {
		if err := u.revokeNode(ctx, node); err != nil {
			return err
		}
	}
	return nil
}

// load reads the revocations and their KV revision (0: none stored yet).
func (u *natsUsers) load(ctx context.Context) (natsauth.Revocations, uint64, error) {
	revs := natsauth.Revocations{}
	e, err := u.kv.Get(ctx, revokedKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return revs, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read the NATS user revocations: %w", err)
	}
	if err := json.Unmarshal(e.Value(), &revs); err != nil {
		return nil, 0, fmt.Errorf("NATS user revocations in %s/%s: %w", NATSAuthBucket, revokedKey, err)
	}
	return revs, e.Revision(), nil
}

// update applies fn to the stored revocations (pruned of expired ones) and
// stores them, compare-and-set against other controllers.
func (u *natsUsers) update(ctx context.Context, fn func(natsauth.Revocations) error) (natsauth.Revocations, error) {
	for range 20 {
		revs, rev, err := u.load(ctx)
		if err != nil {
			return nil, err
		}
		revs.Prune(time.Now())
		if err := fn(revs); err != nil {
			return nil, err
		}
		data, err := json.Marshal(revs)
		if err != nil {
			return nil, err
		}
		if rev == 0 {
			_, err = u.kv.Create(ctx, revokedKey, data)
		} else {
			_, err = u.kv.Update(ctx, revokedKey, data, rev)
		}
		if err == nil {
			u.setCache(revs)
			return revs, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return nil, fmt.Errorf("store the NATS user revocations: %w", err)
		}
	}
	return nil, errors.New("store the NATS user revocations: other controllers kept changing them; retry")
}

func (u *natsUsers) setCache(r natsauth.Revocations) {
	u.cacheMu.Lock()
	u.revoked = r
	u.cacheMu.Unlock()
}

func (u *natsUsers) isRevoked(key string) bool {
	u.cacheMu.RLock()
	defer u.cacheMu.RUnlock()
	return u.revoked.Has(key)
}

func (u *natsUsers) kickPush() {
	select {
	case u.kick <- struct{}{}:
	default:
	}
}

// onLogin: a revoked key logged in, so a server has an account JWT without
// the revocations (it restarted, or missed a push): push them again at once.
func (u *natsUsers) onLogin(key, server string) {
	if !u.isRevoked(key) {
		return
	}
	u.cacheMu.Lock()
	warn := time.Since(u.loginWarned) >= loginWarnEvery
	if warn {
		u.loginWarned = time.Now()
	}
	u.cacheMu.Unlock()
	if warn {
		u.log.Warn("a revoked NATS user logged in (the server restarted or missed a push): pushing the revocations again", "natsUser", key, "server", server)
	}
	u.kickPush()
}

// pushGap is the least time between two pushes of the loop: a thief
// logging in again and again with a revoked key does not make the servers
// re-read the account JWT more often than that.
const pushGap = 200 * time.Millisecond

func (u *natsUsers) pushLoop() {
	tick := time.NewTicker(pushEvery)
	defer tick.Stop()
	for {
		select {
		case <-u.c.ctx.Done():
			return
		case <-tick.C:
			// A watch update lost (a reconnect): read the list again.
			ctx, cancel := context.WithTimeout(u.c.ctx, 5*time.Second)
			if revs, _, err := u.load(ctx); err == nil {
				u.setCache(revs)
			}
			cancel()
		case <-u.kick:
		}
		// The answers are collected beside the loop (at most
		// pushWait/pushGap pushes wait at once), so that a push waiting for
		// a server that went away never delays the next one.
		if wait := u.publish(u.c.ctx, ""); wait != nil {
			u.c.wg.Add(1)
			go func() { defer u.c.wg.Done(); wait() }()
		}
		select {
		case <-u.c.ctx.Done():
			return
		case <-time.After(pushGap):
		}
	}
}

// watchRevoked pushes when another controller changed the revocations.
func (u *natsUsers) watchRevoked() {
	w, err := u.kv.Watch(u.c.ctx, revokedKey, jetstream.UpdatesOnly())
	if err != nil {
		u.log.Warn("watch the NATS user revocations (other controllers' revocations are pushed every minute only)", "err", err)
		return
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-u.c.ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue
			}
			var revs natsauth.Revocations
			if json.Unmarshal(e.Value(), &revs) == nil {
				u.setCache(revs)
			}
			u.kickPush()
		}
	}
}

// push pushes the revocations as this controller knows them (its own
// writes and, through watchRevoked, the other controllers') and waits for
// the answers. It reads no KV: a push is most needed when a server
// restarted, when JetStream may be electing leaders and answer nothing for
// seconds.
func (u *natsUsers) push(ctx context.Context, why string) {
	if wait := u.publish(ctx, why); wait != nil {
		wait()
	}
}

// cached is a copy of the known revocations, pruned.
func (u *natsUsers) cached() natsauth.Revocations {
	u.cacheMu.RLock()
	revs := maps.Clone(u.revoked)
	u.cacheMu.RUnlock()
	if revs == nil {
		revs = natsauth.Revocations{}
	}
	revs.Prune(time.Now())
	return revs
}

// publish signs the account JWT with the known revocations (again only when
// they changed: servers skip a JWT they have) and publishes it; the function
// it returns collects and logs the answers (nil: nothing was published).
func (u *natsUsers) publish(ctx context.Context, why string) func() {
	if u.revoker == nil {
		return nil
	}
	revs := u.cached()
	u.pushMu.Lock()
	tok, err := u.signedLocked(revs)
	if err != nil {
		u.pushMu.Unlock()
		u.log.Error("sign flotilla's account JWT: revocations cannot be pushed", "err", err)
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	p, err := u.revoker.Publish(pctx, tok)
	cancel()
	u.pushMu.Unlock()
	if err != nil {
		u.log.Error("push the NATS user revocations: retried every minute and at each server start", "err", err, "revoked", len(revs))
		return nil
	}
	return func() {
		res, err := p.Wait(u.c.ctx, pushWait)
		switch {
		case err != nil:
			u.log.Error("push the NATS user revocations: retried every minute and at each server start", "err", err, "revoked", len(revs))
		case len(res.Failed) > 0:
			u.log.Warn("NATS servers refused flotilla's account JWT", "result", res.String(), "revoked", len(revs))
		case why != "":
			u.log.Info("pushed the NATS user revocations", "why", why, "result", res.String(), "revoked", len(revs))
		default:
			u.log.Debug("pushed the NATS user revocations", "result", res.String(), "revoked", len(revs))
		}
	}
}

// signedLocked is the account JWT for revs, signed again only when the list
// differs from the last one signed (under pushMu).
func (u *natsUsers) signedLocked(revs natsauth.Revocations) (string, error) {
	list := revs.List()
	if u.lastJWT != "" && maps.Equal(list, u.lastList) {
		return u.lastJWT, nil
	}
	tok, err := u.revoker.AccountJWT(revs)
	if err != nil {
		return "", err
	}
	u.lastJWT, u.lastList = tok, list
	return tok, nil
}

// adminUser issues admin.creds' JWT for the admin key kept in the data dir
// (made once, like the embedded server's admin password: delete admin.creds
// on every controller to make a new one).
func (u *natsUsers) adminUser() (token, seed string, err error) {
	path := filepath.Join(u.c.opts.DataDir, FileAdminCreds)
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", "", fmt.Errorf("read admin credentials: %w", err)
	}
	var cr protocol.Credentials
	if err == nil && json.Unmarshal(data, &cr) == nil && cr.NKeySeed != "" {
		kp, err := nkeys.FromSeed([]byte(cr.NKeySeed))
		if err != nil {
			return "", "", fmt.Errorf("%s: admin key: %w (remove the file to make a new one)", path, err)
		}
		pub, _ := kp.PublicKey()
		tok, err := u.issuer.SignUser(pub, adminSpec(u.adminTTL))
		return tok, cr.NKeySeed, err
	}
	tok, seed, _, err := u.issuer.NewUser(adminSpec(u.adminTTL))
	return tok, seed, err
}

// renewAdmin rewrites admin.creds at half its JWT's lifetime, so that the
// CLI on this host always finds a valid one.
func (c *Controller) renewAdmin() {
	for {
		wait := c.nu.adminTTL / 2
		if data, err := os.ReadFile(c.AdminCredsPath()); err == nil {
			var cr protocol.Credentials
			if json.Unmarshal(data, &cr) == nil {
				if uc, err := jwt.DecodeUserClaims(cr.JWT); err == nil && uc.Expires > 0 {
					wait = time.Until(time.Unix(uc.IssuedAt+(uc.Expires-uc.IssuedAt)/2, 0))
				}
			}
		}
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(max(wait, time.Second)):
		}
		if err := c.writeExternalAdminCreds(); err != nil {
			c.log.Error("renew admin.creds: the CLI's admin user expires", "err", err, "path", c.AdminCredsPath())
		}
	}
}

// writeExternalAdminCreds issues the CLI a user of the NATS cluster's account
// that may only send admin requests (as in the embedded server).
func (c *Controller) writeExternalAdminCreds() error {
	tok, seed, err := c.nu.adminUser()
	if err != nil {
		return err
	}
	cr := protocol.Credentials{
		NATSURLs:   c.opts.NATSURLs,
		User:       UserAdmin,
		JWT:        tok,
		NKeySeed:   seed,
		NATSCAPEM:  c.natsCA,
		CAPEM:      c.pki.caPEM,
		SigningKey: c.SigningKey(),
		HTTPURL:    c.HTTPURL(),
	}
	data, err := json.MarshalIndent(cr, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(c.opts.DataDir, FileAdminCreds), data, 0o600)
}
