package rules

import (
	"log/slog"

	"github.com/google/uuid"
	"github.com/sepal-fl/sepal/state"
)

// Events writes the log lines every implementation writes alike, so that
// the operator reads the same whatever keeps the state. A nil Logger
// writes nothing.
type Events struct{ Log *slog.Logger }

func (e Events) on() bool { return e.Log != nil }

// NodeJoined logs a node created, with the identity of its client
// certificate when it has one (mutual TLS).
func (e Events) NodeJoined(id int64, pingInterval float64, identity string) {
	if !e.on() {
		return
	}
	if identity != "" {
		e.Log.Info("node joined", "node_id", id, "ping_interval", pingInterval, "identity", identity)
		return
	}
	e.Log.Info("node joined", "node_id", id, "ping_interval", pingInterval)
}

// NodeDeleted logs a node that left through DeleteNode, with the number of
// TaskIns it never pulled.
func (e Events) NodeDeleted(id int64, pingInterval float64, undelivered int) {
	if e.on() {
		e.Log.Info("node left", "node_id", id, "ping_interval", pingInterval, "reason", "delete_node", "undelivered_tasks", undelivered)
	}
}

// NodeMissedPing logs, once, a node found past its ping interval.
func (e Events) NodeMissedPing(id int64, pingInterval float64) {
	if e.on() {
		e.Log.Info("node left", "node_id", id, "ping_interval", pingInterval, "reason", "missed_ping")
	}
}

// NodeBack logs a node that pinged again after it was found offline.
func (e Events) NodeBack(id int64, pingInterval float64) {
	if e.on() {
		e.Log.Info("node back online", "node_id", id, "ping_interval", pingInterval)
	}
}

// RunCreated logs a new run.
func (e Events) RunCreated(id int64) {
	if e.on() {
		e.Log.Info("run created", "run_id", id)
	}
}

// TaskExpired logs (at debug level) one TaskIns forgotten by the sweep.
func (e Events) TaskExpired(id uuid.UUID, run int64, delivered, answered bool) {
	if e.on() {
		e.Log.Debug("task expired", "task_id", id, "run_id", run, "delivered", delivered, "answered", answered)
	}
}

// TasksExpired logs how many TaskIns one sweep forgot (none: no line).
func (e Events) TasksExpired(n int) {
	if e.on() && n > 0 {
		e.Log.Info("expired tasks forgotten", "tasks", n)
	}
}

// ResultDiscarded logs a TaskRes accepted but not stored, because its
// TaskIns already has one (or had one delivered).
func (e Events) ResultDiscarded(ins uuid.UUID, node int64) {
	if e.on() {
		e.Log.Info("result discarded: its TaskIns already has one", "task_ins_id", ins, "node_id", node)
	}
}

// NodeEvicted logs a node CreateNode forgot to make room under a limit.
func (e Events) NodeEvicted(n state.Evicted) {
	if e.on() {
		e.Log.Info("node left", "node_id", n.ID, "ping_interval", n.PingInterval, "reason", "evicted", "limit", n.Limit)
	}
}

// NodeRevoked logs a node RevokeNodes forgot: its client certificate was
// revoked.
func (e Events) NodeRevoked(n state.Revoked) {
	if e.on() {
		e.Log.Info("node left", "node_id", n.ID, "ping_interval", n.PingInterval, "reason", "certificate_revoked",
			"identity", n.Identity, "certificate", n.Certificate, "undelivered_tasks", n.Undelivered)
	}
}
