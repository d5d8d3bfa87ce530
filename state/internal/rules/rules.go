// Package rules holds what every store of the Flower 1.8.0 state applies
// alike: the validation of pushed tasks, the errors they answer, ids,
// times and the events they log, so that all answer word for word.
package rules

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
)

// The rules of Flower 1.8.0 that every implementation applies alike.
const (
	// MaxPingInterval caps ping_interval so that now + ping_interval stays
	// a valid time; a century is "forever" for a SuperNode.
	MaxPingInterval = 100 * 365 * 24 * time.Hour

	// ExpiryGrace is how long after its ttl (counted from pushed_at, on the
	// SuperLink's clock) a TaskIns and its result are kept before the sweep
	// forgets them, so that a result pushed just in time can still be
	// pulled.
	ExpiryGrace = time.Minute

	// DeliveredAtLayout is Python's datetime.isoformat() for an aware UTC
	// time with microseconds, as 1.8.0 writes delivered_at.
	DeliveredAtLayout = "2006-01-02T15:04:05.000000+00:00"

	// MinCreatedAt is 1.8.0's lower bound for created_at (2024-03-27).
	MinCreatedAt = 1711497600.0
)

// CheckPingInterval validates a ping_interval in seconds and returns it as a
// duration, capped at MaxPingInterval.
func CheckPingInterval(v float64) (time.Duration, error) {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "ping_interval must be a finite number of seconds >= 0, got %v", v)
	}
	if v*float64(time.Second) > float64(MaxPingInterval) {
		return MaxPingInterval, nil
	}
	return time.Duration(v * float64(time.Second)), nil
}

// Expiry is when the sweep forgets a TaskIns pushed at now with ttl
// seconds (validated finite and > 0): ttl + ExpiryGrace later.
func Expiry(now time.Time, ttl float64) time.Time {
	d := MaxPingInterval
	if ttl*float64(time.Second) < float64(MaxPingInterval) {
		d = time.Duration(ttl * float64(time.Second))
	}
	return now.Add(d + ExpiryGrace)
}

// Seconds is t as 1.8.0's float unix seconds, to the microsecond (pushed_at,
// created_at).
func Seconds(t time.Time) float64 { return float64(t.UnixMicro()) / 1e6 }

// DeliveredAt is t as 1.8.0 writes delivered_at.
func DeliveredAt(t time.Time) string { return t.UTC().Format(DeliveredAtLayout) }

// RandomID draws a random signed 64-bit id that is not 0 and for which
// taken is false (taken may be nil).
func RandomID(r io.Reader, taken func(int64) bool) (int64, error) {
	var b [8]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, status.Errorf(codes.Internal, "reading a random id: %v", err)
		}
		id := int64(binary.LittleEndian.Uint64(b[:]))
		if id != 0 && (taken == nil || !taken(id)) {
			return id, nil
		}
	}
}

// NewTaskID draws a random (version 4) task id.
func NewTaskID(r io.Reader) (uuid.UUID, error) {
	id, err := uuid.NewRandomFromReader(r)
	if err != nil {
		return uuid.UUID{}, status.Errorf(codes.Internal, "reading a random task id: %v", err)
	}
	return id, nil
}

// NodeUnavailable makes up the result of a TaskIns whose consumer is gone,
// field for field as 1.8.0's make_node_unavailable_taskres, with id and
// created at now.
func NodeUnavailable(ins *flwrproto.TaskIns, id uuid.UUID, now time.Time) *flwrproto.TaskRes {
	t := ins.Task
	cur := Seconds(now)
	ttl := t.Ttl - (cur - t.CreatedAt)
	if ttl < 0 {
		ttl = 0
	}
	return &flwrproto.TaskRes{
		TaskId:  id.String(),
		GroupId: ins.GroupId,
		RunId:   ins.RunId,
		Task: &flwrproto.Task{
			Producer:  &flwrproto.Node{NodeId: t.Consumer.NodeId},
			Consumer:  &flwrproto.Node{NodeId: t.Producer.NodeId},
			CreatedAt: cur,
			Ttl:       ttl,
			Ancestry:  []string{ins.TaskId},
			TaskType:  t.TaskType,
			Error:     &flwrproto.Error{Code: state.NodeUnavailableCode, Reason: state.NodeUnavailableReason},
		},
	}
}

