// Package client is flotilla's Go API for admins: every action the `flotilla`
// CLI performs against a running controller goes through a Client, and other
// tools (scripts, dashboards, tests) use the same calls.
//
//   - nodes: Nodes, RemoveNode, LabelNode
//   - commands on many nodes: Exec, with each output line streamed to a callback
//   - join tokens: CreateToken (uses, one node's name, labels), Tokens, RevokeToken
//   - rollouts: Plan, Apply and Delete (progress events streamed to a callback),
//     Attach (follow a running or resuming rollout), Status
//   - history: Logs (a node's newest task events)
//
// Connect with the admin credential file the controller writes into its data dir
// (admin.creds, mode 0600); it holds the NATS URL, the CA and the password:
//
//	c, err := client.Connect(client.Config{CredentialsFile: "/var/lib/flotilla/admin.creds"})
//	if err != nil { … }
//	defer c.Close()
//	nodes, err := c.Nodes(ctx)
//
// Requests and replies are protocol/ types; calls wait at most until ctx ends,
// and a call whose ctx has no deadline waits at most its default timeout.
//
// It must not import controller/ or agent/: it speaks only the wire contract.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotilla-dev/flotilla/internal/natsconn"

	"github.com/flotilla-dev/flotilla/protocol"
	"github.com/nats-io/nats.go"
)

// DefaultDataDir is the controller's default data dir, where its admin
// credential file is (protocol.AdminCredsFile).
const DefaultDataDir = "/var/lib/flotilla"

// Default timeouts of calls whose ctx has no deadline.
const (
	DefaultTimeout        = 15 * time.Second // nodes, tokens
	DefaultQueryTimeout   = 30 * time.Second // status, logs
	DefaultPlanTimeout    = 2 * time.Minute  // plan
	DefaultRolloutTimeout = 2 * time.Hour    // apply, delete, attach
	DefaultDialTimeout    = 5 * time.Second
)

// Config locates a controller and the admin credentials.
type Config struct {
	// CredentialsFile is the admin credential file (default DataDir/admin.creds).
	CredentialsFile string
	// DataDir is the controller's data dir, used when CredentialsFile is empty
	// (default DefaultDataDir).
	DataDir string
	// Controller overrides the NATS URLs of the credential file: HOST, HOST:PORT,
	// tls://HOST:PORT or the join address https://HOST:PORT (see ParseAddress).
	Controller string
	// DialTimeout bounds the connection (default DefaultDialTimeout).
	DialTimeout time.Duration
	// Name is the NATS connection name the controller logs (default "flotilla-client").
	Name string
	// Logger gets the notes of calls that wait, such as "no leader yet,
	// retrying" during a controller failover (default slog.Default()).
	Logger *slog.Logger
}

// Client is an admin connection to the controllers behind one NATS address:
// one controller, or the leader of an HA group (whichever leads answers). It
// is safe for concurrent use.
type Client struct {
	nc  *nats.Conn
	log *slog.Logger
}

// ErrNoLeader says no controller answered admin requests within the call's
// timeout: none runs, or one is starting, or (HA) the leader died and no
// standby took its lease yet. Calls retry until their timeout before they
// return it.
var ErrNoLeader = errors.New("no controller is serving admin requests (none running, one starting, or no leader elected yet)")

// noLeaderRetry is how long a call waits between tries while no controller
// serves admin requests.
const noLeaderRetry = 250 * time.Millisecond

// ErrControllerLost says the connection to the controller ended while a call
// waited for its answer (the controller stopped or crashed). A rollout goes on
// when the controller starts again: follow it with Attach.
var ErrControllerLost = errors.New("lost the controller while waiting for its answer")

// CredentialsError says the admin credential file could not be read or is not one.
type CredentialsError struct {
	Path string
	Err  error
}

func (e *CredentialsError) Error() string {
	return fmt.Sprintf("admin credentials %s: %v", e.Path, e.Err)
}
func (e *CredentialsError) Unwrap() error { return e.Err }

// ConnectError says no controller answered at URLs.
type ConnectError struct {
	URLs []string
	Err  error
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("connect to controller at %s: %v", strings.Join(e.URLs, ", "), e.Err)
}
func (e *ConnectError) Unwrap() error { return e.Err }

