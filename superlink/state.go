package superlink

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto"
)

// Error codes and reason of the result 1.8.0 makes up for a TaskIns whose
// consumer is offline.
const (
	nodeUnavailableCode   = 3
	nodeUnavailableReason = "Error: Node Unavailable - The destination node is currently unavailable. It exceeds the time limit specified in its last ping."
)

// maxPingInterval caps ping_interval so that now + ping_interval stays a
// valid time; a century is "forever" for a SuperNode.
const maxPingInterval = 100 * 365 * 24 * time.Hour

// expiryGrace is how long after its ttl (counted from pushed_at, on the
// SuperLink's clock) a TaskIns and its result are kept before the sweep
// forgets them, so that a result pushed just in time can still be pulled.
const expiryGrace = time.Minute

// deliveredAtLayout is Python's datetime.isoformat() for an aware UTC time
// with microseconds, as 1.8.0 writes delivered_at.
const deliveredAtLayout = "2006-01-02T15:04:05.000000+00:00"

type node struct {
	id           int64
	pingInterval float64
	onlineUntil  time.Time
	offline      bool // a missed ping was noticed and logged
	queue        []uuid.UUID
}

type insEntry struct {
	msg       *flwrproto.TaskIns
	expires   time.Time // pushed_at + ttl + expiryGrace: the sweep forgets it then
	delivered bool
	answered  bool // a TaskRes for it is stored
	blobs     []*blob
}

// goneEntry remembers a TaskIns whose result PullTaskRes delivered (the real
// one or NODE_UNAVAILABLE), until the TaskIns would have expired, so that a
// late or repeated TaskRes from its consumer is accepted and discarded
// rather than refused: a 1.8.0 SuperNode retries a refused PushTaskRes
// forever and would never pull another task.
type goneEntry struct {
	consumer int64
	until    time.Time
}

type resEntry struct {
	msg   *flwrproto.TaskRes
	blobs []*blob
}

// state is the in-memory SuperLink state shared by the Fleet and Driver
// services. All methods are safe for concurrent use; each holds mu for its
// whole effect, so every RPC is atomic with respect to the others.
type state struct {
	log  *slog.Logger
	now  func() time.Time
	rand io.Reader

	mu      sync.Mutex
	nodes   map[int64]*node
	order   []int64 // node ids in join order, for GetNodes
	runs    map[int64]bool
	ins     map[uuid.UUID]*insEntry
	res     map[uuid.UUID]*resEntry // keyed by the TaskIns id it answers
	gone    map[uuid.UUID]goneEntry // TaskIns whose result was delivered
	interns *interner
}

func newState(log *slog.Logger, now func() time.Time, rand io.Reader) *state {
	return &state{
		log:     log,
		now:     now,
		rand:    rand,
		nodes:   map[int64]*node{},
		runs:    map[int64]bool{},
		ins:     map[uuid.UUID]*insEntry{},
		res:     map[uuid.UUID]*resEntry{},
		gone:    map[uuid.UUID]goneEntry{},
		interns: newInterner(),
	}
}

// randomID draws a random signed 64-bit id that is not 0 and not in taken.
// Called with mu held.
func (s *state) randomID(taken func(int64) bool) (int64, error) {
	var b [8]byte
	for {
		if _, err := io.ReadFull(s.rand, b[:]); err != nil {
			return 0, status.Errorf(codes.Internal, "superlink: reading random id: %v", err)
		}
		id := int64(binary.LittleEndian.Uint64(b[:]))
		if id != 0 && !taken(id) {
			return id, nil
		}
	}
}

func (s *state) newUUID() (uuid.UUID, error) {
	id, err := uuid.NewRandomFromReader(s.rand)
	if err != nil {
		return uuid.UUID{}, status.Errorf(codes.Internal, "superlink: reading random task id: %v", err)
	}
	return id, nil
}

func checkPingInterval(v float64) (time.Duration, error) {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "superlink: ping_interval must be a finite number of seconds >= 0, got %v", v)
	}
	d := time.Duration(v * float64(time.Second))
	if v*float64(time.Second) > float64(maxPingInterval) {
		d = maxPingInterval
	}
	return d, nil
}

func (s *state) createNode(pingInterval float64) (int64, error) {
	d, err := checkPingInterval(pingInterval)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id, err := s.randomID(func(id int64) bool { return s.nodes[id] != nil })
	if err != nil {
		return 0, err
	}
	s.nodes[id] = &node{id: id, pingInterval: pingInterval, onlineUntil: s.now().Add(d)}
	s.order = append(s.order, id)
	s.log.Info("node joined", "node_id", id, "ping_interval", pingInterval)
	return id, nil
}

