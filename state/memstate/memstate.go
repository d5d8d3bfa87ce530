// Package memstate is the SuperLink state in memory: the default, and the
// fastest. Nothing survives the process.
//
// Identical parameter arrays (Array.data of state.BlobMin bytes and more)
// are held once, content addressed (state.HashBlob, then a full compare)
// with reference counts, and released when the last task holding them is
// forgotten. A State is a state.BlobFinder, so the SuperLink's codec does
// not copy an array it already holds when it arrives again.
package memstate

import (
	"context"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/internal/rules"
	"github.com/sepal-fl/sepal/state/memlink"
)

// Options configure a State (state.Options). The zero value is ready to
// use.
type Options = state.Options

type node struct {
	id           int64
	identity     string
	cert         string // NewNode.Certificate
	pingInterval float64
	created      time.Time
	onlineUntil  time.Time
	offline      bool // a missed ping was noticed and logged
	queue        []uuid.UUID
}

type run struct {
	id        int64
	created   time.Time
	lastGroup string
	pushed    int
	pulled    int
	// delivered lists the TaskIns whose result PullTaskRes delivered and
	// that are kept until the run's next PullTaskRes does not ask for them
	// again (see PullTaskRes).
	delivered []uuid.UUID
}

type insEntry struct {
	// msg is the TaskIns; nil once its result was delivered (its arrays are
	// released then, and the fields below are all that is still needed).
	msg       *flwrproto.TaskIns
	run       int64
	consumer  int64
	identity  string    // of its consumer node when it was pushed
	expires   time.Time // pushed_at + ttl + ExpiryGrace: the sweep forgets it then
	delivered bool
	// answered: a TaskRes for it is stored, its node's or the
	// NODE_UNAVAILABLE one PullTaskRes made up (then the TaskIns may be
	// undelivered, and is never delivered after).
	answered     bool
	resDelivered bool // PullTaskRes delivered that TaskRes
	blobs        []*blob
}

// goneEntry remembers a TaskIns whose result PullTaskRes delivered (the real
// one or NODE_UNAVAILABLE), until the TaskIns would have expired, so that a
// late or repeated TaskRes from its consumer is accepted and discarded
// rather than refused: a 1.8.0 SuperNode retries a refused PushTaskRes
// forever and would never pull another task.
type goneEntry struct {
	consumer int64
	identity string
	until    time.Time
}

type resEntry struct {
	msg   *flwrproto.TaskRes
	blobs []*blob
}

// State is the in-memory state.State, and state.LinkState through the
// memlink store it embeds (the Flower 1.29.0 generation). Each method
// holds one mutex for its whole effect, so every call is atomic with
// respect to the others.
type State struct {
	*memlink.Store
	state.BlobHashes // the hashes the codec notes

	ev   rules.Events
	now  func() time.Time
	rand io.Reader

	mu       sync.Mutex
	closed   bool
	nodes    map[int64]*node
	order    []int64 // node ids in join order
	runs     map[int64]*run
	runOrder []*run // in creation order
	ins      map[uuid.UUID]*insEntry
	res      map[uuid.UUID]*resEntry // keyed by the TaskIns id it answers
	gone     map[uuid.UUID]goneEntry // TaskIns whose result was delivered
	interns  *interner
}

var (
	_ state.State      = (*State)(nil)
	_ state.LinkState  = (*State)(nil)
	_ state.BlobFinder = (*State)(nil)
)

// New returns an empty State.
func New(o Options) *State {
	o = o.WithDefaults()
	return &State{
		Store:   memlink.New(o),
		ev:      rules.Events{Log: o.Logger},
		now:     o.Now,
		rand:    o.Rand,
		nodes:   map[int64]*node{},
		runs:    map[int64]*run{},
		ins:     map[uuid.UUID]*insEntry{},
		res:     map[uuid.UUID]*resEntry{},
		gone:    map[uuid.UUID]goneEntry{},
		interns: newInterner(),
	}
}