// ValidateTaskInsList checks a PushTaskIns request against 1.8.0's rules
// (and a consumer that is a real node: anonymous nodes are not supported),
// returning InvalidArgument naming the first bad element.
func ValidateTaskInsList(list []*flwrproto.TaskIns) error {
	if len(list) == 0 {
		return status.Error(codes.InvalidArgument, "PushTaskIns: task_ins_list must not be empty")
	}
	for i, t := range list {
		if err := validateTaskIns(t); err != nil {
			return status.Errorf(codes.InvalidArgument, "PushTaskIns: task_ins_list[%d]: %v", i, err)
		}
	}
	return nil
}

// ValidateTaskResList checks a PushTaskRes request against 1.8.0's rules
// and returns, for each element, the id of the TaskIns it answers
// (ancestry[0]); InvalidArgument naming the first bad element.
func ValidateTaskResList(list []*flwrproto.TaskRes) ([]uuid.UUID, error) {
	if len(list) == 0 {
		return nil, status.Error(codes.InvalidArgument, "PushTaskRes: task_res_list must not be empty")
	}
	parents := make([]uuid.UUID, len(list))
	for i, t := range list {
		p, err := validateTaskRes(t)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "PushTaskRes: task_res_list[%d]: %v", i, err)
		}
		parents[i] = p
	}
	return parents, nil
}