func (s *state) deleteNode(id int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[id]
	if n == nil {
		return status.Errorf(codes.NotFound, "superlink: node %d does not exist (never created, or already deleted)", id)
	}
	delete(s.nodes, id)
	for i, o := range s.order {
		if o == id {
			s.order = append(s.order[:i], s.order[i+1:]...)
			break
		}
	}
	// Its undelivered TaskIns stay: the next PullTaskRes for them answers
	// with the NODE_UNAVAILABLE result and deletes them.
	s.log.Info("node left", "node_id", id, "ping_interval", n.pingInterval, "reason", "delete_node", "undelivered_tasks", len(n.queue))
	return nil
}

// ping refreshes a node's liveness; false for an unknown node, as in 1.8.0.
func (s *state) ping(id int64, pingInterval float64) (bool, error) {
	d, err := checkPingInterval(pingInterval)
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[id]
	if n == nil {
		return false, nil
	}
	n.onlineUntil = s.now().Add(d)
	n.pingInterval = pingInterval
	if n.offline {
		n.offline = false
		s.log.Info("node back online", "node_id", id, "ping_interval", pingInterval)
	}
	return true, nil
}

// online reports whether n is online at now, logging the first time a
// missed ping is noticed. Called with mu held.
func (s *state) online(n *node, now time.Time) bool {
	if n.onlineUntil.After(now) {
		return true
	}
	if !n.offline {
		n.offline = true
		s.log.Info("node left", "node_id", n.id, "ping_interval", n.pingInterval, "reason", "missed_ping")
	}
	return false
}

// sweep notices nodes that missed their ping, so that leaving is logged
// even when nobody asks for them, and forgets every TaskIns (with its
// result, if any) whose ttl ran out more than expiryGrace ago: a ServerApp
// that went away never pulls them, and they may hold large arrays. A 1.8.0
// SuperNode cannot answer such a task anyway (its TaskRes ttl would be <= 0).
func (s *state) sweep() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for _, id := range s.order {
		s.online(s.nodes[id], now)
	}
	for id, g := range s.gone {
		if now.After(g.until) {
			delete(s.gone, id)
		}
	}
	expired := 0
	for id, e := range s.ins {
		if now.After(e.expires) {
			s.log.Debug("task expired", "task_id", id, "run_id", e.msg.RunId, "delivered", e.delivered, "answered", e.answered)
			s.deletePair(id)
			expired++
		}
	}
	if expired == 0 {
		return
	}
	s.log.Info("expired tasks forgotten", "tasks", expired)
	for _, n := range s.nodes {
		n.queue = slices.DeleteFunc(n.queue, func(id uuid.UUID) bool { return s.ins[id] == nil })
		if len(n.queue) == 0 {
			n.queue = nil
		}
	}
}

func (s *state) createRun() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, err := s.randomID(func(id int64) bool { return s.runs[id] })
	if err != nil {
		return 0, err
	}
	s.runs[id] = true
	s.log.Info("run created", "run_id", id)
	return id, nil
}

// getNodes returns the online nodes in join order, or nothing for an
// unknown run (as 1.8.0).
func (s *state) getNodes(runID int64) []*flwrproto.Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.runs[runID] {
		return nil
	}
	now := s.now()
	var out []*flwrproto.Node
	for _, id := range s.order {
		if s.online(s.nodes[id], now) {
			out = append(out, &flwrproto.Node{NodeId: id})
		}
	}
	return out
}

func (s *state) pushedAt() float64 {
	return float64(s.now().UnixMicro()) / 1e6
}