// ParseAddress turns a controller address into its NATS URL: HOST, HOST:PORT
// and tls://HOST:PORT (default port 4222), or the join address https://HOST:PORT
// (same host, NATS port 4222).
func ParseAddress(s string) (string, error) {
	in := s
	if !strings.Contains(s, "://") {
		s = "tls://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("controller address %q: want HOST, HOST:PORT or tls://HOST:PORT", in)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "4222")
	}
	switch u.Scheme {
	case "tls", "nats":
	case "https":
		host = net.JoinHostPort(u.Hostname(), "4222")
	default:
		return "", fmt.Errorf("controller address %q: scheme must be tls:// (NATS)", in)
	}
	return "tls://" + host, nil
}

// Connect reads the admin credentials and connects to the controller over TLS,
// trusting only the CA in the credential file.
func Connect(cfg Config) (*Client, error) {
	path := cfg.CredentialsFile
	if path == "" {
		dir := cfg.DataDir
		if dir == "" {
			dir = DefaultDataDir
		}
		path = filepath.Join(dir, protocol.AdminCredsFile)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &CredentialsError{Path: path, Err: err}
	}
	var cr protocol.Credentials
	if err := json.Unmarshal(data, &cr); err != nil {
		return nil, &CredentialsError{Path: path, Err: fmt.Errorf("not a flotilla credential file: %w", err)}
	}
	auth, err := natsconn.Options(&cr)
	if err != nil {
		return nil, &CredentialsError{Path: path, Err: err}
	}
	urls := cr.NATSURLs
	if cfg.Controller != "" {
		u, err := ParseAddress(cfg.Controller)
		if err != nil {
			return nil, err
		}
		urls = []string{u}
	}
	if len(urls) == 0 {
		return nil, &CredentialsError{Path: path, Err: errors.New("no controller URL in it: give Config.Controller")}
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.Name == "" {
		cfg.Name = "flotilla-client"
	}
	nc, err := nats.Connect(strings.Join(urls, ","), append(auth,
		nats.Name(cfg.Name), nats.Timeout(cfg.DialTimeout), nats.DontRandomize(), nats.NoReconnect())...)
	if err != nil {
		return nil, &ConnectError{URLs: urls, Err: err}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Client{nc: nc, log: cfg.Logger}, nil
}

// Close ends the connection.
func (c *Client) Close() { c.nc.Close() }

// callOpts say how one admin call waits.
type callOpts struct {
	// timeout applies when ctx has no deadline.
	timeout time.Duration
	// onStream, if set, receives the messages streamed before the reply.
	onStream func([]byte)
	// resend: the request may be sent again when the controller handling it
	// stopped (reads, and writes whose repetition changes nothing).
	resend bool
}

// call sends one admin request and decodes the reply body into out. The
// streamed messages and the reply arrive on one inbox, so none is lost or
// reordered.
//
// While no controller serves admin requests (NATS answers "no responders":
// a controller starting, or a failover between HA controllers) the request
// was delivered to nobody, so it is sent again until one answers or the
// timeout ends (ErrNoLeader). A controller that stops sending keepalives
// (protocol.HeaderKeepalive) while handling the request stopped: the call
// sends it again to the next leader when o.resend allows, and otherwise
// ends with ErrControllerLost.
func (c *Client) call(ctx context.Context, name string, body, out any, o callOpts) error {
	req := protocol.AdminRequest{}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("admin %s: %w", name, err)
		}
		req.Body = b
	}
	inbox := c.nc.NewInbox()
	// Always streamed: the controller's keepalives come on the stream.
	req.Stream = inbox
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return fmt.Errorf("admin %s: %w", name, err)
	}
	defer sub.Unsubscribe()
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("admin %s: %w", name, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	waiting := time.Time{} // when the first "no responders" came
	noLeader := func() error {
		return fmt.Errorf("admin %s: %w: waited %s (is `flotilla controller` running? with --ha, see each controller's log for the lease)",
			name, ErrNoLeader, time.Since(waiting).Round(time.Millisecond))
	}
	for {
		if err := c.nc.PublishRequest(protocol.AdminSubject(name), inbox, data); err != nil {
			return fmt.Errorf("admin %s: %w", name, err)
		}
		m, err := c.answer(ctx, name, sub, o.onStream)
		switch {
		case err == nil && m.Header.Get("Status") != "503":
		case err != nil && !waiting.IsZero() && ctx.Err() != nil:
			return noLeader()
		case err == nil, errors.Is(err, nats.ErrNoResponders):
			if waiting.IsZero() {
				waiting = time.Now()
				c.log.Warn("no controller is serving admin requests yet (one starting, or a standby taking over); retrying", "request", name)
			}
			select {
			case <-ctx.Done():
				return noLeader()
			case <-time.After(noLeaderRetry):
			}
			continue
		case errors.Is(err, ErrControllerLost) && o.resend && c.nc.IsConnected() && ctx.Err() == nil:
			// NATS is still here: with HA another controller leads, or soon will.
			c.log.Warn("the controller handling this request stopped; sending it to the next leader", "request", name, "err", err)
			continue
		case errors.Is(err, ErrControllerLost) && c.nc.IsConnected():
			return fmt.Errorf("%w; it may or may not have been carried out: check before sending it again", err)
		default:
			return err
		}
		if !waiting.IsZero() {
			c.log.Info("a controller answers now", "request", name, "waited", time.Since(waiting).Round(time.Millisecond))
		}
		var reply protocol.AdminReply
		if err := json.Unmarshal(m.Data, &reply); err != nil {
			return fmt.Errorf("admin %s reply: %w", name, err)
		}
		if !reply.OK {
			return errors.New(reply.Error)
		}
		if out != nil && len(reply.Body) > 0 {
			if err := json.Unmarshal(reply.Body, out); err != nil {
				return fmt.Errorf("admin %s reply: %w", name, err)
			}
		}
		return nil
	}
}

