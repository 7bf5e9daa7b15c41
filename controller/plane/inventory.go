package plane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"sort"
	"sync"
	"time"

	"github.com/flotilla-dev/flotilla/internal/kvkeys"
	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NodesBucket is the JetStream KV bucket holding one NodeRecord per node (key: nodeKey).
const NodesBucket = "flotilla_nodes"

// nodeKey is the KV key of a node's record: its name as it is. A valid node
// name (protocol.ValidateNodeName) is a valid KV key ([-/_=.a-zA-Z0-9], dots
// only between non-empty tokens), the identity is injective, and the key of a
// dot-free name is what it always was (the former key, NodeToken(name), maps
// dots to '~', which KV keys refuse: a node with a dot could never be stored).
func nodeKey(name string) string { return name }

// NodeRecord is what the controller keeps about a node across restarts.
type NodeRecord struct {
	Name              string            `json:"name"`
	Facts             protocol.Facts    `json:"facts"`
	Labels            map[string]string `json:"labels,omitempty"`
	JoinedAt          time.Time         `json:"joinedAt"`
	SecretHash        []byte            `json:"secretHash"`
	HeartbeatInterval time.Duration     `json:"heartbeatInterval,omitempty"`
	PeerURL           string            `json:"peerURL,omitempty"`
	LastSeen          time.Time         `json:"lastSeen,omitempty"`
	// JoinIP is the source address of the node's last join; PinnedIPs the
	// addresses an admin pinned (see addresses.go).
	JoinIP    string   `json:"joinIP,omitempty"`
	PinnedIPs []string `json:"pinnedIPs,omitempty"`
}

// inventory is the node list: KV for persistence, memory for liveness.
type inventory struct {
	kv  jetstream.KeyValue
	log *slog.Logger

	writeMu  sync.Mutex // serialises writers, so none stores a stale copy over another's change
	mu       sync.RWMutex
	nodes    map[string]*NodeRecord
	lastSeen map[string]time.Time // only heartbeats seen by this process count as online
	saved    map[string]time.Time // when LastSeen was last written to KV
}

func openInventory(ctx context.Context, js jetstream.JetStream, log *slog.Logger) (*inventory, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: NodesBucket, History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		return nil, fmt.Errorf("open KV %s: %w", NodesBucket, err)
	}
	inv := &inventory{kv: kv, log: log, nodes: map[string]*NodeRecord{}, lastSeen: map[string]time.Time{}, saved: map[string]time.Time{}}
	keys, err := kvkeys.List(ctx, kv)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", NodesBucket, err)
	}
	for _, key := range keys {
		e, err := kv.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("read %s/%s: %w", NodesBucket, key, err)
		}
		var rec NodeRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			log.Warn("skipping unreadable node record", "key", key, "err", err)
			continue
		}
		inv.nodes[rec.Name] = &rec
	}
	return inv, nil
}

func (inv *inventory) secretHashes() map[string][]byte {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	out := map[string][]byte{}
	for n, r := range inv.nodes {
		out[n] = r.SecretHash
	}
	return out
}

func (inv *inventory) put(ctx context.Context, rec *NodeRecord) error {
	inv.writeMu.Lock()
	defer inv.writeMu.Unlock()
	return inv.putLocked(ctx, rec)
}

// errNoNode: the node is not (or no longer) in the inventory.
var errNoNode = errors.New("not in the inventory")

// update applies fn to a copy of name's current record and stores the result.
func (inv *inventory) update(ctx context.Context, name string, fn func(*NodeRecord) error) (NodeRecord, error) {
	inv.writeMu.Lock()
	defer inv.writeMu.Unlock()
	rec, ok := inv.get(name)
	if !ok {
		return NodeRecord{}, fmt.Errorf("node %s: %w", name, errNoNode)
	}
	if err := fn(&rec); err != nil {
		return NodeRecord{}, err
	}
	return rec, inv.putLocked(ctx, &rec)
}

func (inv *inventory) putLocked(ctx context.Context, rec *NodeRecord) error {
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := inv.kv.Put(ctx, nodeKey(rec.Name), data); err != nil {
		return fmt.Errorf("store node %s: %w", rec.Name, err)
	}
	inv.mu.Lock()
	cp := *rec
	inv.nodes[rec.Name] = &cp
	inv.saved[rec.Name] = time.Now()
	inv.mu.Unlock()
	return nil
}