// pushTaskIns validates every TaskIns, then stores them all or none. The
// messages are owned by the state from now on.
func (s *state) pushTaskIns(list []*flwrproto.TaskIns) ([]string, error) {
	if len(list) == 0 {
		return nil, status.Error(codes.InvalidArgument, "superlink: PushTaskIns: task_ins_list must not be empty")
	}
	for i, t := range list {
		if err := validateTaskIns(t); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "superlink: PushTaskIns: task_ins_list[%d]: %v", i, err)
		}
	}
	// Hash the large arrays before taking the lock.
	prepared := make([][]preparedBlob, len(list))
	for i, t := range list {
		prepared[i] = prepareBlobs(t.Task.Recordset)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	for i, t := range list {
		if !s.runs[t.RunId] {
			return nil, status.Errorf(codes.NotFound, "superlink: PushTaskIns: task_ins_list[%d]: run %d does not exist: call CreateRun first", i, t.RunId)
		}
		if c := t.Task.Consumer.NodeId; s.nodes[c] == nil {
			return nil, status.Errorf(codes.NotFound, "superlink: PushTaskIns: task_ins_list[%d]: consumer node %d does not exist: send tasks to a node from GetNodes", i, c)
		}
	}
	ids := make([]string, len(list))
	now := s.now()
	pushed := float64(now.UnixMicro()) / 1e6
	for i, t := range list {
		id, err := s.newUUID()
		if err != nil {
			return nil, err
		}
		for s.ins[id] != nil {
			if id, err = s.newUUID(); err != nil {
				return nil, err
			}
		}
		t.TaskId = id.String()
		t.Task.PushedAt = pushed
		e := &insEntry{msg: t, expires: expiry(now, t.Task.Ttl), blobs: s.interns.intern(prepared[i])}
		s.ins[id] = e
		n := s.nodes[t.Task.Consumer.NodeId]
		n.queue = append(n.queue, id)
		ids[i] = t.TaskId
	}
	return ids, nil
}

// expiry is when the sweep forgets a TaskIns pushed at now with ttl
// seconds (validated finite and > 0).
func expiry(now time.Time, ttl float64) time.Time {
	d := maxPingInterval
	if ttl*float64(time.Second) < float64(maxPingInterval) {
		d = time.Duration(ttl * float64(time.Second))
	}
	return now.Add(d + expiryGrace)
}

// pullTaskIns hands at most one undelivered TaskIns to node id, marking it
// delivered so that it is never handed out again. Unknown and anonymous
// nodes get nothing, as in 1.8.0.
func (s *state) pullTaskIns(id int64) []*flwrproto.TaskIns {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[id]
	if n == nil {
		return nil
	}
	for len(n.queue) > 0 {
		tid := n.queue[0]
		n.queue[0] = uuid.UUID{}
		n.queue = n.queue[1:]
		e := s.ins[tid]
		if e == nil || e.delivered {
			continue
		}
		e.delivered = true
		e.msg.Task.DeliveredAt = s.now().UTC().Format(deliveredAtLayout)
		// The stored message is not changed again after delivery, so the
		// response may share it while it is marshalled outside the lock.
		return []*flwrproto.TaskIns{e.msg}
	}
	if len(n.queue) == 0 {
		n.queue = nil
	}
	return nil
}

// pushTaskRes validates every TaskRes against the TaskIns it answers, then
// stores them all or none.
func (s *state) pushTaskRes(list []*flwrproto.TaskRes) (map[string]uint32, error) {
	if len(list) == 0 {
		return nil, status.Error(codes.InvalidArgument, "superlink: PushTaskRes: task_res_list must not be empty")
	}
	parents := make([]uuid.UUID, len(list))
	for i, t := range list {
		p, err := validateTaskRes(t)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "superlink: PushTaskRes: task_res_list[%d]: %v", i, err)
		}
		parents[i] = p
	}
	prepared := make([][]preparedBlob, len(list))
	for i, t := range list {
		prepared[i] = prepareBlobs(t.Task.Recordset)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[uuid.UUID]bool{}
	late := make([]bool, len(list)) // accepted, not stored
	for i, t := range list {
		p := parents[i]
		e := s.ins[p]
		if g, ok := s.gone[p]; e == nil && ok && g.consumer == t.Task.Producer.NodeId && !seen[p] {
			late[i], seen[p] = true, true
			continue
		}
		if e == nil {
			return nil, status.Errorf(codes.NotFound, "superlink: PushTaskRes: task_res_list[%d]: ancestry names TaskIns %s, which does not exist (never pushed, or already answered and pulled)", i, p)
		}
		if want := e.msg.Task.Consumer.NodeId; t.Task.Producer.NodeId != want {
			return nil, status.Errorf(codes.PermissionDenied, "superlink: PushTaskRes: task_res_list[%d]: node %d may not answer TaskIns %s, which was sent to node %d", i, t.Task.Producer.NodeId, p, want)
		}
		if t.RunId != e.msg.RunId {
			return nil, status.Errorf(codes.InvalidArgument, "superlink: PushTaskRes: task_res_list[%d]: run_id %d differs from run %d of TaskIns %s", i, t.RunId, e.msg.RunId, p)
		}
		if !e.delivered {
			return nil, status.Errorf(codes.FailedPrecondition, "superlink: PushTaskRes: task_res_list[%d]: TaskIns %s was not pulled yet: call PullTaskIns first", i, p)
		}
		if seen[p] {
			return nil, status.Errorf(codes.FailedPrecondition, "superlink: PushTaskRes: task_res_list[%d]: TaskIns %s already has a result", i, p)
		}
		late[i] = e.answered // a retry of a push that was stored
		seen[p] = true
	}
	results := make(map[string]uint32, len(list))
	pushed := s.pushedAt()
	for i, t := range list {
		id, err := s.newUUID()
		if err != nil {
			return nil, err
		}
		if late[i] {
			s.log.Info("result discarded: its TaskIns already has one", "task_ins_id", parents[i], "node_id", t.Task.Producer.NodeId)
			results[id.String()] = 0
			continue
		}
		t.TaskId = id.String()
		t.Task.PushedAt = pushed
		s.ins[parents[i]].answered = true
		s.res[parents[i]] = &resEntry{msg: t, blobs: s.interns.intern(prepared[i])}
		results[t.TaskId] = 0
	}
	return results, nil
}

