package protocol

import (
	"encoding/json"
	"time"
)

// AdminRequest is what the CLI sends on flotilla.v1.admin.<name>. When Stream
// is set, the controller publishes intermediate messages there (with header
// HeaderStream) before replying; using the reply inbox as Stream keeps order.
type AdminRequest struct {
	Body   json.RawMessage `json:"body,omitempty"`
	Stream string          `json:"stream,omitempty"`
}

// HeaderStream marks a message on an admin inbox as intermediate (not the reply).
const HeaderStream = "Flotilla-Stream"

// HeaderKeepalive marks an intermediate message that carries nothing but the
// news that the controller serving a streamed request is alive. It is sent
// every AdminKeepaliveInterval until the reply, so that a client notices a
// controller that died mid-request (with an external NATS cluster its
// connection stays up) and can go on with the new leader.
const HeaderKeepalive = "Flotilla-Keepalive"

// AdminKeepaliveInterval is how often a controller sends HeaderKeepalive on a
// streamed request; a client that saw one and then nothing for
// AdminKeepaliveMisses intervals takes the controller for gone.
const (
	AdminKeepaliveInterval = 2 * time.Second
	AdminKeepaliveMisses   = 4
)

// AdminReply is the controller's final answer to an AdminRequest.
type AdminReply struct {
	OK    bool            `json:"ok"`
	Error string          `json:"error,omitempty"`
	Body  json.RawMessage `json:"body,omitempty"`
}

// Admin request names.
const (
	AdminNodes       = "nodes"
	AdminTokenCreate = "token.create"
	AdminTokenList   = "token.list"
	AdminTokenRevoke = "token.revoke"
	AdminExec        = "exec"
	AdminNodesRemove = "nodes.remove"
	AdminNodesLabel  = "nodes.label"
	AdminController  = "controller"
	AdminNodesAddr   = "nodes.address"
)

// ControllerInfo says which controller answers admin requests (the leader,
// with HA) and since when. Only a controller that serves (leads) answers.
type ControllerInfo struct {
	// ID names the controller process: HOST/PID/ADVERTISE.
	ID      string `json:"id"`
	Version string `json:"version,omitempty"`
	// HA is true when this controller is one of several on a shared NATS
	// cluster, leading while it holds the leader lease.
	HA bool `json:"ha"`
	// LeaderSince is when it took the lease (HA) or started serving.
	LeaderSince time.Time `json:"leaderSince"`
	// LeaseTTL is how long the lease outlives its holder (HA): the longest a
	// failover leaves admin requests without a leader.
	LeaseTTL time.Duration `json:"leaseTTL,omitempty"`
	NATS     string        `json:"nats"`
	HTTPS    string        `json:"https"`
}

// NodesRemove removes a node from the inventory: its credentials stop working
// and its connections are closed; its name may join again with a new token.
type NodesRemove struct {
	Name string `json:"name"`
}

// NodesLabel changes a node's labels (admin-approved; what selectors match):
// Set adds or replaces, Remove deletes keys.
type NodesLabel struct {
	Name   string            `json:"name"`
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// NodeInfo is one inventory entry as the CLI sees it.
type NodeInfo struct {
	Name              string            `json:"name"`
	Online            bool              `json:"online"`
	Facts             Facts             `json:"facts"`
	Labels            map[string]string `json:"labels,omitempty"`
	JoinedAt          time.Time         `json:"joinedAt"`
	LastSeen          time.Time         `json:"lastSeen,omitempty"`
	HeartbeatInterval time.Duration     `json:"heartbeatInterval,omitempty"`
	PeerURL           string            `json:"peerURL,omitempty"`
	// VerifiedIPs are the addresses the controller knows the node has: the
	// only ones a Clusterfile's IP or range selects it by. Facts.IPs are
	// what the node reports, shown but never trusted.
	VerifiedIPs []VerifiedIP `json:"verifiedIPs,omitempty"`
}

// VerifiedIP is an address of a node and how the controller knows it.
type VerifiedIP struct {
	IP string `json:"ip"`
	By string `json:"by"` // one of the VerifiedBy… constants
}

// How a node's address was verified.
const (
	// VerifiedByAdmin: pinned with `flotilla nodes address NODE --pin IP`.
	VerifiedByAdmin = "admin"
	// VerifiedByJoin: the source address of the node's join (HTTPS).
	VerifiedByJoin = "join"
	// VerifiedByConnection: the source address of its NATS connection
	// (the embedded server; an external cluster does not tell).
	VerifiedByConnection = "connection"
)

// MaxPinnedIPs bounds the addresses an admin pins on one node.
const MaxPinnedIPs = 16

// NodesAddress pins addresses on a node (what an admin checked: a NAT or a
// second network the controller cannot see) or unpins them.
type NodesAddress struct {
	Name  string   `json:"name"`
	Pin   []string `json:"pin,omitempty"`
	Unpin []string `json:"unpin,omitempty"`
}

// TokenCreate asks for a new join token.
type TokenCreate struct {
	TTL         time.Duration `json:"ttl"`
	Description string        `json:"description,omitempty"`
	// Uses caps the joins the token allows (0: any number until it expires).
	Uses int `json:"uses,omitempty"`
	// For makes the token join only this node name; it is the only way to
	// re-join a node that is still in the inventory.
	For string `json:"for,omitempty"`
	// Labels are all the labels of every node that joins with the token
	// (labels the node asks for are not applied).
	Labels map[string]string `json:"labels,omitempty"`
}

// TokenInfo describes a join token; Secret is only set right after creation.
type TokenInfo struct {
	ID          string    `json:"id"`
	Token       string    `json:"token,omitempty"`
	Description string    `json:"description,omitempty"`
	Created     time.Time `json:"created"`
	Expires     time.Time `json:"expires"`
	Uses        int       `json:"uses"`
	// MaxUses is 0 when the token allows any number of joins until it expires.
	MaxUses int               `json:"maxUses,omitempty"`
	For     string            `json:"for,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	// Set on create: what a node needs to join.
	CAHash    string `json:"caHash,omitempty"`
	JoinURL   string `json:"joinURL,omitempty"`
	Bootstrap string `json:"bootstrap,omitempty"`
}

// TokenRevoke names the token to revoke (its ID or the whole token).
type TokenRevoke struct {
	ID string `json:"id"`
}

// Selector picks nodes: All, or any of Names, or every label in Labels.
type Selector struct {
	All    bool              `json:"all,omitempty"`
	Names  []string          `json:"names,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// ExecRequest runs one command on the selected nodes at once.
type ExecRequest struct {
	Selector Selector      `json:"selector"`
	Command  []string      `json:"command"`
	Timeout  time.Duration `json:"timeout"`
}

// ExecNodeResult is one node's outcome in an ExecReply.
type ExecNodeResult struct {
	Node     string        `json:"node"`
	OK       bool          `json:"ok"`
	ExitCode int           `json:"exitCode"`
	TimedOut bool          `json:"timedOut,omitempty"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration"`
}

// ExecReply summarises an exec; output lines arrive before it as Events on the stream.
type ExecReply struct {
	Results []ExecNodeResult `json:"results"`
}
