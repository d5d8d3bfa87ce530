// Package memlink is the in-memory state.LinkState: the Flower 1.29.0
// generation's nodes, runs, FABs, messages, objects, tokens and logs, held
// in one process and lost when it ends (Flower's own default,
// :flwr-in-memory-state:).
package memlink

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/inflatable"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/internal/linkrules"
)

// Store is an in-memory state.LinkState. Its methods are safe for
// concurrent use; each holds one lock for its whole effect, so every call
// is atomic.
type Store struct {
	log  *slog.Logger
	now  func() time.Time
	rand io.Reader
	lim  state.LinkLimits
	sigs *linkrules.Signatures
	// files keeps large contents in files (Options.ObjectDir).
	files objectFiles

	mu      sync.Mutex
	closed  bool
	seq     uint64
	nodes   map[uint64]*node
	keys    map[string]uint64 // public key -> node, kept after unregistration
	runs    map[uint64]*run
	fabs    map[string]*flwr129.Fab
	tokens  map[string]uint64
	ins     map[string]*instruction
	replies map[string]*reply
	objects map[string]*object
	// inRun counts the instructions of each run to each node: a node
	// with none there may not push, pull or confirm in the run.
	inRun map[pusherKey]int
	// What nodes and ServerApps owe (see state.LinkLimits): the objects
	// each owes in a run, who owes each object, and the counts the limits
	// read (of the nodes: the ServerApp is not bound).
	pushers  map[pusherKey]*pusher
	owedBy   map[string][]pusherKey
	nodeOwed map[uint64]int
	runOwed  map[uint64]int
	fabBytes int64
}

// pusherKey is a node (or SuperLinkNodeID, the ServerApp) in a run.
type pusherKey struct{ node, run uint64 }

// pusher is what a node owes in a run: the objects its messages name and
// it has not pushed, for which messages; n counts the (object, message)
// pairs. bytes is what it pushed there since it began to owe, deadline
// when it is forgotten unless it pushes again.
type pusher struct {
	owed     map[string][]string
	n        int
	bytes    int64
	deadline float64
}

var _ state.LinkState = (*Store)(nil)

type node struct {
	seq  uint64
	info *flwr129.NodeInfo
	// self: the node registered itself through the Fleet API (heartbeat
	// interval 0), and may be forgotten to make room (LinkLimits).
	self                     bool
	registered, unregistered float64
}

type run struct {
	r          *flwr129.Run
	created    uint64
	context    *flwr129.Context
	token      string
	tokenUntil float64
	logs       []logEntry
	logBytes   int
	objects    map[string]bool
}

type logEntry struct {
	at   float64
	text string
}

type instruction struct {
	seq       uint64
	m         *flwr129.Message
	delivered bool
	reply     string // id of its reply, "" until one came
	// resDelivered: PullReplies handed out the reply (kept until the
	// run's next PullReplies that does not ask for it).
	resDelivered bool
}

type reply struct {
	m *flwr129.Message
}

type object struct {
	content   content
	available bool
	children  []string
	refs      int      // parents that registered it
	runs      []uint64 // the runs it belongs to, each once: usually one
}

func (o *object) inRun(run uint64) bool { return slices.Contains(o.runs, run) }

func (o *object) addRun(run uint64) {
	if !o.inRun(run) {
		o.runs = append(o.runs, run)
	}
}

// New returns an empty Store with o's clock, randomness and logger.
func New(o state.Options) *Store {
	o = o.WithDefaults()
	return &Store{
		log: o.Logger, now: o.Now, rand: o.Rand, lim: o.Link,
		sigs:  linkrules.NewSignatures(o.Link.MaxSignatures),
		files: objectFiles{dir: o.ObjectDir, min: ObjectFileMin},
		nodes: map[uint64]*node{}, keys: map[string]uint64{}, runs: map[uint64]*run{},
		fabs: map[string]*flwr129.Fab{}, tokens: map[string]uint64{},
		ins: map[string]*instruction{}, replies: map[string]*reply{}, objects: map[string]*object{},
		inRun: map[pusherKey]int{}, pushers: map[pusherKey]*pusher{}, owedBy: map[string][]pusherKey{},
		nodeOwed: map[uint64]int{}, runOwed: map[uint64]int{},
	}
}

// Close forgets everything; calls after it fail with Unavailable.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, o := range s.objects {
		o.content.release()
	}
	s.files.close()
	s.nodes, s.runs, s.ins, s.replies, s.objects, s.fabs = nil, nil, nil, nil, nil, nil
	return nil
}

// errClosed answers calls once the store is closed.
var errClosed = status.Error(codes.Unavailable, "the state is closed")

// lock takes the lock, brings liveness, tokens and expiry up to date, and
// returns the current time in seconds.
func (s *Store) lock(ctx context.Context) (float64, error) {
	if err := ctx.Err(); err != nil {
		return 0, status.FromContextError(err).Err()
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, errClosed
	}
	now := linkrules.Seconds(s.now())
	s.expire(now)
	return now, nil
}

func (s *Store) expire(now float64) {
	for _, n := range s.nodes {
		if n.info.Status == state.NodeOnline && n.info.GetOnlineUntil() <= now {
			n.info.Status = state.NodeOffline
			at := linkrules.ISOTime(time.Unix(0, int64(n.info.GetOnlineUntil()*1e9)))
			n.info.LastDeactivatedAt = &at
		}
	}
	for id, r := range s.runs {
		if r.token != "" && r.tokenUntil < now && r.r.Status.Status != state.StatusFinished {
			r.r.Status = &flwr129.RunStatus{Status: state.StatusFinished, SubStatus: state.SubStatusFailed, Details: linkrules.HeartbeatFailed}
			r.r.FinishedAt = linkrules.ISOTime(time.Unix(0, int64(r.tokenUntil*1e9)))
			s.finished(id, r)
			s.log.Info("run failed: its ServerApp sent no heartbeat", "run_id", id)
		}
	}
	for id, in := range s.ins {
		if in.m.Metadata.GetCreatedAt()+in.m.Metadata.GetTtl() <= now {
			s.dropInstruction(id)
		}
	}
	for k, p := range s.pushers {
		if p.deadline < now {
			s.log.Info("messages forgotten: their objects were not pushed in time", "node_id", k.node, "run_id", k.run,
				"objects_owed", p.n, "push_timeout", s.lim.PushTimeout.String(), "generation", "1.29")
			s.dropPusher(k)
		}
	}
}