// remove deletes a node's record; it is gone from KV before it is gone from memory.
func (inv *inventory) remove(ctx context.Context, name string) error {
	inv.writeMu.Lock()
	defer inv.writeMu.Unlock()
	if err := inv.kv.Purge(ctx, nodeKey(name)); err != nil {
		return fmt.Errorf("remove node %s: %w", name, err)
	}
	inv.mu.Lock()
	delete(inv.nodes, name)
	delete(inv.lastSeen, name)
	delete(inv.saved, name)
	inv.mu.Unlock()
	return nil
}

func (inv *inventory) get(name string) (NodeRecord, bool) {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	r, ok := inv.nodes[name]
	if !ok {
		return NodeRecord{}, false
	}
	return *r, true
}

// seen records a sign of life; it returns the record to persist when LastSeen is stale in KV.
func (inv *inventory) seen(name string, interval time.Duration, now time.Time) (*NodeRecord, bool) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	r, ok := inv.nodes[name]
	if !ok {
		return nil, false
	}
	if interval > 0 {
		r.HeartbeatInterval = interval
	}
	wasOnline := inv.onlineLocked(name, now)
	inv.lastSeen[name] = now
	r.LastSeen = now
	if !wasOnline {
		inv.log.Info("node online", "node", name)
	}
	if now.Sub(inv.saved[name]) > time.Minute || !wasOnline {
		cp := *r
		return &cp, true
	}
	return nil, true
}

func (inv *inventory) onlineLocked(name string, now time.Time) bool {
	last, ok := inv.lastSeen[name]
	if !ok {
		return false
	}
	iv := inv.nodes[name].HeartbeatInterval
	if iv <= 0 {
		iv = 5 * time.Second
	}
	// Three missed heartbeats, plus slack for a loaded machine.
	return now.Sub(last) <= 3*iv+500*time.Millisecond
}

// Online says whether the node has sent a heartbeat within three intervals.
func (inv *inventory) online(name string) bool {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	if _, ok := inv.nodes[name]; !ok {
		return false
	}
	return inv.onlineLocked(name, time.Now())
}

func (inv *inventory) info(name string) (protocol.NodeInfo, bool) {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	r, ok := inv.nodes[name]
	if !ok {
		return protocol.NodeInfo{}, false
	}
	return nodeInfo(name, r, inv.onlineLocked(name, time.Now())), true
}

func nodeInfo(name string, r *NodeRecord, online bool) protocol.NodeInfo {
	return protocol.NodeInfo{
		Name: name, Online: online, Facts: r.Facts, Labels: r.Labels,
		JoinedAt: r.JoinedAt, LastSeen: r.LastSeen, HeartbeatInterval: r.HeartbeatInterval, PeerURL: r.PeerURL,
	}
}

