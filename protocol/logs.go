package protocol

// AdminLogs asks for a node's newest task events from the controller's event
// history: LogsRequest, reply []Event (oldest first).
const AdminLogs = "logs"

// LogsRequest names the node and how many of its newest events to return
// (0: all the history keeps).
type LogsRequest struct {
	Node  string `json:"node"`
	Limit int    `json:"limit,omitempty"`
}