// finished releases what a finished run held: its token, messages and
// the objects only it used.
func (s *Store) finished(id uint64, r *run) {
	delete(s.tokens, r.token)
	r.token = ""
	for mid, in := range s.ins {
		if in.m.Metadata.GetRunId() == id {
			s.dropInstruction(mid)
		}
	}
	for oid := range r.objects {
		o := s.objects[oid]
		if o == nil {
			continue
		}
		o.runs = slices.DeleteFunc(o.runs, func(r uint64) bool { return r == id })
		if o.refs == 0 {
			s.deleteObject(oid)
		}
	}
	r.objects = map[string]bool{}
	for k := range s.pushers {
		if k.run == id {
			s.dropPusher(k)
		}
	}
}

// dropInstruction forgets an instruction, its reply and their message
// objects (what nothing else holds).
func (s *Store) dropInstruction(id string) {
	in := s.ins[id]
	if in == nil {
		return
	}
	s.removeIns(id, in)
	if in.reply != "" {
		delete(s.replies, in.reply)
		s.deleteObject(in.reply)
	}
	s.deleteObject(id)
}

// addIns stores an instruction.
func (s *Store) addIns(id string, in *instruction) {
	s.ins[id] = in
	s.inRun[pusherKey{in.m.Metadata.DstNodeId, in.m.Metadata.RunId}]++
}

// removeIns forgets an instruction (not its reply or objects).
func (s *Store) removeIns(id string, in *instruction) {
	delete(s.ins, id)
	k := pusherKey{in.m.Metadata.DstNodeId, in.m.Metadata.RunId}
	if s.inRun[k]--; s.inRun[k] <= 0 {
		delete(s.inRun, k)
	}
}

// owe records that k owes object id for message msg.
func (s *Store) owe(k pusherKey, id, msg string, now float64) {
	p := s.pushers[k]
	if p == nil {
		p = &pusher{owed: map[string][]string{}, deadline: now + s.lim.PushTimeout.Seconds()}
		s.pushers[k] = p
	}
	ms := p.owed[id]
	if slices.Contains(ms, msg) {
		return
	}
	if ms == nil && !slices.Contains(s.owedBy[id], k) {
		s.owedBy[id] = append(s.owedBy[id], k)
	}
	p.owed[id] = append(ms, msg)
	p.n++
	s.count(k, 1)
}

// count adds n to what k's node and run owe; the ServerApp's objects count
// for neither (LinkLimits bound the nodes).
func (s *Store) count(k pusherKey, n int) {
	if k.node == state.SuperLinkNodeID {
		return
	}
	if s.nodeOwed[k.node] += n; s.nodeOwed[k.node] <= 0 {
		delete(s.nodeOwed, k.node)
	}
	if s.runOwed[k.run] += n; s.runOwed[k.run] <= 0 {
		delete(s.runOwed, k.run)
	}
}

// settle records that object id is owed no more (pushed, or gone).
func (s *Store) settle(id string) {
	for _, k := range s.owedBy[id] {
		s.unowe(k, id)
	}
	delete(s.owedBy, id)
}

// unowe forgets that k owes id (not owedBy's entry); a pusher that owes
// nothing goes.
func (s *Store) unowe(k pusherKey, id string) {
	p := s.pushers[k]
	if p == nil {
		return
	}
	n := len(p.owed[id])
	delete(p.owed, id)
	p.n -= n
	s.count(k, -n)
	if p.n <= 0 {
		delete(s.pushers, k)
	}
}

// dropPusher forgets what k owes and the messages it owes it for: a
// reply as never sent, an instruction as expired.
func (s *Store) dropPusher(k pusherKey) {
	p := s.pushers[k]
	if p == nil {
		return
	}
	msgs := map[string]bool{}
	for id, ms := range p.owed {
		for _, m := range ms {
			msgs[m] = true
		}
		if by := slices.DeleteFunc(s.owedBy[id], func(o pusherKey) bool { return o == k }); len(by) > 0 {
			s.owedBy[id] = by
		} else {
			delete(s.owedBy, id)
		}
		s.unowe(k, id)
	}
	delete(s.pushers, k)
	for m := range msgs {
		if s.ins[m] != nil {
			s.dropInstruction(m)
			continue
		}
		if r := s.replies[m]; r != nil {
			if in := s.ins[r.m.Metadata.GetReplyToMessageId()]; in != nil && in.reply == m && !in.resDelivered {
				s.dropReply(in)
			}
		}
	}
}

// deleteObject deletes an object nothing refers to, and then its children
// that nothing else refers to (Flower's ObjectStore.delete).
func (s *Store) deleteObject(id string) {
	o := s.objects[id]
	if o == nil || o.refs > 0 {
		return
	}
	delete(s.objects, id)
	o.content.release()
	s.settle(id)
	for _, r := range o.runs {
		if rr := s.runs[r]; rr != nil {
			delete(rr.objects, id)
		}
	}
	for _, c := range o.children {
		if co := s.objects[c]; co != nil {
			co.refs--
			s.deleteObject(c)
		}
	}
}

// RegisterNode implements state.LinkState.
func (s *Store) RegisterNode(ctx context.Context, publicKey []byte, heartbeatInterval float64) (uint64, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	if len(publicKey) == 0 {
		return 0, status.Error(codes.InvalidArgument, "no public key: send the node's public key (PEM)")
	}
	if _, used := s.keys[string(publicKey)]; used {
		return 0, status.Error(codes.FailedPrecondition, "Public key already in use")
	}
	self := heartbeatInterval == 0
	if err := s.makeRoom(self); err != nil {
		return 0, err
	}
	var id uint64
	for {
		if id, err = linkrules.RandomID(s.rand, state.SuperLinkNodeID); err != nil {
			return 0, err
		}
		if s.nodes[id] == nil {
			break
		}
	}
	s.seq++
	s.nodes[id] = &node{seq: s.seq, self: self, registered: now, info: &flwr129.NodeInfo{
		NodeId: id, OwnerAid: linkrules.NoopFlwrAID, OwnerName: linkrules.NoopAccountName, Status: state.NodeRegistered,
		RegisteredAt: linkrules.ISOTime(time.Unix(0, int64(now*1e9))), HeartbeatInterval: heartbeatInterval,
		PublicKey: slices.Clone(publicKey),
	}}
	s.keys[string(publicKey)] = id
	s.log.Info("node registered", "node_id", id, "generation", "1.29")
	return id, nil
}