func (inv *inventory) list() []protocol.NodeInfo {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	now := time.Now()
	out := make([]protocol.NodeInfo, 0, len(inv.nodes))
	for name, r := range inv.nodes {
		out = append(out, nodeInfo(name, r, inv.onlineLocked(name, now)))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// counts returns how many nodes are online and offline.
func (inv *inventory) counts() (online, offline int) {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	now := time.Now()
	for name := range inv.nodes {
		if inv.onlineLocked(name, now) {
			online++
		} else {
			offline++
		}
	}
	return online, offline
}

// Nodes lists the inventory, online status included, sorted by name.
func (c *Controller) Nodes(ctx context.Context) ([]protocol.NodeInfo, error) {
	if c.inv == nil {
		return nil, errors.New("controller not started")
	}
	list := c.inv.list()
	for i := range list {
		list[i] = c.withAddresses(list[i])
	}
	return list, ctx.Err()
}

// Node returns one node's record (without listing the inventory: the
// rollout engine asks it for every node it dispatches to).
func (c *Controller) Node(name string) (protocol.NodeInfo, bool) {
	n, ok := c.inv.info(name)
	if ok {
		n = c.withAddresses(n)
	}
	return n, ok
}

// Defaults of the registration limits (Options). An agent registers when it
// connects, reconnects or gets its peer certificate: a handful a minute at most.
const (
	DefaultNodeRegisterRate  = 1.0
	DefaultNodeRegisterBurst = 20
)

// errUnchanged: a registration identical to the stored record, which is
// neither written nor logged again.
var errUnchanged = errors.New("registration unchanged")

// onRegister handles every node's registrations, on one goroutine: the
// node's rate is checked before anything else, and a registration that says
// what the inventory already holds writes no KV revision and logs nothing.
func (c *Controller) onRegister(m *nats.Msg) {
	node, ok := protocol.NodeFromSubject(m.Subject)
	if !ok {
		return
	}
	reply := func(err error) {
		r := protocol.RegisterReply{OK: err == nil}
		if err != nil {
			r.Error = err.Error()
			c.log.Warn("registration refused", "node", node, "err", err)
		}
		data, _ := protocol.Encode(r)
		c.respondToNode(m, data)
	}
	if !c.regRates.allow(node) {
		// Dropped unanswered, as events over the rate are: an answer would cost
		// the controller (and its NATS server) a message per flooded one. An
		// agent never gets here (it registers a handful of times a minute); one
		// that did would time out and register again at its next heartbeat.
		c.offenses.warn(node, "registration flood", "node registers faster than its limit: registrations dropped unread and unanswered",
			"limitPerSecond", c.opts.NodeRegisterRate, "burst", c.opts.NodeRegisterBurst)
		return
	}
	reg, err := protocol.DecodeRegister(m.Data)
	if err != nil {
		// Nothing a node says about itself is trusted: one bad field refuses the
		// whole report, and the inventory keeps what it had.
		var fe *protocol.FieldError
		if errors.As(err, &fe) {
			c.log.Warn("registration refused: invalid report", "node", node, "field", fe.Field, "err", err)
		}
		reply(fmt.Errorf("node %s: %w", node, err))
		return
	}
	if reg.Name != node {
		reply(fmt.Errorf("node %s registered under the name %q", node, reg.Name))
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	_, err = c.inv.update(ctx, node, func(rec *NodeRecord) error {
		if sameRegistration(rec, reg) {
			return errUnchanged
		}
		// Labels select roles, so only the admin changes them (token, `nodes
		// label`); what the node reports is kept as a fact and shown, not applied.
		if !maps.Equal(reg.Facts.Labels, rec.Labels) && !maps.Equal(reg.Facts.Labels, rec.Facts.Labels) {
			c.log.Warn("node reports labels that differ from its approved labels: not applied (an admin may apply them with `flotilla nodes label`)",
				"node", node, "reported", formatLabels(reg.Facts.Labels), "approved", formatLabels(rec.Labels))
		}
		rec.Facts = reg.Facts
		rec.HeartbeatInterval = reg.HeartbeatInterval
		rec.PeerURL = reg.PeerURL
		rec.LastSeen = time.Now()
		return nil
	})
	unchanged := errors.Is(err, errUnchanged)
	switch {
	case unchanged:
	case errors.Is(err, errNoNode):
		reply(fmt.Errorf("node %s is not in the inventory: join again with a token", node))
		return
	case err != nil:
		reply(err)
		return
	}
	c.inv.seen(node, reg.HeartbeatInterval, time.Now())
	if !unchanged {
		c.log.Info("node registered", "node", node, "hostname", reg.Facts.Hostname, "arch", reg.Facts.Arch, "version", reg.Facts.AgentVersion)
	}
	reply(nil)
	// Watchers (the rollout engine waiting for a rebooted node) hear of every
	// accepted registration, identical or not: at most the node's rate.
	c.registered.notify(node)
}

// sameRegistration says whether reg reports exactly what rec holds (empty
// and absent lists and maps count as equal).
func sameRegistration(rec *NodeRecord, reg *protocol.Register) bool {
	norm := func(f protocol.Facts) protocol.Facts {
		if len(f.IPs) == 0 {
			f.IPs = nil
		}
		if len(f.Labels) == 0 {
			f.Labels = nil
		}
		return f
	}
	return rec.HeartbeatInterval == reg.HeartbeatInterval && rec.PeerURL == reg.PeerURL &&
		reflect.DeepEqual(norm(rec.Facts), norm(reg.Facts))
}

func (c *Controller) onHeartbeat(m *nats.Msg) {
	node, ok := protocol.NodeFromSubject(m.Subject)
	if !ok {
		return
	}
	hb, err := protocol.DecodeHeartbeat(m.Data, node)
	if err != nil {
		c.offenses.warn(node, "bad heartbeat", "dropping an invalid heartbeat", "err", err)
		return
	}
	now := time.Now()
	if skew := hb.Time.Sub(now); !hb.Time.IsZero() && skew.Abs() > protocol.DefaultMaxClockSkew {
		c.clockLog.warn(node, "clock skew", "node clock is off: it will refuse signed tasks once the skew exceeds its allowance",
			"skew", skew.Round(time.Second).String(), "detail", protocol.DescribeSkew(skew))
	}
	rec, known := c.inv.seen(node, hb.Interval, now)
	if !known {
		c.log.Warn("heartbeat from a node not in the inventory", "node", node)
		return
	}
	if rec != nil {
		ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
		defer cancel()
		// Store the current record, not the copy: an admin's change since must stay.
		if _, err := c.inv.update(ctx, node, func(*NodeRecord) error { return nil }); err != nil && !errors.Is(err, errNoNode) {
			c.log.Warn("persist heartbeat", "node", node, "err", err)
		}
	}
}