// answer waits for the reply (or a "no responders" status) on sub, handing
// streamed messages to onStream. A controller sends its first keepalive as
// soon as it has the request and then one every
// protocol.AdminKeepaliveInterval: a silence of protocol.AdminKeepaliveMisses
// intervals means it stopped.
func (c *Client) answer(ctx context.Context, name string, sub *nats.Subscription, onStream func([]byte)) (*nats.Msg, error) {
	silence := protocol.AdminKeepaliveMisses * protocol.AdminKeepaliveInterval
	last := time.Now()
	for {
		wctx, cancel := context.WithDeadline(ctx, last.Add(silence))
		m, err := sub.NextMsgWithContext(wctx)
		cancel()
		switch {
		case err == nil:
		case errors.Is(err, nats.ErrNoResponders):
			return nil, err
		case errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrNoServers) || !c.nc.IsConnected():
			return nil, fmt.Errorf("admin %s: %w: %v", name, ErrControllerLost, err)
		case ctx.Err() == nil:
			return nil, fmt.Errorf("admin %s: %w: nothing from it for %s", name, ErrControllerLost, silence)
		default:
			return nil, fmt.Errorf("admin %s: no answer from the controller: %w", name, err)
		}
		if m.Header.Get(protocol.HeaderStream) == "" {
			return m, nil
		}
		last = time.Now()
		if m.Header.Get(protocol.HeaderKeepalive) == "" && onStream != nil {
			onStream(m.Data)
		}
	}
}

// streamOf decodes each streamed message as a T for fn (nil fn: nothing is
// streamed); a message that does not decode is logged and skipped.
func streamOf[T any](name string, fn func(T)) func([]byte) {
	if fn == nil {
		return nil
	}
	return func(data []byte) {
		var v T
		if err := json.Unmarshal(data, &v); err != nil {
			slog.Debug("streamed message not understood", "call", name, "err", err)
			return
		}
		fn(v)
	}
}

// Nodes lists the inventory, online or not.
func (c *Client) Nodes(ctx context.Context) ([]protocol.NodeInfo, error) {
	var nodes []protocol.NodeInfo
	if err := c.call(ctx, protocol.AdminNodes, nil, &nodes, callOpts{timeout: DefaultTimeout, resend: true}); err != nil {
		return nil, err
	}
	return nodes, nil
}

// RemoveNode removes a node from the inventory: its credentials stop working and
// its connections are closed; the name may join again with a new token.
func (c *Client) RemoveNode(ctx context.Context, name string) error {
	return c.call(ctx, protocol.AdminNodesRemove, protocol.NodesRemove{Name: name}, nil, callOpts{timeout: DefaultTimeout})
}