// makeRoom forgets nodes so that a new one fits LinkLimits (self: it
// registers itself), or refuses it.
func (s *Store) makeRoom(self bool) error {
	if self {
		var unactivated []*node
		for _, n := range s.nodes {
			if neverActivated(n) {
				unactivated = append(unactivated, n)
			}
		}
		if len(unactivated) >= s.lim.MaxUnactivated {
			oldest := slices.MinFunc(unactivated, func(a, b *node) int { return int(a.seq) - int(b.seq) })
			s.forget(oldest, "max_unactivated")
		}
	}
	for len(s.nodes) >= s.lim.MaxNodes {
		var victim *node
		rank := func(n *node) (int, float64) {
			switch {
			case n.info.Status == state.NodeUnregistered:
				return 0, n.unregistered
			case neverActivated(n):
				return 1, n.registered
			case n.self && n.info.Status == state.NodeOffline:
				return 2, n.info.GetOnlineUntil()
			}
			return 3, 0
		}
		for _, n := range s.nodes {
			c, at := rank(n)
			if c == 3 {
				continue
			}
			if victim == nil {
				victim = n
				continue
			}
			vc, vat := rank(victim)
			if c < vc || (c == vc && at < vat) {
				victim = n
			}
		}
		if victim == nil {
			return &state.LinkLimitError{Limit: state.LimitLinkNodes, Max: int64(s.lim.MaxNodes),
				Msg: "RegisterNode: every place for a node is taken by a node online or registered through the Control API; retry later (a node that goes offline makes room)"}
		}
		s.forget(victim, state.LimitLinkNodes)
	}
	return nil
}

// neverActivated reports whether n registered itself and never came
// online.
func neverActivated(n *node) bool {
	return n.self && n.info.Status == state.NodeRegistered && n.info.LastActivatedAt == nil
}

// forget forgets a node to make room under limit: its key is free again,
// what it owes is dropped.
func (s *Store) forget(n *node, limit string) {
	id := n.info.NodeId
	delete(s.nodes, id)
	if s.keys[string(n.info.PublicKey)] == id {
		delete(s.keys, string(n.info.PublicKey))
	}
	for k := range s.pushers {
		if k.node == id {
			s.dropPusher(k)
		}
	}
	s.log.Info("node forgotten to make room for a new one", "node_id", id, "status", n.info.Status, "limit", limit, "generation", "1.29")
}

// ActivateNode implements state.LinkState.
func (s *Store) ActivateNode(ctx context.Context, publicKey []byte, heartbeatInterval float64) (uint64, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	id, ok := s.keys[string(publicKey)]
	if !ok || s.nodes[id].info.Status == state.NodeUnregistered {
		return 0, status.Error(codes.FailedPrecondition, "No SuperNode found with the given public key.")
	}
	if err := linkrules.CheckHeartbeatInterval(heartbeatInterval); err != nil {
		return 0, err
	}
	n := s.nodes[id].info
	if n.Status != state.NodeRegistered && n.Status != state.NodeOffline {
		return 0, status.Errorf(codes.FailedPrecondition, "SuperNode with node ID %d could not be activated.", id)
	}
	n.Status = state.NodeOnline
	at := linkrules.ISOSeconds(now)
	n.LastActivatedAt = &at
	until := now + state.HeartbeatPatience*heartbeatInterval
	n.OnlineUntil = &until
	n.HeartbeatInterval = heartbeatInterval
	s.log.Info("node joined", "node_id", id, "heartbeat_interval", heartbeatInterval, "generation", "1.29")
	return id, nil
}

// DeactivateNode implements state.LinkState.
func (s *Store) DeactivateNode(ctx context.Context, nodeID uint64) error {
	now, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer s.mu.Unlock()
	n := s.nodes[nodeID]
	if n == nil || n.info.Status != state.NodeOnline {
		return status.Errorf(codes.FailedPrecondition, "SuperNode with node ID %d could not be deactivated.", nodeID)
	}
	n.info.Status = state.NodeOffline
	at := linkrules.ISOSeconds(now)
	n.info.LastDeactivatedAt = &at
	n.info.OnlineUntil = &now
	s.log.Info("node left", "node_id", nodeID, "reason", "deactivate_node", "generation", "1.29")
	return nil
}

// UnregisterNode implements state.LinkState.
func (s *Store) UnregisterNode(ctx context.Context, nodeID uint64) error {
	now, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer s.mu.Unlock()
	n := s.nodes[nodeID]
	if n == nil || n.info.Status == state.NodeUnregistered {
		return status.Errorf(codes.NotFound, "Node ID %d already unregistered, not found or the request was unauthorized.", nodeID)
	}
	n.info.Status = state.NodeUnregistered
	n.unregistered = now
	at := linkrules.ISOSeconds(now)
	n.info.UnregisteredAt = &at
	if n.info.OnlineUntil == nil || n.info.GetOnlineUntil() > now {
		n.info.OnlineUntil = &now
	}
	s.log.Info("node unregistered", "node_id", nodeID, "generation", "1.29")
	return nil
}

// NodeHeartbeat implements state.LinkState.
func (s *Store) NodeHeartbeat(ctx context.Context, nodeID uint64, heartbeatInterval float64) (bool, error) {
	if err := linkrules.CheckHeartbeatInterval(heartbeatInterval); err != nil {
		return false, err
	}
	now, err := s.lock(ctx)
	if err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	n := s.nodes[nodeID]
	if n == nil || n.info.Status == state.NodeUnregistered {
		return false, nil
	}
	if n.info.Status != state.NodeOnline {
		n.info.Status = state.NodeOnline
		at := linkrules.ISOSeconds(now)
		n.info.LastActivatedAt = &at
		s.log.Info("node back online", "node_id", nodeID, "generation", "1.29")
	}
	until := now + state.HeartbeatPatience*heartbeatInterval
	n.info.OnlineUntil = &until
	n.info.HeartbeatInterval = heartbeatInterval
	return true, nil
}