var errClosed = status.Error(codes.Unavailable, "the SuperLink is stopping: its state is closed")

// lock takes mu, failing once the State is closed.
func (s *State) lock() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errClosed
	}
	return nil
}

// FindBlob returns a held array, for the codec (state.BlobFinder).
func (s *State) FindBlob(hash uint64, n int, eq func([]byte) bool) []byte {
	return s.interns.find(hash, n, eq)
}

// CreateNode registers a node, within nn's limits.
func (s *State) CreateNode(_ context.Context, nn state.NewNode) (int64, error) {
	d, err := rules.CheckPingInterval(nn.PingInterval)
	if err != nil {
		return 0, err
	}
	if err := s.lock(); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	now := s.now()
	room, err := s.room(nn, now)
	if err != nil {
		return 0, err
	}
	id, err := rules.RandomID(s.rand, func(id int64) bool { return s.nodes[id] != nil })
	if err != nil {
		return 0, err
	}
	for _, e := range room {
		s.forget(s.nodes[e.ID])
		s.ev.NodeEvicted(e)
	}
	s.nodes[id] = &node{id: id, identity: nn.Identity, cert: nn.Certificate, pingInterval: nn.PingInterval, created: now, onlineUntil: now.Add(d)}
	s.order = append(s.order, id)
	s.ev.NodeJoined(id, nn.PingInterval, nn.Identity)
	return id, nil
}

// room returns the nodes to forget so that nn fits its limits at now (none
// when it fits as things are), or the *state.NodeLimitError of a limit
// whose nodes are all online. Called with mu held; it changes nothing.
func (s *State) room(nn state.NewNode, now time.Time) ([]state.Evicted, error) {
	var out []state.Evicted
	total := len(s.nodes)
	if nn.MaxPerIdentity > 0 && nn.Identity != "" {
		count := 0
		for _, n := range s.nodes {
			if n.identity == nn.Identity {
				count++
			}
		}
		if count >= nn.MaxPerIdentity {
			n := s.offlineLongest(now, func(n *node) bool { return n.identity == nn.Identity })
			if n == nil {
				return nil, &state.NodeLimitError{Limit: state.LimitMaxPerIdentity, Max: nn.MaxPerIdentity, Identity: nn.Identity}
			}
			out = append(out, state.Evicted{ID: n.id, PingInterval: n.pingInterval, Limit: state.LimitMaxPerIdentity})
			total--
		}
	}
	if nn.MaxNodes > 0 && total >= nn.MaxNodes {
		n := s.offlineLongest(now, func(n *node) bool { return len(out) == 0 || n.id != out[0].ID })
		if n == nil {
			return nil, &state.NodeLimitError{Limit: state.LimitMaxNodes, Max: nn.MaxNodes}
		}
		out = append(out, state.Evicted{ID: n.id, PingInterval: n.pingInterval, Limit: state.LimitMaxNodes})
	}
	return out, nil
}

// offlineLongest returns the node for which match is true that is offline
// at now since the longest (the earliest online-until; the earliest joined
// of equals), or nil when every such node is online. Called with mu held.
func (s *State) offlineLongest(now time.Time, match func(*node) bool) *node {
	var best *node
	for _, id := range s.order {
		n := s.nodes[id]
		if n.onlineUntil.After(now) || !match(n) {
			continue
		}
		if best == nil || n.onlineUntil.Before(best.onlineUntil) {
			best = n
		}
	}
	return best
}

// forget removes n, as DeleteNode does, and returns the number of its
// TaskIns it never pulled. Its undelivered TaskIns stay: the next
// PullTaskRes for them answers with the NODE_UNAVAILABLE result (the
// pairs are forgotten once the run's ServerApp no longer asks for them).
// Called with mu held.
func (s *State) forget(n *node) int {
	delete(s.nodes, n.id)
	if i := slices.Index(s.order, n.id); i >= 0 {
		s.order = slices.Delete(s.order, i, i+1)
	}
	undelivered := 0
	for _, tid := range n.queue {
		if e := s.ins[tid]; e != nil && !e.delivered {
			undelivered++
		}
	}
	return undelivered
}