// pullTaskRes returns the results for the given TaskIns ids, in the order
// asked, and deletes each delivered TaskIns/TaskRes pair. For a TaskIns
// without a result whose consumer is offline or deleted it makes up the
// NODE_UNAVAILABLE result, as 1.8.0 does.
func (s *state) pullTaskRes(taskIDs []string) ([]*flwrproto.TaskRes, error) {
	ids := make([]uuid.UUID, 0, len(taskIDs))
	seen := map[uuid.UUID]bool{}
	for i, t := range taskIDs {
		id, err := uuid.Parse(t)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "superlink: PullTaskRes: task_ids[%d] %q is not a task id (a UUID from PushTaskIns): %v", i, t, err)
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	delivered := now.UTC().Format(deliveredAtLayout)
	var out []*flwrproto.TaskRes
	for _, id := range ids {
		e := s.ins[id]
		if e == nil {
			continue
		}
		if r := s.res[id]; r != nil {
			r.msg.Task.DeliveredAt = delivered
			out = append(out, r.msg)
			s.retire(id)
			continue
		}
		n := s.nodes[e.msg.Task.Consumer.NodeId]
		if n != nil && s.online(n, now) {
			continue
		}
		r, err := s.nodeUnavailable(e.msg, now)
		if err != nil {
			return nil, err
		}
		r.Task.DeliveredAt = delivered
		out = append(out, r)
		s.retire(id)
	}
	return out, nil
}

// nodeUnavailable makes up the result of a TaskIns whose consumer is gone,
// field for field as 1.8.0's make_node_unavailable_taskres.
func (s *state) nodeUnavailable(ins *flwrproto.TaskIns, now time.Time) (*flwrproto.TaskRes, error) {
	id, err := s.newUUID()
	if err != nil {
		return nil, err
	}
	t := ins.Task
	cur := float64(now.UnixMicro()) / 1e6
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
			Error:     &flwrproto.Error{Code: nodeUnavailableCode, Reason: nodeUnavailableReason},
		},
	}, nil
}

// retire forgets a TaskIns whose result was delivered, remembering its
// consumer until it would have expired. Called with mu held.
func (s *state) retire(id uuid.UUID) {
	if e := s.ins[id]; e != nil {
		s.gone[id] = goneEntry{consumer: e.msg.Task.Consumer.NodeId, until: e.expires}
	}
	s.deletePair(id)
}

// deletePair forgets a TaskIns and its result and releases their arrays.
// Called with mu held.
func (s *state) deletePair(id uuid.UUID) {
	if e := s.ins[id]; e != nil {
		s.interns.release(e.blobs)
		delete(s.ins, id)
	}
	if r := s.res[id]; r != nil {
		s.interns.release(r.blobs)
		delete(s.res, id)
	}
}

// stats is a snapshot for tests and benchmarks.
type stats struct {
	Nodes, Runs, TaskIns, TaskRes, Blobs int
	BlobBytes                            int64
}

func (s *state) stats() stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, b := s.interns.size()
	return stats{Nodes: len(s.nodes), Runs: len(s.runs), TaskIns: len(s.ins), TaskRes: len(s.res), Blobs: n, BlobBytes: b}
}

func (st stats) String() string {
	return fmt.Sprintf("nodes=%d runs=%d task_ins=%d task_res=%d blobs=%d blob_bytes=%d", st.Nodes, st.Runs, st.TaskIns, st.TaskRes, st.Blobs, st.BlobBytes)
}