// NodeOfKey implements state.LinkState.
func (s *Store) NodeOfKey(ctx context.Context, publicKey []byte) (uint64, bool, error) {
	if _, err := s.lock(ctx); err != nil {
		return 0, false, err
	}
	defer s.mu.Unlock()
	id, ok := s.keys[string(publicKey)]
	if !ok || s.nodes[id].info.Status == state.NodeUnregistered {
		return 0, false, nil
	}
	return id, true, nil
}

// UseSignature implements state.LinkState: the tags are kept in the
// process.
func (s *Store) UseSignature(ctx context.Context, tag []byte, signedAt, until float64) error {
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	return s.sigs.Use(tag, until, linkrules.Seconds(s.now()))
}

// LinkNodes implements state.LinkState.
func (s *Store) LinkNodes(ctx context.Context) ([]*flwr129.NodeInfo, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	ns := make([]*node, 0, len(s.nodes))
	for _, n := range s.nodes {
		ns = append(ns, n)
	}
	slices.SortFunc(ns, func(a, b *node) int { return int(a.seq) - int(b.seq) })
	out := make([]*flwr129.NodeInfo, len(ns))
	for i, n := range ns {
		out[i] = proto.Clone(n.info).(*flwr129.NodeInfo)
	}
	return out, nil
}

// CreateLinkRun implements state.LinkState.
func (s *Store) CreateLinkRun(ctx context.Context, nr state.NewRun) (uint64, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	fab := nr.Fab
	if fab == nil || inflatable.ID(fab.GetContent()) != fab.GetHashStr() {
		return 0, status.Error(codes.InvalidArgument, "the FAB's hash_str is not the SHA-256 of its content")
	}
	active := 0
	for _, r := range s.runs {
		if r.r.Status.Status != state.StatusFinished {
			active++
		}
	}
	if active >= s.lim.MaxActiveRuns {
		return 0, &state.LinkLimitError{Limit: state.LimitActiveRuns, Max: int64(s.lim.MaxActiveRuns),
			Msg: fmt.Sprintf("StartRun: %d runs are not finished; stop one (flwr stop) or wait for one to finish", active)}
	}
	if old := s.fabs[fab.HashStr]; old != nil {
		old.Verifications = fab.Verifications // Flower: the last write wins
	} else {
		if err := s.fabRoom(int64(len(fab.Content))); err != nil {
			return 0, err
		}
		s.fabs[fab.HashStr] = proto.Clone(fab).(*flwr129.Fab)
		s.fabBytes += int64(len(fab.Content))
	}
	var id uint64
	for {
		if id, err = linkrules.RandomID(s.rand); err != nil {
			return 0, err
		}
		if s.runs[id] == nil {
			break
		}
	}
	s.seq++
	s.runs[id] = &run{
		created: s.seq,
		r: &flwr129.Run{
			RunId: id, FabId: nr.FabID, FabVersion: nr.FabVersion, FabHash: fab.HashStr,
			OverrideConfig: nr.OverrideConfig, PendingAt: linkrules.ISOSeconds(now),
			Status:  &flwr129.RunStatus{Status: state.StatusPending},
			FlwrAid: nr.FlwrAID, Federation: nr.Federation, RunType: nr.RunType,
		},
		context: &flwr129.Context{RunId: id, NodeId: state.SuperLinkNodeID, State: &flwr129.RecordDict{}},
		objects: map[string]bool{},
	}
	s.log.Info("run created", "run_id", id, "fab_id", nr.FabID, "fab_hash", fab.HashStr, "generation", "1.29")
	return id, nil
}

// fabRoom forgets FABs that only finished runs use, those whose last run
// was created the longest ago first, until n more bytes fit
// LinkLimits.MaxFabBytes, or refuses them.
func (s *Store) fabRoom(n int64) error {
	for s.fabBytes+n > s.lim.MaxFabBytes {
		last := map[string]uint64{} // FAB -> its newest run; 0: in use
		for _, r := range s.runs {
			h := r.r.FabHash
			if v, ok := last[h]; ok && v == 0 {
				continue
			}
			if r.r.Status.Status != state.StatusFinished {
				last[h] = 0
			} else {
				last[h] = max(last[h], r.created)
			}
		}
		victim, at := "", uint64(0)
		for h := range s.fabs {
			if v, ok := last[h]; (!ok || v != 0) && (victim == "" || v < at) {
				victim, at = h, v
			}
		}
		if victim == "" {
			return &state.LinkLimitError{Limit: state.LimitFabBytes, Max: s.lim.MaxFabBytes,
				Msg: fmt.Sprintf("StartRun: the FABs of the runs not finished take %d bytes, and this one %d more; wait for runs to finish", s.fabBytes, n)}
		}
		s.fabBytes -= int64(len(s.fabs[victim].Content))
		delete(s.fabs, victim)
	}
	return nil
}

func (s *Store) run(id uint64) (*run, error) {
	r := s.runs[id]
	if r == nil {
		return nil, status.Errorf(codes.NotFound, "Run ID not found: %d", id)
	}
	return r, nil
}

func (s *Store) running(id uint64) (*run, error) {
	r, err := s.run(id)
	if err != nil {
		return nil, err
	}
	return r, linkrules.RequireRunning(r.r.Status)
}

// Run implements state.LinkState.
func (s *Store) Run(ctx context.Context, runID uint64) (*flwr129.Run, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	r, err := s.run(runID)
	if err != nil {
		return nil, err
	}
	return proto.Clone(r.r).(*flwr129.Run), nil
}