// DeleteNode forgets a node.
func (s *State) DeleteNode(_ context.Context, id int64, identity string) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	n := s.nodes[id]
	if n == nil {
		return rules.ErrNodeNotFound(id)
	}
	if err := rules.CheckIdentity("DeleteNode", id, identity, n.identity); err != nil {
		return err
	}
	s.ev.NodeDeleted(id, n.pingInterval, s.forget(n))
	return nil
}

// RevokeNodes forgets the nodes created with a certificate revoked.
func (s *State) RevokeNodes(_ context.Context, revoked func(string) bool) ([]int64, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var gone []*node
	for _, id := range s.order {
		if n := s.nodes[id]; n.cert != "" && revoked(n.cert) {
			gone = append(gone, n)
		}
	}
	ids := make([]int64, 0, len(gone))
	for _, n := range gone {
		u := s.forget(n)
		s.ev.NodeRevoked(state.Revoked{ID: n.id, PingInterval: n.pingInterval, Identity: n.identity, Certificate: n.cert, Undelivered: u})
		ids = append(ids, n.id)
	}
	return ids, nil
}

// Ping refreshes a node's liveness; false for an unknown node.
func (s *State) Ping(_ context.Context, id int64, pingInterval float64, identity string) (bool, error) {
	d, err := rules.CheckPingInterval(pingInterval)
	if err != nil {
		return false, err
	}
	if err := s.lock(); err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	n := s.nodes[id]
	if n == nil {
		return false, nil
	}
	if err := rules.CheckIdentity("Ping", id, identity, n.identity); err != nil {
		return false, err
	}
	n.onlineUntil = s.now().Add(d)
	n.pingInterval = pingInterval
	if n.offline {
		n.offline = false
		s.ev.NodeBack(id, pingInterval)
	}
	return true, nil
}

// online reports whether n is online at now, logging the first time a
// missed ping is noticed. Called with mu held.
func (s *State) online(n *node, now time.Time) bool {
	if n.onlineUntil.After(now) {
		return true
	}
	if !n.offline {
		n.offline = true
		s.ev.NodeMissedPing(n.id, n.pingInterval)
	}
	return false
}

// Sweep notices nodes that missed their ping, so that leaving is logged
// even when nobody asks for them, and forgets every TaskIns (with its
// result, if any) whose ttl ran out more than ExpiryGrace ago: a ServerApp
// that went away never pulls them, and they may hold large arrays. A 1.8.0
// SuperNode cannot answer such a task anyway (its TaskRes ttl would be <= 0).
func (s *State) Sweep(context.Context) error {
	if err := s.lock(); err != nil {
		return err
	}
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
			s.ev.TaskExpired(id, e.run, e.delivered, e.answered)
			s.deletePair(id)
			expired++
		}
	}
	if expired == 0 {
		return nil
	}
	s.ev.TasksExpired(expired)
	for _, n := range s.nodes {
		n.queue = slices.DeleteFunc(n.queue, func(id uuid.UUID) bool { return s.ins[id] == nil })
		if len(n.queue) == 0 {
			n.queue = nil
		}
	}
	return nil
}

// CreateRun creates a run.
func (s *State) CreateRun(context.Context) (int64, error) {
	if err := s.lock(); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	id, err := rules.RandomID(s.rand, func(id int64) bool { return s.runs[id] != nil })
	if err != nil {
		return 0, err
	}
	r := &run{id: id, created: s.now()}
	s.runs[id] = r
	s.runOrder = append(s.runOrder, r)
	s.ev.RunCreated(id)
	return id, nil
}