// LabelNode sets req.Set and removes req.Remove on node req.Name's labels (the
// ones Clusterfile selectors match) and returns the node as it is now.
func (c *Client) LabelNode(ctx context.Context, req protocol.NodesLabel) (protocol.NodeInfo, error) {
	var n protocol.NodeInfo
	err := c.call(ctx, protocol.AdminNodesLabel, req, &n, callOpts{timeout: DefaultTimeout, resend: true})
	return n, err
}

// PinAddresses pins addresses an admin verified on a node (or unpins them):
// with the source addresses of its join and connection, they are the only
// addresses a Clusterfile selects the node by.
func (c *Client) PinAddresses(ctx context.Context, req protocol.NodesAddress) (protocol.NodeInfo, error) {
	var n protocol.NodeInfo
	err := c.call(ctx, protocol.AdminNodesAddr, req, &n, callOpts{timeout: DefaultTimeout, resend: true})
	return n, err
}

// Exec runs req.Command on the selected nodes at once. onOutput, if set, gets
// every output event (protocol.EventOutput: Node, Stream, Line) as it arrives;
// the reply has each node's exit code. The call waits req.Timeout plus 30s
// unless ctx ends first.
func (c *Client) Exec(ctx context.Context, req protocol.ExecRequest, onOutput func(protocol.Event)) (*protocol.ExecReply, error) {
	var reply protocol.ExecReply
	on := func(ev protocol.Event) {
		if ev.Type == protocol.EventOutput && onOutput != nil {
			onOutput(ev)
		}
	}
	if err := c.call(ctx, protocol.AdminExec, req, &reply, callOpts{timeout: req.Timeout + 30*time.Second, onStream: streamOf(protocol.AdminExec, on)}); err != nil {
		return nil, err
	}
	return &reply, nil
}

// CreateToken creates a join token: valid for req.TTL, for req.Uses joins (0:
// any number), for the one node req.For (the way to re-join a node still in
// the inventory), giving joining nodes req.Labels. The reply holds the secret
// and the bootstrap one-liner; they are never shown again.
func (c *Client) CreateToken(ctx context.Context, req protocol.TokenCreate) (protocol.TokenInfo, error) {
	var ti protocol.TokenInfo
	err := c.call(ctx, protocol.AdminTokenCreate, req, &ti, callOpts{timeout: DefaultTimeout})
	return ti, err
}

// Tokens lists the join tokens (without their secrets).
func (c *Client) Tokens(ctx context.Context) ([]protocol.TokenInfo, error) {
	var list []protocol.TokenInfo
	if err := c.call(ctx, protocol.AdminTokenList, nil, &list, callOpts{timeout: DefaultTimeout, resend: true}); err != nil {
		return nil, err
	}
	return list, nil
}

// RevokeToken revokes the join token with this ID; nodes that joined with it keep working.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.call(ctx, protocol.AdminTokenRevoke, protocol.TokenRevoke{ID: id}, nil, callOpts{timeout: DefaultTimeout})
}

// Plan asks what applying the Clusterfile would do on each node; it changes nothing.
func (c *Client) Plan(ctx context.Context, req protocol.ApplyRequest) (*protocol.ClusterPlan, error) {
	req.DryRun = true
	var p protocol.ClusterPlan
	if err := c.call(ctx, protocol.AdminPlan, req, &p, callOpts{timeout: DefaultPlanTimeout, resend: true}); err != nil {
		return nil, err
	}
	return &p, nil
}

// Apply rolls the Clusterfile out. onEvent, if set, gets every progress event
// (phase and node starts, steps, output lines, fetch progress, retries, node
// outcomes) as it happens. The result says how each node ended; with
// req.Detach it returns once the rollout started. When ctx ends or the
// controller stops (ErrControllerLost) the rollout goes on in the controller:
// follow it with Attach.
func (c *Client) Apply(ctx context.Context, req protocol.ApplyRequest, onEvent func(protocol.RolloutEvent)) (*protocol.ApplyResult, error) {
	return c.rollout(ctx, protocol.AdminApply, req, onEvent)
}

// Delete undoes the cluster the Clusterfile describes on every node (services
// stopped, files and layers removed) and forgets it, with progress like Apply.
func (c *Client) Delete(ctx context.Context, req protocol.ApplyRequest, onEvent func(protocol.RolloutEvent)) (*protocol.ApplyResult, error) {
	return c.rollout(ctx, protocol.AdminDelete, req, onEvent)
}