// LinkRuns implements state.LinkState.
func (s *Store) LinkRuns(ctx context.Context, limit int, statuses ...string) ([]*flwr129.Run, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var rs []*run
	for _, r := range s.runs {
		if len(statuses) == 0 || slices.Contains(statuses, r.r.Status.Status) {
			rs = append(rs, r)
		}
	}
	slices.SortFunc(rs, func(a, b *run) int { return int(b.created) - int(a.created) })
	if limit > 0 && len(rs) > limit {
		rs = rs[:limit]
	}
	out := make([]*flwr129.Run, len(rs))
	for i, r := range rs {
		out[i] = proto.Clone(r.r).(*flwr129.Run)
	}
	return out, nil
}

// Fab implements state.LinkState.
func (s *Store) Fab(ctx context.Context, hash string) (*flwr129.Fab, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	f := s.fabs[hash]
	if f == nil {
		return nil, status.Errorf(codes.NotFound, "Found no FAB with hash: %.80s", hash)
	}
	return f, nil
}

func (s *Store) setStatus(id uint64, r *run, next *flwr129.RunStatus, now float64) error {
	if err := linkrules.CheckTransition(r.r.Status, next); err != nil {
		return err
	}
	r.r.Status = &flwr129.RunStatus{Status: next.GetStatus(), SubStatus: next.GetSubStatus(), Details: next.GetDetails()}
	switch next.GetStatus() {
	case state.StatusStarting:
		r.r.StartingAt = linkrules.ISOSeconds(now)
	case state.StatusRunning:
		r.r.RunningAt = linkrules.ISOSeconds(now)
	case state.StatusFinished:
		r.r.FinishedAt = linkrules.ISOSeconds(now)
		s.finished(id, r)
		s.log.Info("run finished", "run_id", id, "sub_status", next.GetSubStatus(), "generation", "1.29")
	}
	return nil
}

// UpdateRunStatus implements state.LinkState.
func (s *Store) UpdateRunStatus(ctx context.Context, runID uint64, next *flwr129.RunStatus) error {
	now, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer s.mu.Unlock()
	r, err := s.run(runID)
	if err != nil {
		return err
	}
	return s.setStatus(runID, r, next, now)
}

// StopRun implements state.LinkState.
func (s *Store) StopRun(ctx context.Context, runID uint64) (bool, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	r, err := s.run(runID)
	if err != nil {
		return false, err
	}
	if r.r.Status.Status == state.StatusFinished {
		return false, status.Errorf(codes.FailedPrecondition, "Run ID %d is already finished", runID)
	}
	return true, s.setStatus(runID, r, &flwr129.RunStatus{Status: state.StatusFinished, SubStatus: state.SubStatusStopped}, now)
}

// RequestToken implements state.LinkState.
func (s *Store) RequestToken(ctx context.Context, runID uint64) (string, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return "", err
	}
	defer s.mu.Unlock()
	r := s.runs[runID]
	if r == nil || r.token != "" || r.r.Status.Status != state.StatusPending {
		return "", nil
	}
	tok, err := linkrules.RandomToken(s.rand)
	if err != nil {
		return "", err
	}
	if err := s.setStatus(runID, r, &flwr129.RunStatus{Status: state.StatusStarting}, now); err != nil {
		return "", nil
	}
	r.token = tok
	r.tokenUntil = now + state.HeartbeatDefaultInterval
	s.tokens[r.token] = runID
	return r.token, nil
}

// RunOfToken implements state.LinkState.
func (s *Store) RunOfToken(ctx context.Context, token string) (uint64, bool, error) {
	if _, err := s.lock(ctx); err != nil {
		return 0, false, err
	}
	defer s.mu.Unlock()
	id, ok := s.tokens[token]
	return id, ok && token != "", nil
}

// AppHeartbeat implements state.LinkState.
func (s *Store) AppHeartbeat(ctx context.Context, token string) (bool, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	id, ok := s.tokens[token]
	if !ok || token == "" {
		return false, nil
	}
	s.runs[id].tokenUntil = now + state.HeartbeatPatience*state.HeartbeatDefaultInterval
	return true, nil
}

// StartApp implements state.LinkState.
func (s *Store) StartApp(ctx context.Context, runID uint64) (*flwr129.Context, *flwr129.Run, *flwr129.Fab, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	defer s.mu.Unlock()
	r, err := s.run(runID)
	fail := status.Errorf(codes.FailedPrecondition, "Failed to start run %d", runID)
	if err != nil || s.fabs[r.r.FabHash] == nil {
		return nil, nil, nil, fail
	}
	if r.r.Status.Status != state.StatusRunning { // running: the ServerApp asks again
		if err := s.setStatus(runID, r, &flwr129.RunStatus{Status: state.StatusRunning}, now); err != nil {
			return nil, nil, nil, fail
		}
		s.log.Info("run started", "run_id", runID, "generation", "1.29")
	}
	return proto.Clone(r.context).(*flwr129.Context), proto.Clone(r.r).(*flwr129.Run), s.fabs[r.r.FabHash], nil
}

// SetAppContext implements state.LinkState.
func (s *Store) SetAppContext(ctx context.Context, runID uint64, c *flwr129.Context) error {
	if _, err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	r, err := s.running(runID)
	if err != nil {
		return err
	}
	r.context = c
	return nil
}

// PushLogs implements state.LinkState.
func (s *Store) PushLogs(ctx context.Context, runID uint64, text string) error {
	now, err := s.lock(ctx)
	if err != nil {
		return err
	}
	defer s.mu.Unlock()
	r, err := s.run(runID)
	if err != nil {
		return err
	}
	for _, text := range linkrules.SplitLog(text) {
		if n := len(r.logs); n > 0 && r.logs[n-1].at >= now {
			now = r.logs[n-1].at + linkrules.LogStampStep // stamps strictly increase, so that "after" never skips a line
		}
		r.logs = append(r.logs, logEntry{at: now, text: text})
		r.logBytes += len(text)
	}
	for r.logBytes > linkrules.MaxLogBytes && len(r.logs) > 1 {
		r.logBytes -= len(r.logs[0].text)
		r.logs = r.logs[1:]
	}
	return nil
}