// GetNodes returns the online nodes in join order, or nothing for an
// unknown run (as 1.8.0).
func (s *State) GetNodes(_ context.Context, runID int64) ([]*flwrproto.Node, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if s.runs[runID] == nil {
		return nil, nil
	}
	now := s.now()
	var out []*flwrproto.Node
	for _, id := range s.order {
		if s.online(s.nodes[id], now) {
			out = append(out, &flwrproto.Node{NodeId: id})
		}
	}
	return out, nil
}

// PushTaskIns validates every TaskIns, then stores them all or none.
func (s *State) PushTaskIns(_ context.Context, list []*flwrproto.TaskIns) ([]string, error) {
	if err := rules.ValidateTaskInsList(list); err != nil {
		return nil, err
	}
	// Hash the large arrays before taking the lock.
	prepared := make([][]preparedBlob, len(list))
	for i, t := range list {
		prepared[i] = prepareBlobs(&s.BlobHashes, t.Task.Recordset)
	}

	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	for i, t := range list {
		if s.runs[t.RunId] == nil {
			return nil, rules.ErrRunNotFound(i, t.RunId)
		}
		if c := t.Task.Consumer.NodeId; s.nodes[c] == nil {
			return nil, rules.ErrConsumerNotFound(i, c)
		}
	}
	// Every id before anything is stored: a failing rand leaves no TaskIns
	// of the list behind.
	tids := make([]uuid.UUID, len(list))
	for i := range list {
		id, err := rules.NewTaskID(s.rand)
		if err != nil {
			return nil, err
		}
		for s.ins[id] != nil || slices.Contains(tids[:i], id) {
			if id, err = rules.NewTaskID(s.rand); err != nil {
				return nil, err
			}
		}
		tids[i] = id
	}
	ids := make([]string, len(list))
	now := s.now()
	pushed := rules.Seconds(now)
	for i, t := range list {
		id := tids[i]
		t.TaskId = id.String()
		t.Task.PushedAt = pushed
		n := s.nodes[t.Task.Consumer.NodeId]
		e := &insEntry{msg: t, run: t.RunId, consumer: n.id, identity: n.identity, expires: rules.Expiry(now, t.Task.Ttl), blobs: s.interns.intern(prepared[i])}
		s.ins[id] = e
		n.queue = append(n.queue, id)
		r := s.runs[t.RunId]
		r.lastGroup = t.GroupId
		r.pushed++
		ids[i] = t.TaskId
	}
	return ids, nil
}

// PullTaskIns hands at most one undelivered TaskIns to node id, marking it
// delivered so that it is never handed out again.
func (s *State) PullTaskIns(_ context.Context, id int64, identity string) ([]*flwrproto.TaskIns, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	n := s.nodes[id]
	if n == nil {
		return nil, nil
	}
	if err := rules.CheckIdentity("PullTaskIns", id, identity, n.identity); err != nil {
		return nil, err
	}
	for len(n.queue) > 0 {
		tid := n.queue[0]
		n.queue[0] = uuid.UUID{}
		n.queue = n.queue[1:]
		e := s.ins[tid]
		// Answered and never delivered: PullTaskRes made up its
		// NODE_UNAVAILABLE result while the node was away (and may have
		// released its message); the node does not get it now.
		if e == nil || e.delivered || e.answered {
			continue
		}
		e.delivered = true
		e.msg.Task.DeliveredAt = rules.DeliveredAt(s.now())
		// The stored message is not changed again after delivery, so the
		// response may share it while it is marshalled outside the lock.
		return []*flwrproto.TaskIns{e.msg}, nil
	}
	if len(n.queue) == 0 {
		n.queue = nil
	}
	return nil, nil
}