// Attach follows the running (or resuming) rollout of a cluster with the same
// events and result as the Apply that started it; a rollout that ended is
// answered with its stored result.
func (c *Client) Attach(ctx context.Context, cluster string, onEvent func(protocol.RolloutEvent)) (*protocol.ApplyResult, error) {
	return c.rollout(ctx, protocol.AdminAttach, protocol.AttachRequest{Cluster: cluster}, onEvent)
}

func (c *Client) rollout(ctx context.Context, name string, body any, onEvent func(protocol.RolloutEvent)) (*protocol.ApplyResult, error) {
	// Always ask for the stream: the controller streams to an inbox it was given.
	on := func(ev protocol.RolloutEvent) {
		if onEvent != nil {
			onEvent(ev)
		}
	}
	// An apply or attach sent again reaches the next leader, which resumed
	// the rollout, and follows the same one: the same Clusterfile attaches to
	// the running rollout, one that never started starts, steps done are
	// skipped. A delete is not sent again (its cluster may be gone by then).
	var res protocol.ApplyResult
	o := callOpts{timeout: DefaultRolloutTimeout, onStream: streamOf(name, on), resend: name != protocol.AdminDelete}
	if err := c.call(ctx, name, body, &res, o); err != nil {
		return nil, err
	}
	return &res, nil
}

// Status returns what the controller knows of a cluster ("": of every cluster):
// desired image, last rollout, and per node its applied image and drift.
func (c *Client) Status(ctx context.Context, cluster string) ([]protocol.ClusterStatus, error) {
	var list []protocol.ClusterStatus
	if err := c.call(ctx, protocol.AdminStatus, protocol.StatusRequest{Cluster: cluster}, &list, callOpts{timeout: DefaultQueryTimeout, resend: true}); err != nil {
		return nil, err
	}
	return list, nil
}

// Logs returns a node's newest task events from the controller's event history,
// oldest first (req.Limit 0: all it keeps).
func (c *Client) Logs(ctx context.Context, req protocol.LogsRequest) ([]protocol.Event, error) {
	var evs []protocol.Event
	if err := c.call(ctx, protocol.AdminLogs, req, &evs, callOpts{timeout: DefaultQueryTimeout, resend: true}); err != nil {
		return nil, err
	}
	return evs, nil
}

// Controller says which controller serves admin requests (the leader, with
// HA) and since when.
func (c *Client) Controller(ctx context.Context) (protocol.ControllerInfo, error) {
	var info protocol.ControllerInfo
	err := c.call(ctx, protocol.AdminController, nil, &info, callOpts{timeout: DefaultTimeout, resend: true})
	return info, err
}

// Backup runs the cluster image's BACKUP command on one healthy member and
// stores the result in the controller's image store as an OCI artifact.
// onEvent, if set, gets the BACKUP command's output and the upload's progress.
func (c *Client) Backup(ctx context.Context, req protocol.BackupRequest, onEvent func(protocol.RolloutEvent)) (*protocol.BackupResult, error) {
	var res protocol.BackupResult
	on := func(ev protocol.RolloutEvent) {
		if onEvent != nil {
			onEvent(ev)
		}
	}
	if err := c.call(ctx, protocol.AdminBackup, req, &res, callOpts{timeout: DefaultRolloutTimeout, onStream: streamOf(protocol.AdminBackup, on)}); err != nil {
		return nil, err
	}
	return &res, nil
}

// Backups lists the backups the controller holds (of one cluster, or all when cluster is "").
func (c *Client) Backups(ctx context.Context, cluster string) (*protocol.BackupList, error) {
	var res protocol.BackupList
	if err := c.call(ctx, protocol.AdminBackups, protocol.BackupsRequest{Cluster: cluster}, &res, callOpts{timeout: DefaultQueryTimeout, resend: true}); err != nil {
		return nil, err
	}
	return &res, nil
}

// Restore runs the cluster image's RESTORE stages with a backup on every member,
// with progress like Apply; the result is the restore's rollout.
func (c *Client) Restore(ctx context.Context, req protocol.RestoreRequest, onEvent func(protocol.RolloutEvent)) (*protocol.ApplyResult, error) {
	return c.rollout(ctx, protocol.AdminRestore, req, onEvent)
}