// Logs implements state.LinkState.
func (s *Store) Logs(ctx context.Context, runID uint64, after float64, max int) (string, float64, bool, error) {
	if _, err := s.lock(ctx); err != nil {
		return "", 0, false, err
	}
	defer s.mu.Unlock()
	r, err := s.run(runID)
	if err != nil {
		return "", 0, false, err
	}
	i, _ := slices.BinarySearchFunc(r.logs, after, func(e logEntry, t float64) int {
		if e.at <= t {
			return -1
		}
		return 1
	})
	var text []byte
	latest := 0.0
	j := i
	for ; j < len(r.logs); j++ {
		e := r.logs[j]
		if max > 0 && j > i && len(text)+len(e.text) > max {
			break
		}
		text = append(text, e.text...)
		latest = e.at
	}
	return string(text), latest, j == len(r.logs) && r.r.Status.Status == state.StatusFinished, nil
}

// OnlineNodes implements state.LinkState.
func (s *Store) OnlineNodes(ctx context.Context, runID uint64) ([]uint64, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if _, err := s.running(runID); err != nil {
		return nil, err
	}
	var ns []*node
	for _, n := range s.nodes {
		if n.info.Status == state.NodeOnline {
			ns = append(ns, n)
		}
	}
	slices.SortFunc(ns, func(a, b *node) int { return int(a.seq) - int(b.seq) })
	ids := make([]uint64, len(ns))
	for i, n := range ns {
		ids[i] = n.info.NodeId
	}
	return ids, nil
}

// checkTree flattens a message's tree and checks it against the objects
// held: an id already held keeps its children.
func (s *Store) checkTree(t *flwr129.ObjectTree, messageID string) ([]linkrules.TreeNode, error) {
	nodes, err := linkrules.FlattenTree(t, messageID)
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if o := s.objects[n.ID]; o != nil && !slices.Equal(o.children, n.Children) {
			return nil, status.Errorf(codes.InvalidArgument, "object %s is held with other children than the tree gives it", n.ID)
		}
	}
	return nodes, nil
}

// preregister registers a checked tree's objects in a run (Flower's
// ObjectStore.preregister), records that k owes those not yet available
// for message msg, and appends them to push (once: inPush holds push's
// ids).
func (s *Store) preregister(k pusherKey, msg string, nodes []linkrules.TreeNode, push []string, inPush map[string]bool, now float64) []string {
	r := s.runs[k.run]
	for _, n := range nodes {
		o := s.objects[n.ID]
		if o == nil {
			o = &object{children: n.Children}
			s.objects[n.ID] = o
			for _, c := range n.Children {
				s.objects[c].refs++
			}
		}
		o.addRun(k.run)
		r.objects[n.ID] = true
		if !o.available {
			s.owe(k, n.ID, msg, now)
			if !inPush[n.ID] {
				inPush[n.ID] = true
				push = append(push, n.ID)
			}
		}
	}
	return push
}

// checkOwed makes room for replies of node in run, or refuses them, so
// that neither the node nor the run owes more objects than LinkLimits
// allow: past the run's bound, the node of the run that owes the most
// loses its incomplete messages, if it owes more than node would.
func (s *Store) checkOwed(node, run uint64, trees [][]linkrules.TreeNode) error {
	n := 0
	for _, t := range trees {
		for _, tn := range t {
			if o := s.objects[tn.ID]; o == nil || !o.available {
				n++
			}
		}
	}
	if err := linkrules.CheckOwed(node, n, s.nodeOwed[node], s.lim); err != nil || node == state.SuperLinkNodeID {
		return err
	}
	for s.runOwed[run]+n > s.lim.MaxPendingPerRun {
		var victim pusherKey
		most := 0
		for k, p := range s.pushers {
			if k.run == run && k.node != node && k.node != state.SuperLinkNodeID && p.n > most {
				victim, most = k, p.n
			}
		}
		mine := n
		if p := s.pushers[pusherKey{node, run}]; p != nil {
			mine += p.n
		}
		if most <= mine {
			return linkrules.RunOwedError(node, run, n, s.runOwed[run], s.lim)
		}
		s.log.Info("messages forgotten to make room in their run: their node owes the most objects", "node_id", victim.node, "run_id", run,
			"objects_owed", most, "generation", "1.29")
		s.dropPusher(victim)
	}
	return nil
}

// complete reports whether every object below id is available.
func (s *Store) complete(id string) bool {
	o := s.objects[id]
	if o == nil || !o.available {
		return false
	}
	for _, c := range o.children {
		if !s.complete(c) {
			return false
		}
	}
	return true
}

// tree returns the object tree of id, as held (an object no longer held
// has no children).
func (s *Store) tree(id string) *flwr129.ObjectTree {
	return linkrules.Tree(id, func(id string) []string {
		if o := s.objects[id]; o != nil {
			return o.children
		}
		return nil
	})
}

// PushInstructions implements state.LinkState.
func (s *Store) PushInstructions(ctx context.Context, runID uint64, msgs []*flwr129.Message, trees []*flwr129.ObjectTree) ([]string, []string, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer s.mu.Unlock()
	if _, err := s.running(runID); err != nil {
		return nil, nil, err
	}
	if err := linkrules.CheckPairs(msgs, trees); err != nil {
		return nil, nil, err
	}
	checked := make([][]linkrules.TreeNode, len(msgs))
	for i, m := range msgs {
		if err := linkrules.CheckMessage(m, false, now); err != nil {
			return nil, nil, err
		}
		if m.Metadata.RunId != runID {
			return nil, nil, status.Error(codes.InvalidArgument, "Malformed PushMessages: `Message.metadata` has mismatched `run_id`")
		}
		if checked[i], err = s.checkTree(trees[i], m.Metadata.MessageId); err != nil {
			return nil, nil, err
		}
	}
	ids := make([]string, len(msgs))
	var push []string
	inPush := map[string]bool{}
	for i, m := range msgs {
		n := s.nodes[m.Metadata.DstNodeId]
		if n == nil || (n.info.Status != state.NodeOnline && n.info.Status != state.NodeOffline) {
			s.log.Warn("message not stored: its destination node is unknown or not active", "run_id", runID, "dst_node_id", m.Metadata.DstNodeId)
			continue // Flower: the message gets the id ""
		}
		id := m.Metadata.MessageId
		ids[i] = id
		push = s.preregister(pusherKey{state.SuperLinkNodeID, runID}, id, checked[i], push, inPush, now)
		if s.ins[id] == nil {
			s.seq++
			s.addIns(id, &instruction{seq: s.seq, m: m})
		}
	}
	return ids, push, nil
}