// PushTaskRes validates every TaskRes against the TaskIns it answers, then
// stores them all or none.
func (s *State) PushTaskRes(_ context.Context, list []*flwrproto.TaskRes, identity string) (map[string]uint32, error) {
	parents, err := rules.ValidateTaskResList(list)
	if err != nil {
		return nil, err
	}
	prepared := make([][]preparedBlob, len(list))
	for i, t := range list {
		prepared[i] = prepareBlobs(&s.BlobHashes, t.Task.Recordset)
	}

	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	seen := map[uuid.UUID]bool{}
	late := make([]bool, len(list)) // accepted, not stored
	for i, t := range list {
		var f rules.ParentFacts
		if e := s.ins[parents[i]]; e != nil {
			f = rules.ParentFacts{Stored: true, Consumer: e.consumer, Identity: e.identity,
				Run: e.run, Delivered: e.delivered, Answered: e.answered}
		} else if g, ok := s.gone[parents[i]]; ok {
			f = rules.ParentFacts{Gone: true, Consumer: g.consumer, Identity: g.identity}
		}
		if late[i], err = rules.AcceptTaskRes(i, t, parents[i], identity, f, seen); err != nil {
			return nil, err
		}
	}
	// Every id before anything is stored: a failing rand leaves no result
	// of the list behind.
	rids := make([]uuid.UUID, len(list))
	for i := range list {
		if rids[i], err = rules.NewTaskID(s.rand); err != nil {
			return nil, err
		}
	}
	results := make(map[string]uint32, len(list))
	pushed := rules.Seconds(s.now())
	for i, t := range list {
		id := rids[i]
		if late[i] {
			s.ev.ResultDiscarded(parents[i], t.Task.Producer.NodeId)
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

// PullTaskRes returns the results for the given TaskIns ids, in the order
// asked. For a TaskIns without result whose consumer is offline or deleted
// it makes up the NODE_UNAVAILABLE result, as 1.8.0 does.
//
// A result delivered stays (its TaskIns's arrays are released) until the
// run's next PullTaskRes does not ask for it: then the ServerApp has it,
// and the pair is forgotten. A ServerApp that asks again for a result it
// was sent did not get the response (a connection lost, a SuperLink killed
// while answering), and gets the same result again.
func (s *State) PullTaskRes(_ context.Context, taskIDs []string) ([]*flwrproto.TaskRes, error) {
	ids, err := rules.ParseTaskIDs(taskIDs)
	if err != nil {
		return nil, err
	}

	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	now := s.now()
	delivered := rules.DeliveredAt(now)
	asked := make(map[uuid.UUID]bool, len(ids))
	var runs []*run
	var out []*flwrproto.TaskRes
	for _, id := range ids {
		asked[id] = true
		e := s.ins[id]
		if e == nil {
			continue
		}
		rn := s.runs[e.run]
		if rn != nil && !slices.Contains(runs, rn) {
			runs = append(runs, rn)
		}
		r := s.res[id]
		if r == nil {
			n := s.nodes[e.consumer]
			if n != nil && s.online(n, now) {
				continue
			}
			rid, err := rules.NewTaskID(s.rand)
			if err != nil {
				return nil, err
			}
			r = &resEntry{msg: rules.NodeUnavailable(e.msg, rid, now)}
			s.res[id] = r
			e.answered = true
		}
		if !e.resDelivered {
			e.resDelivered = true
			s.interns.release(e.blobs)
			e.blobs, e.msg = nil, nil
			if rn != nil {
				rn.pulled++
				rn.delivered = append(rn.delivered, id)
			}
		}
		out = append(out, deliver(r.msg, delivered))
	}
	for _, rn := range runs {
		rn.delivered = slices.DeleteFunc(rn.delivered, func(id uuid.UUID) bool {
			if asked[id] {
				return false
			}
			s.retire(id)
			return true
		})
	}
	return out, nil
}

// deliver returns the stored result r as delivered at deliveredAt, sharing
// all but the envelope: a stored message is never changed, so a response
// still being sent may hold it.
func deliver(r *flwrproto.TaskRes, deliveredAt string) *flwrproto.TaskRes {
	t := r.Task
	out := &flwrproto.TaskRes{
		TaskId:  r.TaskId,
		GroupId: r.GroupId,
		RunId:   r.RunId,
		Task: &flwrproto.Task{
			Producer:    t.Producer,
			Consumer:    t.Consumer,
			CreatedAt:   t.CreatedAt,
			DeliveredAt: deliveredAt,
			PushedAt:    t.PushedAt,
			Ttl:         t.Ttl,
			Ancestry:    t.Ancestry,
			TaskType:    t.TaskType,
			Recordset:   t.Recordset,
			Error:       t.Error,
		},
	}
	out.ProtoReflect().SetUnknown(r.ProtoReflect().GetUnknown())
	out.Task.ProtoReflect().SetUnknown(t.ProtoReflect().GetUnknown())
	return out
}

// retire forgets a pair whose result was delivered, remembering its
// consumer until it would have expired. Called with mu held.
func (s *State) retire(id uuid.UUID) {
	if e := s.ins[id]; e != nil {
		s.gone[id] = goneEntry{consumer: e.consumer, identity: e.identity, until: e.expires}
	}
	s.deletePair(id)
}

// deletePair forgets a TaskIns and its result and releases their arrays.
// Called with mu held.
func (s *State) deletePair(id uuid.UUID) {
	if e := s.ins[id]; e != nil {
		s.interns.release(e.blobs)
		delete(s.ins, id)
	}
	if r := s.res[id]; r != nil {
		s.interns.release(r.blobs)
		delete(s.res, id)
	}
}

// Stats counts what the State holds.
func (s *State) Stats(context.Context) (state.Stats, error) {
	if err := s.lock(); err != nil {
		return state.Stats{}, err
	}
	defer s.mu.Unlock()
	now := s.now()
	st := state.Stats{Nodes: len(s.nodes), Runs: len(s.runs)}
	for _, n := range s.nodes {
		if n.onlineUntil.After(now) {
			st.NodesOnline++
		}
	}
	for _, e := range s.ins {
		switch {
		case e.answered:
			if !e.resDelivered {
				st.TaskResWaiting++
			}
		case e.delivered:
			st.TaskInsDelivered++
		default:
			st.TaskInsWaiting++
		}
	}
	st.Blobs, st.BlobBytes = s.interns.size()
	return st, nil
}

// Nodes returns every registered node in join order.
func (s *State) Nodes(context.Context) ([]state.NodeInfo, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	now := s.now()
	out := make([]state.NodeInfo, 0, len(s.order))
	for _, id := range s.order {
		n := s.nodes[id]
		out = append(out, state.NodeInfo{
			ID: id, Identity: n.identity, Certificate: n.cert, PingInterval: n.pingInterval,
			Created: n.created, OnlineUntil: n.onlineUntil, Online: n.onlineUntil.After(now),
		})
	}
	return out, nil
}

// Runs returns up to limit runs, the last created first.
func (s *State) Runs(_ context.Context, limit int) ([]state.RunInfo, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	n := len(s.runOrder)
	if limit > 0 && limit < n {
		n = limit
	}
	out := make([]state.RunInfo, 0, n)
	for i := len(s.runOrder) - 1; i >= 0 && len(out) < n; i-- {
		r := s.runOrder[i]
		out = append(out, state.RunInfo{ID: r.id, Created: r.created, LastGroup: r.lastGroup, TaskInsPushed: r.pushed, TaskResPulled: r.pulled})
	}
	return out, nil
}

// Check reports an error once the State is closed.
func (s *State) Check(context.Context) error {
	if err := s.lock(); err != nil {
		return err
	}
	s.mu.Unlock()
	return nil
}

// Close forgets everything; later calls fail with Unavailable.
func (s *State) Close() error {
	s.Store.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.nodes, s.order, s.runs, s.runOrder = nil, nil, nil, nil
	s.ins, s.res, s.gone = nil, nil, nil
	s.interns = newInterner()
	return nil
}
