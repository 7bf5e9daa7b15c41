// Package protocol is the wire contract between controller and agents: NATS
// subject names, versioned message types, their encoding and task signatures.
//
// Subjects (all under flotilla.v1; <node> is NodeToken(name)):
//
//	flotilla.v1.to.<node>.task            controller -> agent, request: SignedEnvelope{Task}, reply TaskAck
//	flotilla.v1.to.<node>.cancel          controller -> agent: SignedEnvelope{Cancel}
//	flotilla.v1.from.<node>.register      agent -> controller, request: Register, reply RegisterReply
//	flotilla.v1.from.<node>.heartbeat     agent -> controller: Heartbeat
//	flotilla.v1.from.<node>.events.<task> agent -> controller: Event (output, progress, results)
//	flotilla.v1.from.<node>.<more>        room for later agent->controller requests (peer lookups)
//	flotilla.v1.inbox.<node>.>            the agent's reply inbox prefix
//	flotilla.v1.admin.<name>              CLI -> controller admin requests (AdminRequest / AdminReply)
//	flotilla.v1.eventlog.<node>           controller only: the events it accepted from <node>, kept in a stream
//
// An agent's NATS permissions are exactly: subscribe to flotilla.v1.to.<node>.> and its
// inbox; publish to flotilla.v1.from.<node>.> and replies to requests it received.
// The controller answers a node's request only when its reply subject lies inside
// that node's inbox (ReplyInNodeInbox): a reply subject is chosen by the sender, and
// the controller may publish anywhere.
package protocol

import (
	"fmt"
	"strings"
)

// Version is the protocol version carried in subjects and messages.
const Version = "v1"

// Prefix is the root of every flotilla subject.
const Prefix = "flotilla." + Version

// NodeToken turns a node name into one NATS subject token. Names may contain
// dots (FQDNs, IPs), and a dot in a subject splits it into tokens: node "a"
// would then hold the permission flotilla.v1.from.a.> over every subject of
// node "a.b". Dots become '~', which ValidateNodeName forbids in names, so the
// mapping is injective and every node's subjects are exactly its own.
func NodeToken(name string) string { return strings.ReplaceAll(name, ".", "~") }

// ValidateNodeName accepts 1–128 characters of [A-Za-z0-9._-], not starting
// with '.' or '-', where a dot only separates two parts of a host name (no
// "..", none at the end). Such a name is a valid JetStream KV key as it is
// (keys are [-/_=.a-zA-Z0-9], dots separating non-empty tokens), which is how
// the controller stores its inventory.
func ValidateNodeName(name string) error {
	if name == "" || len(name) > MaxNodeNameLen {
		return fmt.Errorf("node name %q: want 1 to %d characters", name, MaxNodeNameLen)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' ||
			(i > 0 && (r == '.' || r == '-'))
		if !ok {
			return fmt.Errorf("node name %q: character %q at %d not allowed (use letters, digits, '.', '-', '_'; not '.' or '-' first)", name, r, i)
		}
	}
	if strings.HasSuffix(name, ".") || strings.Contains(name, "..") {
		return fmt.Errorf("node name %q: a dot only separates two parts of a host name (no \"..\", none at the end): use e.g. web1.example.com", name)
	}
	return nil
}

// ToNode is the prefix of subjects a node subscribes to.
func ToNode(node string) string { return Prefix + ".to." + NodeToken(node) }

// FromNode is the prefix of subjects a node publishes to.
func FromNode(node string) string { return Prefix + ".from." + NodeToken(node) }

// TaskSubject is where a node receives signed tasks (request/reply with TaskAck).
func TaskSubject(node string) string { return ToNode(node) + ".task" }

// CancelSubject is where a node receives signed cancels.
func CancelSubject(node string) string { return ToNode(node) + ".cancel" }

// RegisterSubject is the node's registration request subject.
func RegisterSubject(node string) string { return FromNode(node) + ".register" }

// HeartbeatSubject is where a node publishes heartbeats.
func HeartbeatSubject(node string) string { return FromNode(node) + ".heartbeat" }

// EventsSubject is where a node publishes the events of one task.
func EventsSubject(node, taskID string) string { return FromNode(node) + ".events." + taskID }

// NodeRequestSubject is a node's request subject for name (e.g. "peers"): agents
// may publish there; the component that answers subscribes to AllNodeRequests(name).
func NodeRequestSubject(node, name string) string { return FromNode(node) + "." + name }

// AllNodeRequests is the wildcard over every node's request subject name.
func AllNodeRequests(name string) string { return Prefix + ".from.*." + name }

// InboxPrefix is the node's reply-inbox prefix (nats.CustomInboxPrefix).
func InboxPrefix(node string) string { return Prefix + ".inbox." + NodeToken(node) }

// ReplyInNodeInbox says whether reply is a subject inside node's inbox prefix:
// the only place the controller may answer a request that node sent.
func ReplyInNodeInbox(node, reply string) bool {
	rest, ok := strings.CutPrefix(reply, InboxPrefix(node)+".")
	return ok && rest != "" && !strings.ContainsAny(rest, "*> \t\r\n") && !strings.Contains(rest, "..") &&
		!strings.HasSuffix(rest, ".")
}

// EventLogSubject is where the controller keeps the events it accepted from
// node (one subject per node, so stream limits apply per node).
func EventLogSubject(node string) string { return Prefix + ".eventlog." + NodeToken(node) }

// AdminSubject is the subject of the admin request name (e.g. "nodes", "exec").
func AdminSubject(name string) string { return Prefix + ".admin." + name }

// Wildcards the controller subscribes to.
const (
	AllRegister  = Prefix + ".from.*.register"
	AllHeartbeat = Prefix + ".from.*.heartbeat"
	AllEvents    = Prefix + ".from.*.events.>"
	AllAdmin     = Prefix + ".admin.>"
	AllEventLog  = Prefix + ".eventlog.*"
)

// NodeFromSubject returns the node token of a flotilla.v1.from.<node>.… subject.
func NodeFromSubject(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, Prefix+".from.")
	if !ok {
		return "", false
	}
	tok, _, ok := strings.Cut(rest, ".")
	return strings.ReplaceAll(tok, "~", "."), ok && tok != ""
}

// TaskFromEventsSubject returns the task id of a flotilla.v1.from.<node>.events.<task> subject.
func TaskFromEventsSubject(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, Prefix+".from.")
	if !ok {
		return "", false
	}
	_, rest, ok = strings.Cut(rest, ".")
	if !ok {
		return "", false
	}
	task, ok := strings.CutPrefix(rest, "events.")
	if !ok || task == "" || strings.Contains(task, ".") {
		return "", false
	}
	return task, true
}

// AgentPermissions lists the subjects a node may publish and subscribe to.
func AgentPermissions(node string) (publish, subscribe []string) {
	return []string{FromNode(node) + ".>"}, []string{ToNode(node) + ".>", InboxPrefix(node) + ".>"}
}