// PullInstruction implements state.LinkState.
func (s *Store) PullInstruction(ctx context.Context, nodeID uint64) (*flwr129.Message, *flwr129.ObjectTree, error) {
	if _, err := s.lock(ctx); err != nil {
		return nil, nil, err
	}
	defer s.mu.Unlock()
	var best *instruction
	for id, in := range s.ins {
		if in.delivered || in.m.Metadata.DstNodeId != nodeID || (best != nil && best.seq < in.seq) || !s.complete(id) {
			continue
		}
		best = in
	}
	if best == nil {
		return nil, nil, nil
	}
	best.delivered = true
	return best.m, s.tree(best.m.Metadata.MessageId), nil
}

// PushReplies implements state.LinkState.
func (s *Store) PushReplies(ctx context.Context, nodeID uint64, msgs []*flwr129.Message, trees []*flwr129.ObjectTree, runtime float64) ([]string, []string, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer s.mu.Unlock()
	if err := linkrules.CheckPairs(msgs, trees); err != nil {
		return nil, nil, err
	}
	if err := linkrules.CheckOwed(nodeID, linkrules.TreesObjects(trees), s.nodeOwed[nodeID], s.lim); err != nil {
		return nil, nil, err // before the trees are looked at
	}
	checked := make([][]linkrules.TreeNode, len(msgs))
	var runID uint64
	for i, m := range msgs {
		if err := linkrules.CheckMessage(m, true, now); err != nil {
			return nil, nil, err
		}
		md := m.Metadata
		if md.SrcNodeId != nodeID {
			return nil, nil, status.Errorf(codes.PermissionDenied, "a reply from node %d names node %d as its source: a node pushes only its own replies", nodeID, md.SrcNodeId)
		}
		in := s.ins[md.ReplyToMessageId]
		if in == nil || in.resDelivered {
			return nil, nil, status.Errorf(codes.NotFound, "Message with ID %s does not exist (or it expired).", md.ReplyToMessageId)
		}
		if in.m.Metadata.DstNodeId != nodeID {
			return nil, nil, status.Errorf(codes.PermissionDenied, "message %s was sent to another node", md.ReplyToMessageId)
		}
		if md.RunId != in.m.Metadata.RunId || (i > 0 && md.RunId != runID) {
			return nil, nil, status.Error(codes.InvalidArgument, "`metadata.run_id` is invalid: it is not the run of the message replied to")
		}
		runID = md.RunId
		if _, err := s.running(runID); err != nil {
			return nil, nil, err
		}
		im := in.m.Metadata
		if maxTTL := im.CreatedAt + im.Ttl - md.CreatedAt; md.Ttl-maxTTL > state.MessageTTLTolerance {
			return nil, nil, status.Errorf(codes.InvalidArgument, "Received Message with TTL %.2f exceeding the allowed maximum TTL %.2f.", md.Ttl, maxTTL)
		}
		if checked[i], err = s.checkTree(trees[i], md.MessageId); err != nil {
			return nil, nil, err
		}
	}
	if err := s.checkOwed(nodeID, runID, checked); err != nil {
		return nil, nil, err
	}
	ids := make([]string, len(msgs))
	var push []string
	inPush := map[string]bool{}
	for i, m := range msgs {
		id := m.Metadata.MessageId
		in := s.ins[m.Metadata.ReplyToMessageId]
		if in.reply != "" && in.reply != id { // Flower: the last reply wins
			delete(s.replies, in.reply)
			s.deleteObject(in.reply)
		}
		push = s.preregister(pusherKey{nodeID, runID}, id, checked[i], push, inPush, now)
		if s.replies[id] == nil {
			s.replies[id] = &reply{m: m}
		}
		in.reply = id
		ids[i] = id
	}
	if runtime > 0 {
		s.runs[runID].r.ClientappRuntime += runtime
	}
	return ids, push, nil
}