// ParseTaskIDs parses PullTaskRes's task ids, dropping repeats and keeping
// the order; InvalidArgument for one that is not a UUID.
func ParseTaskIDs(taskIDs []string) ([]uuid.UUID, error) {
	ids := make([]uuid.UUID, 0, len(taskIDs))
	seen := make(map[uuid.UUID]bool, len(taskIDs))
	for i, t := range taskIDs {
		id, err := uuid.Parse(t)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "PullTaskRes: task_ids[%d] %q is not a task id (a UUID from PushTaskIns): %v", i, t, err)
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// The errors the implementations return for a request that is well formed
// but does not fit the state, worded alike everywhere.

// ErrNodeNotFound is DeleteNode's answer for an unknown node.
func ErrNodeNotFound(id int64) error {
	return status.Errorf(codes.NotFound, "DeleteNode: node %d does not exist (never created, or already deleted)", id)
}

// ErrIdentity is the answer to a node's call made with another client
// certificate than the one it was created with.
func ErrIdentity(method string, id int64) error {
	return status.Errorf(codes.PermissionDenied, "%s: node %d was created with another client certificate; a node may only act for itself", method, id)
}

// CheckIdentity is the answer to method's call for node id made with the
// client certificate identity ("" when the link does not authenticate
// nodes), the node having been created with known: nil when they match or
// identity is "", ErrIdentity otherwise.
func CheckIdentity(method string, id int64, identity, known string) error {
	if identity != "" && identity != known {
		return ErrIdentity(method, id)
	}
	return nil
}

// ErrRunNotFound is PushTaskIns's answer for element i naming an unknown run.
func ErrRunNotFound(i int, run int64) error {
	return status.Errorf(codes.NotFound, "PushTaskIns: task_ins_list[%d]: run %d does not exist: call CreateRun first", i, run)
}

// ErrConsumerNotFound is PushTaskIns's answer for element i naming an
// unknown consumer node.
func ErrConsumerNotFound(i int, node int64) error {
	return status.Errorf(codes.NotFound, "PushTaskIns: task_ins_list[%d]: consumer node %d does not exist: send tasks to a node from GetNodes", i, node)
}

// ErrTaskInsNotFound is PushTaskRes's answer for element i answering a
// TaskIns that is not stored.
func ErrTaskInsNotFound(i int, ins uuid.UUID) error {
	return status.Errorf(codes.NotFound, "PushTaskRes: task_res_list[%d]: ancestry names TaskIns %s, which does not exist (never pushed, or already answered and pulled)", i, ins)
}

// ErrNotConsumer is PushTaskRes's answer for element i from a node other
// than the TaskIns's consumer.
func ErrNotConsumer(i int, producer int64, ins uuid.UUID, consumer int64) error {
	return status.Errorf(codes.PermissionDenied, "PushTaskRes: task_res_list[%d]: node %d may not answer TaskIns %s, which was sent to node %d", i, producer, ins, consumer)
}

// ErrRunDiffers is PushTaskRes's answer for element i whose run is not its
// TaskIns's.
func ErrRunDiffers(i int, run int64, ins uuid.UUID, insRun int64) error {
	return status.Errorf(codes.InvalidArgument, "PushTaskRes: task_res_list[%d]: run_id %d differs from run %d of TaskIns %s", i, run, insRun, ins)
}

// ErrNotPulled is PushTaskRes's answer for element i answering a TaskIns
// not delivered yet.
func ErrNotPulled(i int, ins uuid.UUID) error {
	return status.Errorf(codes.FailedPrecondition, "PushTaskRes: task_res_list[%d]: TaskIns %s was not pulled yet: call PullTaskIns first", i, ins)
}

// ErrAnsweredTwice is PushTaskRes's answer for element i answering a TaskIns
// that an earlier element of the same request answers.
func ErrAnsweredTwice(i int, ins uuid.UUID) error {
	return status.Errorf(codes.FailedPrecondition, "PushTaskRes: task_res_list[%d]: TaskIns %s already has a result", i, ins)
}

// ParentFacts is what a store knows of the TaskIns a TaskRes answers (its
// parent), for AcceptTaskRes.
type ParentFacts struct {
	// Stored is true while the TaskIns is stored; Gone is true when it is
	// not, but its result was delivered and the store still remembers it
	// (then only Consumer and Identity are known).
	Stored, Gone bool
	// Consumer is the node the TaskIns was sent to, created with the
	// client certificate Identity.
	Consumer int64
	Identity string
	// Run is the TaskIns's run; Delivered is true once a PullTaskIns
	// delivered it, Answered once a result of it is stored.
	Run                 int64
	Delivered, Answered bool
}

// AcceptTaskRes decides element i of a PushTaskRes request, res (validated
// by ValidateTaskResList, answering parent), pushed with the client
// certificate identity, given what the store knows of parent. seen holds
// the parents that earlier elements of the request answer; AcceptTaskRes
// adds parent to it when it accepts res. It returns the error the whole
// request fails with, or whether res is late: accepted but not to be
// stored, as a retry of a push whose result was stored (or delivered and
// forgotten already).
func AcceptTaskRes(i int, res *flwrproto.TaskRes, parent uuid.UUID, identity string, f ParentFacts, seen map[uuid.UUID]bool) (late bool, err error) {
	producer := res.Task.Producer.NodeId
	if !f.Stored {
		if f.Gone && f.Consumer == producer && !seen[parent] {
			if err := CheckIdentity("PushTaskRes", producer, identity, f.Identity); err != nil {
				return false, err
			}
			seen[parent] = true
			return true, nil
		}
		return false, ErrTaskInsNotFound(i, parent)
	}
	if producer != f.Consumer {
		return false, ErrNotConsumer(i, producer, parent, f.Consumer)
	}
	if err := CheckIdentity("PushTaskRes", producer, identity, f.Identity); err != nil {
		return false, err
	}
	if res.RunId != f.Run {
		return false, ErrRunDiffers(i, res.RunId, parent, f.Run)
	}
	if !f.Delivered {
		return false, ErrNotPulled(i, parent)
	}
	if seen[parent] {
		return false, ErrAnsweredTwice(i, parent)
	}
	seen[parent] = true
	return f.Answered, nil
}

// problems collects what is wrong with one task, in 1.8.0's order.
type problems []string

func (p *problems) addf(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return errors.New(strings.Join(p, "; "))
}

// validateCommon checks what 1.8.0's validate_task_ins_or_res checks for
// both kinds. It returns false when task is missing (nothing else can be
// checked then).
func validateCommon(p *problems, taskID string, t *flwrproto.Task) bool {
	if taskID != "" {
		p.addf("task_id must be empty (the SuperLink assigns it), got %q", taskID)
	}
	if t == nil {
		p.addf("task is missing")
		return false
	}
	if c := t.CreatedAt; math.IsNaN(c) || math.IsInf(c, 0) || c < MinCreatedAt {
		p.addf("task.created_at must be unix seconds after %.0f, got %v", MinCreatedAt, c)
	}
	if t.DeliveredAt != "" {
		p.addf("task.delivered_at must be empty (the SuperLink sets it), got %q", t.DeliveredAt)
	}
	if ttl := t.Ttl; math.IsNaN(ttl) || math.IsInf(ttl, 0) || ttl <= 0 {
		p.addf("task.ttl must be higher than zero, got %v", ttl)
	}
	if t.TaskType == "" {
		p.addf("task.task_type must be set")
	}
	if (t.Recordset != nil) == (t.Error != nil) {
		p.addf("task must carry exactly one of recordset or error")
	}
	return true
}

// validateNode checks a node reference as 1.8.0 does: anonymous with id 0,
// or not anonymous with an id.
func validateNode(p *problems, field string, n *flwrproto.Node) {
	switch {
	case n == nil:
		p.addf("%s is missing", field)
	case n.Anonymous && n.NodeId != 0:
		p.addf("%s is anonymous but has node_id %d", field, n.NodeId)
	case !n.Anonymous && n.NodeId == 0:
		p.addf("%s is not anonymous but has node_id 0", field)
	}
}

// validateTaskIns checks a TaskIns pushed by a ServerApp: 1.8.0's rules,
// and a consumer that is a real node.
func validateTaskIns(t *flwrproto.TaskIns) error {
	var p problems
	if t == nil {
		return errors.New("TaskIns is missing")
	}
	if validateCommon(&p, t.TaskId, t.Task) {
		task := t.Task
		switch pr := task.Producer; {
		case pr == nil:
			p.addf("task.producer is missing")
		case pr.NodeId != 0 || !pr.Anonymous:
			p.addf("task.producer must be {node_id: 0, anonymous: true}, got {node_id: %d, anonymous: %v}", pr.NodeId, pr.Anonymous)
		}
		switch c := task.Consumer; {
		case c == nil:
			p.addf("task.consumer is missing")
		case c.Anonymous || c.NodeId == 0:
			p.addf("task.consumer must name a node from GetNodes (node_id != 0, not anonymous)")
		}
		if len(task.Ancestry) != 0 {
			p.addf("task.ancestry must be empty for a TaskIns")
		}
	}
	return p.err()
}

// validateTaskRes checks a TaskRes pushed by a SuperNode and returns the
// id of the TaskIns it answers (ancestry[0]).
func validateTaskRes(t *flwrproto.TaskRes) (uuid.UUID, error) {
	var p problems
	if t == nil {
		return uuid.UUID{}, errors.New("TaskRes is missing")
	}
	var parent uuid.UUID
	if validateCommon(&p, t.TaskId, t.Task) {
		task := t.Task
		validateNode(&p, "task.producer", task.Producer)
		if task.Producer != nil && task.Producer.Anonymous {
			p.addf("task.producer must be the node that pulled the TaskIns, not anonymous")
		}
		validateNode(&p, "task.consumer", task.Consumer)
		if len(task.Ancestry) == 0 {
			p.addf("task.ancestry must hold the id of the TaskIns answered")
		} else {
			var err error
			if parent, err = uuid.Parse(task.Ancestry[0]); err != nil {
				p.addf("task.ancestry[0] %q is not a TaskIns id (a UUID): %v", task.Ancestry[0], err)
			}
		}
	}
	return parent, p.err()
}