// PullReplies implements state.LinkState.
func (s *Store) PullReplies(ctx context.Context, runID uint64, messageIDs []string) ([]*flwr129.Message, []*flwr129.ObjectTree, error) {
	now, err := s.lock(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer s.mu.Unlock()
	if _, err := s.running(runID); err != nil {
		return nil, nil, err
	}
	var out []*flwr129.Message
	var trees []*flwr129.ObjectTree
	asked := map[string]bool{}
	for _, id := range messageIDs {
		if asked[id] {
			continue
		}
		asked[id] = true
		in := s.ins[id]
		if in == nil || in.m.Metadata.RunId != runID {
			res := s.madeUp(runID, nil, id, linkrules.ErrMessageUnavailable, linkrules.ReasonMessageUnavailable, now)
			out = append(out, res)
			trees = append(trees, s.tree(res.Metadata.MessageId))
			continue
		}
		if !in.resDelivered {
			var res *flwr129.Message
			switch {
			case in.reply != "" && s.complete(in.reply):
				if res = s.replies[in.reply].m; linkrules.Expired(res.Metadata, now) {
					s.dropReply(in)
					res = s.madeUp(runID, in.m.Metadata, id, linkrules.ErrReplyMessageUnavailable, linkrules.ReasonReplyMessageUnavailable, now)
				}
			default:
				n := s.nodes[in.m.Metadata.DstNodeId]
				if n != nil && n.info.Status != state.NodeUnregistered && n.info.GetOnlineUntil() >= now {
					continue // no reply yet
				}
				s.dropReply(in)
				res = s.madeUp(runID, in.m.Metadata, id, linkrules.ErrNodeUnavailable, linkrules.ReasonNodeUnavailable, now)
			}
			if in.reply == "" { // made up: the instruction's reply now
				in.reply = res.Metadata.MessageId
				s.replies[in.reply] = &reply{m: res}
			}
			// The ServerApp has its answer, unless the response is lost:
			// release the instruction's objects, keep the pair.
			in.resDelivered = true
			s.deleteObject(id)
		}
		out = append(out, s.replies[in.reply].m)
		trees = append(trees, s.tree(in.reply))
	}
	// The pairs delivered before and not asked for now: the ServerApp has
	// them. The replies' objects stay until it confirms them.
	for id, in := range s.ins {
		if in.resDelivered && in.m.Metadata.RunId == runID && !asked[id] {
			s.removeIns(id, in)
			delete(s.replies, in.reply)
		}
	}
	return out, trees, nil
}

// dropReply forgets an instruction's reply and its objects.
func (s *Store) dropReply(in *instruction) {
	if in.reply != "" {
		delete(s.replies, in.reply)
		s.deleteObject(in.reply)
		in.reply = ""
	}
}

// madeUp makes up an error reply and holds its object in the run, as
// Flower registers it in the ObjectStore.
func (s *Store) madeUp(runID uint64, ins *flwr129.Metadata, insID string, code int64, reason string, now float64) *flwr129.Message {
	m, b := linkrules.MadeUpReply(ins, insID, code, reason, now)
	id := m.Metadata.MessageId
	if s.objects[id] == nil {
		s.objects[id] = &object{content: content{mem: b}, available: true}
	}
	s.objects[id].addRun(runID)
	s.runs[runID].objects[id] = true
	return m
}

// PushObject implements state.LinkState. The content is hashed, parsed
// and, when large, written to its file before the lock is taken: a 5 MiB
// chunk's SHA-256 takes milliseconds, which every other call would wait
// for. Only what nodes push goes to files: replies, read once by the
// ServerApp, and what strangers with a node key can make the SuperLink
// hold. What the ServerApp pushes (the model every node pulls) stays in
// memory, read by every node without a copy.
func (s *Store) PushObject(ctx context.Context, runID, nodeID uint64, id string, b []byte) (bool, error) {
	obj := linkrules.PrepareObject(id, b)
	c := content{mem: b}
	if obj.Valid() && nodeID != state.SuperLinkNodeID {
		c = s.keep(b)
	}
	stored := false
	defer func() {
		if !stored {
			c.release()
		}
	}()
	now, err := s.lock(ctx)
	if err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	r, err := s.running(runID)
	if err != nil {
		return false, err
	}
	k := pusherKey{nodeID, runID}
	o := s.objects[id]
	if !slices.Contains(s.owedBy[id], k) {
		switch {
		case nodeID != state.SuperLinkNodeID && s.inRun[k] == 0:
			return false, linkrules.NotInRun(nodeID, runID)
		case o != nil && o.inRun(runID) && o.available:
			return true, obj.Check(o.children) // pushed already, by another
		}
		return false, linkrules.NotOwed(id, nodeID, runID)
	}
	if err := obj.Check(o.children); err != nil {
		return false, err
	}
	p := s.pushers[k]
	if nodeID != state.SuperLinkNodeID && p.bytes+int64(len(b)) > s.lim.MaxPendingBytesPerNode {
		return false, linkrules.PendingBytesError(nodeID, runID, p.bytes, int64(len(b)), s.lim)
	}
	p.bytes += int64(len(b))
	p.deadline = now + s.lim.PushTimeout.Seconds()
	o.content, o.available, stored = c, true, true
	s.settle(id)
	if nodeID != state.SuperLinkNodeID {
		r.r.BytesRecv += uint64(len(b))
	}
	return true, nil
}

// PullObject implements state.LinkState. A content kept in the object
// file is read after the lock is let go.
func (s *Store) PullObject(ctx context.Context, runID, nodeID uint64, id string) ([]byte, bool, bool, error) {
	c, found, avail, err := s.pullObject(ctx, runID, nodeID, id)
	if err != nil || !avail {
		return nil, found, avail, err
	}
	b, gone, err := c.read()
	c.release()
	if err != nil {
		return nil, false, false, status.Errorf(codes.Internal, "object %s: %v", id, err)
	}
	if gone {
		return nil, false, false, errClosed // closed while the file was read
	}
	return b, true, true, nil
}

func (s *Store) pullObject(ctx context.Context, runID, nodeID uint64, id string) (content, bool, bool, error) {
	if _, err := s.lock(ctx); err != nil {
		return content{}, false, false, err
	}
	defer s.mu.Unlock()
	r, err := s.running(runID)
	if err != nil {
		return content{}, false, false, err
	}
	if nodeID != state.SuperLinkNodeID && s.inRun[pusherKey{nodeID, runID}] == 0 {
		return content{}, false, false, linkrules.NotInRun(nodeID, runID)
	}
	o := s.objects[id]
	if o == nil || !o.inRun(runID) {
		return content{}, false, false, nil
	}
	if !o.available {
		return content{}, true, false, nil
	}
	if nodeID != state.SuperLinkNodeID {
		r.r.BytesSent += uint64(o.content.size())
	}
	o.content.acquire()
	return o.content, true, true, nil
}

// ConfirmMessageReceived implements state.LinkState.
func (s *Store) ConfirmMessageReceived(ctx context.Context, runID, nodeID uint64, messageID string) error {
	if _, err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if _, err := s.running(runID); err != nil {
		return err
	}
	if nodeID != state.SuperLinkNodeID {
		if in := s.ins[messageID]; in == nil || in.m.Metadata.DstNodeId != nodeID || in.m.Metadata.RunId != runID {
			return linkrules.NotAddressed(messageID, nodeID, runID)
		}
	}
	if o := s.objects[messageID]; o != nil && o.inRun(runID) {
		s.deleteObject(messageID)
	}
	return nil
}

// LinkStats implements state.LinkState.
func (s *Store) LinkStats(ctx context.Context) (state.LinkStats, error) {
	if _, err := s.lock(ctx); err != nil {
		return state.LinkStats{}, err
	}
	defer s.mu.Unlock()
	st := state.LinkStats{Nodes: len(s.nodes), Runs: map[string]int{}, Messages: len(s.ins) + len(s.replies), Objects: len(s.objects)}
	for _, n := range s.nodes {
		if n.info.Status == state.NodeOnline {
			st.NodesOnline++
		}
	}
	for _, r := range s.runs {
		st.Runs[r.r.Status.Status]++
	}
	for _, o := range s.objects {
		st.ObjectBytes += o.content.size()
	}
	return st, nil
}

// String names the store in logs.
func (s *Store) String() string { return fmt.Sprintf("memlink(%p)", s) }
