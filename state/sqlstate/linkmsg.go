package sqlstate

import (
	"context"
	"database/sql"
	"encoding/hex"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/internal/linkrules"
)

// Messages and their objects. An object is a row of link_objects by id,
// whatever messages and runs hold it: its children in link_children, the
// runs it belongs to in link_run_objects, and refs, the parent objects
// that name it (Flower's ObjectStore). An object nothing names goes when
// its message is confirmed or forgotten, and takes with it the children
// nothing else names. The bytes of a large object (linkBlobMin and more:
// the ArrayChunks of arrays, up to 5 MiB each) are the blob of the same
// SHA-256, in chunks (blobs.go), shared with the 1.8.0 arrays' store and
// its cache: pushed, they are kept in the process; pulled by many nodes,
// they are read once and handed to every response without a copy (the
// codec references them).

// linkBlobMin is the size from which an object's bytes are a blob: the
// codec's bigBytes, from which it sends bytes fields by reference and
// asks the state (FindBlob) for content it holds.
const linkBlobMin = 64 << 10

// objectSum is the SHA-256 an object id spells.
func objectSum(id string) (sum, bool) {
	var h sum
	n, err := hex.Decode(h[:], []byte(id))
	return h, err == nil && n == len(h)
}

// children returns the children of object id in order, and whether it is
// held.
func (s *State) children(ctx context.Context, tx *txn, id string) ([]string, bool, error) {
	rows, err := tx.QueryContext(ctx, `SELECT c.child FROM link_objects o LEFT JOIN link_children c ON c.parent = o.id WHERE o.id = $1 ORDER BY c.pos`, id)
	if err != nil {
		return nil, false, err
	}
	held := false
	var out []string
	for rows.Next() {
		held = true
		var c sql.NullString
		if err := rows.Scan(&c); err != nil {
			rows.Close()
			return nil, false, err
		}
		if c.Valid {
			out = append(out, c.String)
		}
	}
	return out, held, rows.Close()
}

// treeBelow is the recursive query of the objects below $1 and $1.
const treeBelow = `WITH RECURSIVE t(id) AS (SELECT CAST($1 AS TEXT) UNION SELECT c.child FROM link_children c JOIN t ON c.parent = t.id) `

// complete reports whether object id and every object below it are held
// and available.
func (s *State) complete(ctx context.Context, tx *txn, id string) (bool, error) {
	var all, held, avail int
	err := tx.QueryRowContext(ctx, treeBelow+`SELECT COUNT(*), COUNT(o.id), COALESCE(SUM(o.available), 0) FROM t LEFT JOIN link_objects o ON o.id = t.id`, id).
		Scan(&all, &held, &avail)
	return err == nil && held == all && avail == all, err
}

// linkTree returns the object tree of id, as held.
func (s *State) linkTree(ctx context.Context, tx *txn, id string) (*flwr129.ObjectTree, error) {
	rows, err := tx.QueryContext(ctx, treeBelow+`SELECT c.parent, c.child FROM link_children c JOIN t ON c.parent = t.id ORDER BY c.parent, c.pos`, id)
	if err != nil {
		return nil, err
	}
	kids := map[string][]string{}
	for rows.Next() {
		var p, c string
		if err := rows.Scan(&p, &c); err != nil {
			rows.Close()
			return nil, err
		}
		kids[p] = append(kids[p], c)
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	return linkrules.Tree(id, func(id string) []string { return kids[id] }), nil
}

// checkTree flattens a message's tree and checks it against the objects
// held: an id already held keeps its children. checked holds the ids
// checked already in the call.
func (s *State) checkTree(ctx context.Context, tx *txn, t *flwr129.ObjectTree, messageID string, checked map[string]bool) ([]linkrules.TreeNode, error) {
	nodes, err := linkrules.FlattenTree(t, messageID)
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if checked[n.ID] {
			continue
		}
		checked[n.ID] = true
		kids, held, err := s.children(ctx, tx, n.ID)
		if err != nil {
			return nil, err
		}
		if held && !slices.Equal(kids, n.Children) {
			return nil, status.Errorf(codes.InvalidArgument, "object %s is held with other children than the tree gives it", n.ID)
		}
	}
	return nodes, nil
}

// preregister registers a checked tree's objects in a run (Flower's
// ObjectStore.preregister), records that node owes those not yet
// available for message msg, and appends them to push. seen holds, for
// the ids registered already in the call, whether they are available;
// owed counts the (object, message) pairs the node owes anew.
func (s *State) preregister(ctx context.Context, tx *txn, node, runID uint64, msg string, nodes []linkrules.TreeNode, push []string, seen map[string]bool, owed *int) ([]string, error) {
	before := *owed
	for _, n := range nodes {
		avail, ok := seen[n.ID]
		if !ok {
			res, err := tx.ExecContext(ctx, `INSERT INTO link_objects (id) VALUES ($1) ON CONFLICT (id) DO NOTHING`, n.ID)
			if err != nil {
				return nil, err
			}
			if added, err := res.RowsAffected(); err != nil {
				return nil, err
			} else if added == 1 {
				for pos, c := range n.Children {
					if _, err := tx.ExecContext(ctx, `INSERT INTO link_children (parent, pos, child) VALUES ($1, $2, $3)`, n.ID, pos, c); err != nil {
						return nil, err
					}
					if _, err := tx.ExecContext(ctx, `UPDATE link_objects SET refs = refs + 1 WHERE id = $1`, c); err != nil {
						return nil, err
					}
				}
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO link_run_objects (run_id, object_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, dbID(runID), n.ID); err != nil {
				return nil, err
			}
			var a int
			if err := tx.QueryRowContext(ctx, `SELECT available FROM link_objects WHERE id = $1`, n.ID).Scan(&a); err != nil {
				return nil, err
			}
			avail = a == 1
			seen[n.ID] = avail
			if !avail {
				push = append(push, n.ID)
			}
		}
		if !avail {
			if added, err := s.owe(ctx, tx, node, runID, n.ID, msg); err != nil {
				return nil, err
			} else if added {
				*owed++
			}
		}
	}
	if *owed > before {
		return push, s.pusher(ctx, tx, node, runID, linkrules.Seconds(s.now()))
	}
	return push, nil
}

// deleteObject deletes an object nothing names, and then its children
// that nothing else names (Flower's ObjectStore.delete).
func (s *State) deleteObject(ctx context.Context, tx *txn, ops *linkOps, id string) error {
	stack := []string{id}
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		var refs int64
		var inBlob bool
		err := tx.QueryRowContext(ctx, `SELECT refs, available = 1 AND content IS NULL FROM link_objects WHERE id = $1`+s.d.forUpdate, id).Scan(&refs, &inBlob)
		if err == sql.ErrNoRows || (err == nil && refs > 0) {
			continue
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM link_objects WHERE id = $1`, id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM link_run_objects WHERE object_id = $1`, id); err != nil {
			return err
		}
		if err := s.settleObject(ctx, tx, id); err != nil {
			return err
		}
		kids, err := queryStrings(ctx, tx, `DELETE FROM link_children WHERE parent = $1 RETURNING child`, id)
		if err != nil {
			return err
		}
		for _, c := range kids {
			if _, err := tx.ExecContext(ctx, `UPDATE link_objects SET refs = refs - 1 WHERE id = $1`, c); err != nil {
				return err
			}
			stack = append(stack, c)
		}
		if h, ok := objectSum(id); ok && inBlob {
			if gone, err := s.releaseBlob(ctx, tx, h); err != nil {
				return err
			} else if gone {
				ops.released = append(ops.released, h)
			}
		}
	}
	return nil
}

// dropInstruction forgets an instruction, its reply and their message
// objects (what nothing else holds).
func (s *State) dropInstruction(ctx context.Context, tx *txn, ops *linkOps, id string) error {
	replies, err := queryStrings(ctx, tx, `DELETE FROM link_ins WHERE id = $1 RETURNING reply_id`, id)
	if err != nil {
		return err
	}
	for _, r := range replies {
		if r == "" {
			continue
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM link_replies WHERE id = $1`, r); err != nil {
			return err
		}
		if err := s.deleteObject(ctx, tx, ops, r); err != nil {
			return err
		}
	}
	return s.deleteObject(ctx, tx, ops, id)
}

// linkFinished releases what a finished run held: its token, messages and
// the objects only it used.
func (s *State) linkFinished(ctx context.Context, tx *txn, ops *linkOps, runID int64) error {
	if _, err := tx.ExecContext(ctx, `UPDATE link_runs SET token = '' WHERE id = $1`, runID); err != nil {
		return err
	}
	ins, err := queryStrings(ctx, tx, `SELECT id FROM link_ins WHERE run_id = $1`, runID)
	if err != nil {
		return err
	}
	for _, id := range ins {
		if err := s.dropInstruction(ctx, tx, ops, id); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM link_owed WHERE run_id = $1`, runID); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM link_pushers WHERE run_id = $1`, runID); err != nil {
		return err
	}
	objs, err := queryStrings(ctx, tx, `DELETE FROM link_run_objects WHERE run_id = $1 RETURNING object_id`, runID)
	if err != nil {
		return err
	}
	for _, id := range objs {
		if err := s.deleteObject(ctx, tx, ops, id); err != nil {
			return err
		}
	}
	return nil
}

// marshalAll encodes pushed messages, as they are stored.
func marshalAll(msgs []*flwr129.Message) ([][]byte, error) {
	bodies := make([][]byte, len(msgs))
	for i, m := range msgs {
		var err error
		if bodies[i], err = proto.Marshal(m); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "Malformed PushMessages: message %d: %v", i, err)
		}
	}
	return bodies, nil
}

// PushInstructions implements state.LinkState.
func (s *State) PushInstructions(ctx context.Context, runID uint64, msgs []*flwr129.Message, trees []*flwr129.ObjectTree) ([]string, []string, error) {
	bodies, err := marshalAll(msgs)
	if err != nil {
		return nil, nil, err
	}
	var ids, push []string
	err = s.linkWrite(ctx, "PushInstructions", func(tx *txn, now float64, ops *linkOps) error {
		ids, push = nil, nil
		if _, err := s.runningRun(ctx, tx, runID, now); err != nil {
			return err
		}
		if err := linkrules.CheckPairs(msgs, trees); err != nil {
			return err
		}
		checked := make([][]linkrules.TreeNode, len(msgs))
		seen := map[string]bool{}
		for i, m := range msgs {
			if err := linkrules.CheckMessage(m, false, now); err != nil {
				return err
			}
			if m.Metadata.RunId != runID {
				return status.Error(codes.InvalidArgument, "Malformed PushMessages: `Message.metadata` has mismatched `run_id`")
			}
			var err error
			if checked[i], err = s.checkTree(ctx, tx, trees[i], m.Metadata.MessageId, seen); err != nil {
				return err
			}
		}
		ids = make([]string, len(msgs))
		done := map[string]bool{}
		owed := 0
		for i, m := range msgs {
			md := m.Metadata
			var st string
			err := tx.QueryRowContext(ctx, `SELECT status FROM link_nodes WHERE id = $1`, dbID(md.DstNodeId)).Scan(&st)
			if err != nil && err != sql.ErrNoRows {
				return err
			}
			if st != state.NodeOnline && st != state.NodeOffline {
				dst := md.DstNodeId
				ops.then(func() {
					s.log.Warn("message not stored: its destination node is unknown or not active", "run_id", runID, "dst_node_id", dst)
				})
				continue // Flower: the message gets the id ""
			}
			ids[i] = md.MessageId
			if push, err = s.preregister(ctx, tx, state.SuperLinkNodeID, runID, md.MessageId, checked[i], push, done, &owed); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO link_ins (id, run_id, dst_node, created_at, ttl, expires_at, msg) VALUES ($1, $2, $3, $4, $5, $6, $7)
				ON CONFLICT (id) DO NOTHING`, md.MessageId, dbID(runID), dbID(md.DstNodeId), md.CreatedAt, md.Ttl, md.CreatedAt+md.Ttl, bodies[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return ids, push, nil
}

// PullInstruction implements state.LinkState: the first message for the
// node whose objects are all pushed, among those delivered by a replica
// no longer alive and not answered (see PullTaskIns), or else among those
// not delivered.
func (s *State) PullInstruction(ctx context.Context, nodeID uint64) (*flwr129.Message, *flwr129.ObjectTree, error) {
	me := s.replica.Load()
	var m *flwr129.Message
	var tree *flwr129.ObjectTree
	var taken, at int64 // the seq delivered (0 for none) and when
	err, maybe := s.linkWriteMaybe(ctx, "PullInstruction", func(tx *txn, now float64, ops *linkOps) error {
		m, tree, taken = nil, nil, 0
		undid, err := s.undeliver(ctx, tx)
		if err != nil {
			return err
		}
		ops.then(func() { s.undelivered(undid) })
		type candidate struct {
			seq int64
			id  string
			by  sql.NullInt64
		}
		pick := func(q string) (*candidate, error) {
			rows, err := tx.QueryContext(ctx, q+` ORDER BY seq`+s.d.forUpdate+s.d.skipLocked, dbID(nodeID), now)
			if err != nil {
				return nil, err
			}
			var list []candidate
			for rows.Next() {
				var c candidate
				if err := rows.Scan(&c.seq, &c.id, &c.by); err != nil {
					rows.Close()
					return nil, err
				}
				list = append(list, c)
			}
			if err := rows.Close(); err != nil {
				return nil, err
			}
			for _, c := range list {
				if ok, err := s.complete(ctx, tx, c.id); err != nil || ok {
					return &c, err
				}
			}
			return nil, nil
		}
		c, err := pick(`SELECT seq, id, delivered_by FROM link_ins WHERE dst_node = $1 AND delivered_at IS NOT NULL AND reply_id = '' AND expires_at > $2
			AND NOT ` + s.d.aliveSQL("link_ins.delivered_by"))
		again := c != nil
		if err == nil && c == nil {
			c, err = pick(`SELECT seq, id, delivered_by FROM link_ins WHERE dst_node = $1 AND delivered_at IS NULL AND expires_at > $2`)
		}
		if err != nil || c == nil {
			return err
		}
		at = int64(now * 1e6)
		var body []byte
		err = tx.QueryRowContext(ctx, `UPDATE link_ins SET delivered_at = $1, delivered_by = $2
			WHERE seq = $3 AND (delivered_at IS NULL OR NOT `+s.d.aliveSQL("link_ins.delivered_by")+`) RETURNING msg`, at, me, c.seq).Scan(&body)
		if err == sql.ErrNoRows {
			return nil // the replica that delivered it lives again: the node asks again
		}
		if err != nil {
			return err
		}
		msg := &flwr129.Message{}
		if err := proto.Unmarshal(body, msg); err != nil {
			return err
		}
		if tree, err = s.linkTree(ctx, tx, c.id); err != nil {
			return err
		}
		m, taken = msg, c.seq
		if again {
			ops.then(func() {
				s.log.Info("message delivered again: its node asks for work without having answered it, so the response was lost when the SuperLink that sent it stopped",
					"message_id", c.id, "node_id", nodeID, "delivered_by_replica", c.by.Int64, "generation", "1.29")
			})
		}
		return nil
	})
	if err != nil && maybe && taken != 0 {
		// The delivery may be committed while the node is told it failed:
		// make it deliverable again once the database answers.
		s.undeliverLater(undelivery{seq: taken, at: at, by: me, link: true})
	}
	if err != nil {
		return nil, nil, err
	}
	return m, tree, nil
}

// insRow is what a reply or PullReplies needs of an instruction.
type insRow struct {
	runID, dst   uint64
	createdAt    float64
	ttl          float64
	replyID      string
	resDelivered bool
	body         []byte
}

// instruction returns instruction id, its row locked; nil when unknown.
func (s *State) instruction(ctx context.Context, tx *txn, id string) (*insRow, error) {
	r := &insRow{}
	var run, dst int64
	err := tx.QueryRowContext(ctx, `SELECT run_id, dst_node, created_at, ttl, reply_id, res_delivered, msg FROM link_ins WHERE id = $1`+s.d.forUpdate, id).
		Scan(&run, &dst, &r.createdAt, &r.ttl, &r.replyID, &r.resDelivered, &r.body)
	if err == sql.ErrNoRows {
		return nil, nil
	}
	r.runID, r.dst = uint64(run), uint64(dst)
	return r, err
}

func (r *insRow) metadata() (*flwr129.Metadata, error) {
	m := &flwr129.Message{}
	if err := proto.Unmarshal(r.body, m); err != nil {
		return nil, err
	}
	return m.Metadata, nil
}

// PushReplies implements state.LinkState.
func (s *State) PushReplies(ctx context.Context, nodeID uint64, msgs []*flwr129.Message, trees []*flwr129.ObjectTree, runtime float64) ([]string, []string, error) {
	bodies, err := marshalAll(msgs)
	if err != nil {
		return nil, nil, err
	}
	var ids, push []string
	err = s.linkWrite(ctx, "PushReplies", func(tx *txn, now float64, ops *linkOps) error {
		ids, push = nil, nil
		if err := linkrules.CheckPairs(msgs, trees); err != nil {
			return err
		}
		if nodeID != state.SuperLinkNodeID {
			var owes int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM link_owed WHERE node_id = $1`, dbID(nodeID)).Scan(&owes); err != nil {
				return err
			}
			if err := linkrules.CheckOwed(nodeID, linkrules.TreesObjects(trees), owes, s.lim); err != nil {
				return err // before the trees are looked at
			}
		}
		checked := make([][]linkrules.TreeNode, len(msgs))
		ins := make([]*insRow, len(msgs))
		seen := map[string]bool{}
		var runID uint64
		for i, m := range msgs {
			if err := linkrules.CheckMessage(m, true, now); err != nil {
				return err
			}
			md := m.Metadata
			if md.SrcNodeId != nodeID {
				return status.Errorf(codes.PermissionDenied, "a reply from node %d names node %d as its source: a node pushes only its own replies", nodeID, md.SrcNodeId)
			}
			in, err := s.instruction(ctx, tx, md.ReplyToMessageId)
			if err != nil {
				return err
			}
			if in == nil || in.resDelivered {
				return status.Errorf(codes.NotFound, "Message with ID %s does not exist (or it expired).", md.ReplyToMessageId)
			}
			if in.dst != nodeID {
				return status.Errorf(codes.PermissionDenied, "message %s was sent to another node", md.ReplyToMessageId)
			}
			if md.RunId != in.runID || (i > 0 && md.RunId != runID) {
				return status.Error(codes.InvalidArgument, "`metadata.run_id` is invalid: it is not the run of the message replied to")
			}
			runID = md.RunId
			if _, err := s.runningRun(ctx, tx, runID, now); err != nil {
				return err
			}
			if maxTTL := in.createdAt + in.ttl - md.CreatedAt; md.Ttl-maxTTL > state.MessageTTLTolerance {
				return status.Errorf(codes.InvalidArgument, "Received Message with TTL %.2f exceeding the allowed maximum TTL %.2f.", md.Ttl, maxTTL)
			}
			if checked[i], err = s.checkTree(ctx, tx, trees[i], md.MessageId, seen); err != nil {
				return err
			}
			ins[i] = in
		}
		// The run's row, locked: the replies of its nodes count what
		// they owe one at a time.
		var one int
		if err := tx.QueryRowContext(ctx, `SELECT 1 FROM link_runs WHERE id = $1`+s.d.forUpdate, dbID(runID)).Scan(&one); err != nil {
			return err
		}
		ids = make([]string, len(msgs))
		done := map[string]bool{}
		owed := 0
		for i, m := range msgs {
			id := m.Metadata.MessageId
			if old := ins[i].replyID; old != "" && old != id { // Flower: the last reply wins
				if _, err := tx.ExecContext(ctx, `DELETE FROM link_replies WHERE id = $1`, old); err != nil {
					return err
				}
				if err := s.deleteObject(ctx, tx, ops, old); err != nil {
					return err
				}
			}
			var err error
			if push, err = s.preregister(ctx, tx, nodeID, runID, id, checked[i], push, done, &owed); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO link_replies (id, ins_id, msg) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING`,
				id, m.Metadata.ReplyToMessageId, bodies[i]); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE link_ins SET reply_id = $1 WHERE id = $2`, id, m.Metadata.ReplyToMessageId); err != nil {
				return err
			}
			ins[i].replyID = id
			ids[i] = id
		}
		if err := s.checkOwed(ctx, tx, ops, nodeID, runID, owed); err != nil {
			return err
		}
		if runtime > 0 {
			if _, err := tx.ExecContext(ctx, `UPDATE link_runs SET clientapp_runtime = clientapp_runtime + $1 WHERE id = $2`, runtime, dbID(runID)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return ids, push, nil
}

// replyMsg returns the stored reply id.
func (s *State) replyMsg(ctx context.Context, tx *txn, id string) (*flwr129.Message, error) {
	var b []byte
	if err := tx.QueryRowContext(ctx, `SELECT msg FROM link_replies WHERE id = $1`, id).Scan(&b); err != nil {
		return nil, err
	}
	m := &flwr129.Message{}
	return m, proto.Unmarshal(b, m)
}

// PullReplies implements state.LinkState.
func (s *State) PullReplies(ctx context.Context, runID uint64, messageIDs []string) ([]*flwr129.Message, []*flwr129.ObjectTree, error) {
	var out []*flwr129.Message
	var trees []*flwr129.ObjectTree
	err := s.linkWrite(ctx, "PullReplies", func(tx *txn, now float64, ops *linkOps) error {
		out, trees = nil, nil
		if _, err := s.runningRun(ctx, tx, runID, now); err != nil {
			return err
		}
		add := func(m *flwr129.Message) error {
			t, err := s.linkTree(ctx, tx, m.Metadata.MessageId)
			out, trees = append(out, m), append(trees, t)
			return err
		}
		asked := map[string]bool{}
		for _, id := range messageIDs {
			if asked[id] {
				continue
			}
			asked[id] = true
			in, err := s.instruction(ctx, tx, id)
			if err != nil {
				return err
			}
			if in == nil || in.runID != runID {
				m, err := s.madeUp(ctx, tx, runID, nil, id, linkrules.ErrMessageUnavailable, linkrules.ReasonMessageUnavailable, now)
				if err != nil {
					return err
				}
				if err := add(m); err != nil {
					return err
				}
				continue
			}
			if in.resDelivered {
				m, err := s.replyMsg(ctx, tx, in.replyID)
				if err != nil {
					return err
				}
				if err := add(m); err != nil {
					return err
				}
				continue
			}
			var res *flwr129.Message
			code, reason := int64(0), ""
			complete := false
			if in.replyID != "" {
				if complete, err = s.complete(ctx, tx, in.replyID); err != nil {
					return err
				}
			}
			if complete {
				if res, err = s.replyMsg(ctx, tx, in.replyID); err != nil {
					return err
				}
				if linkrules.Expired(res.Metadata, now) {
					res, code, reason = nil, linkrules.ErrReplyMessageUnavailable, linkrules.ReasonReplyMessageUnavailable
				}
			} else {
				var st string
				var until sql.NullFloat64
				err := tx.QueryRowContext(ctx, `SELECT status, online_until FROM link_nodes WHERE id = $1`, dbID(in.dst)).Scan(&st, &until)
				if err != nil && err != sql.ErrNoRows {
					return err
				}
				if err == nil && st != state.NodeUnregistered && until.Valid && until.Float64 >= now {
					continue // no reply yet
				}
				code, reason = linkrules.ErrNodeUnavailable, linkrules.ReasonNodeUnavailable
			}
			if res == nil { // made up: the instruction's reply from now on
				if in.replyID != "" {
					if _, err := tx.ExecContext(ctx, `DELETE FROM link_replies WHERE id = $1`, in.replyID); err != nil {
						return err
					}
					if err := s.deleteObject(ctx, tx, ops, in.replyID); err != nil {
						return err
					}
				}
				md, err := in.metadata()
				if err != nil {
					return err
				}
				if res, err = s.madeUp(ctx, tx, runID, md, id, code, reason, now); err != nil {
					return err
				}
				body, err := proto.Marshal(res)
				if err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO link_replies (id, ins_id, msg) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING`,
					res.Metadata.MessageId, id, body); err != nil {
					return err
				}
			}
			// The ServerApp has its answer, unless the response is lost:
			// release the instruction's objects, keep the pair.
			if _, err := tx.ExecContext(ctx, `UPDATE link_ins SET reply_id = $1, res_delivered = 1 WHERE id = $2`, res.Metadata.MessageId, id); err != nil {
				return err
			}
			if err := s.deleteObject(ctx, tx, ops, id); err != nil {
				return err
			}
			if err := add(res); err != nil {
				return err
			}
		}
		// The pairs delivered before and not asked for now: the ServerApp
		// has them. The replies' objects stay until it confirms them.
		rows, err := tx.QueryContext(ctx, `SELECT id, reply_id FROM link_ins WHERE run_id = $1 AND res_delivered = 1`+s.d.forUpdate, dbID(runID))
		if err != nil {
			return err
		}
		var gone [][2]string
		for rows.Next() {
			var id, reply string
			if err := rows.Scan(&id, &reply); err != nil {
				rows.Close()
				return err
			}
			if !asked[id] {
				gone = append(gone, [2]string{id, reply})
			}
		}
		if err := rows.Close(); err != nil {
			return err
		}
		for _, g := range gone {
			if _, err := tx.ExecContext(ctx, `DELETE FROM link_ins WHERE id = $1`, g[0]); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM link_replies WHERE id = $1`, g[1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return out, trees, nil
}

// madeUp makes up an error reply and holds its object in the run, as
// Flower registers it in the ObjectStore.
func (s *State) madeUp(ctx context.Context, tx *txn, runID uint64, ins *flwr129.Metadata, insID string, code int64, reason string, now float64) (*flwr129.Message, error) {
	m, content := linkrules.MadeUpReply(ins, insID, code, reason, now)
	id := m.Metadata.MessageId
	if _, err := tx.ExecContext(ctx, `INSERT INTO link_objects (id, available, size, content) VALUES ($1, 1, $2, $3) ON CONFLICT (id) DO NOTHING`,
		id, len(content), content); err != nil {
		return nil, err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO link_run_objects (run_id, object_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, dbID(runID), id)
	return m, err
}

// PushObject implements state.LinkState. The content is hashed and parsed
// before the transaction; a large one is written as a blob (once, however
// many objects or arrays have those bytes) and kept in the process.
func (s *State) PushObject(ctx context.Context, runID, nodeID uint64, id string, content []byte) (bool, error) {
	obj := linkrules.PrepareObject(id, content)
	big := len(content) >= linkBlobMin
	err := s.linkWrite(ctx, "PushObject", func(tx *txn, now float64, ops *linkOps) error {
		if _, err := s.runningRun(ctx, tx, runID, now); err != nil {
			return err
		}
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM link_owed WHERE object_id = $1 AND node_id = $2 AND run_id = $3 LIMIT 1`, id, dbID(nodeID), dbID(runID)).Scan(&one)
		owed := err == nil
		if err != nil && err != sql.ErrNoRows {
			return err
		}
		if !owed && nodeID != state.SuperLinkNodeID {
			if in, err := s.inRun(ctx, tx, nodeID, runID); err != nil || !in {
				if err == nil {
					err = linkrules.NotInRun(nodeID, runID)
				}
				return err
			}
		}
		var avail int
		err = tx.QueryRowContext(ctx, `SELECT o.available FROM link_objects o JOIN link_run_objects r ON r.object_id = o.id
			WHERE o.id = $1 AND r.run_id = $2`+s.d.forUpdate, id, dbID(runID)).Scan(&avail)
		if err == sql.ErrNoRows || (err == nil && !owed && avail == 0) {
			return linkrules.NotOwed(id, nodeID, runID)
		}
		if err != nil {
			return err
		}
		kids, _, err := s.children(ctx, tx, id)
		if err != nil {
			return err
		}
		if err := obj.Check(kids); err != nil {
			return err
		}
		if avail == 1 {
			return nil // pushed already, by another
		}
		var pushed int64
		if err := tx.QueryRowContext(ctx, `SELECT bytes FROM link_pushers WHERE node_id = $1 AND run_id = $2`+s.d.forUpdate, dbID(nodeID), dbID(runID)).Scan(&pushed); err != nil {
			return err
		}
		if nodeID != state.SuperLinkNodeID && pushed+int64(len(content)) > s.lim.MaxPendingBytesPerNode {
			return linkrules.PendingBytesError(nodeID, runID, pushed, int64(len(content)), s.lim)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE link_pushers SET bytes = bytes + $1, deadline = $2 WHERE node_id = $3 AND run_id = $4`,
			len(content), now+s.lim.PushTimeout.Seconds(), dbID(nodeID), dbID(runID)); err != nil {
			return err
		}
		if err := s.settleObject(ctx, tx, id); err != nil {
			return err
		}
		if big {
			if err := s.putBlob(ctx, tx, obj.Sum, content); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE link_objects SET available = 1, size = $1 WHERE id = $2`, len(content), id); err != nil {
				return err
			}
			ops.then(func() { s.cache.put(obj.Sum, content) })
		} else if _, err := tx.ExecContext(ctx, `UPDATE link_objects SET available = 1, size = $1, content = $2 WHERE id = $3`, len(content), content, id); err != nil {
			return err
		}
		if nodeID != state.SuperLinkNodeID {
			_, err = tx.ExecContext(ctx, `UPDATE link_runs SET bytes_recv = bytes_recv + $1 WHERE id = $2`, len(content), dbID(runID))
		}
		return err
	})
	return err == nil, err
}

// PullObject implements state.LinkState. A large object's bytes come from
// the process's cache, or from the database once and then the cache: the
// slice returned is shared, every response references it.
func (s *State) PullObject(ctx context.Context, runID, nodeID uint64, id string) ([]byte, bool, bool, error) {
	var content []byte
	var found, avail bool
	err := s.linkWrite(ctx, "PullObject", func(tx *txn, now float64, ops *linkOps) error {
		content, found, avail = nil, false, false
		if _, err := s.runningRun(ctx, tx, runID, now); err != nil {
			return err
		}
		if nodeID != state.SuperLinkNodeID {
			if in, err := s.inRun(ctx, tx, nodeID, runID); err != nil || !in {
				if err == nil {
					err = linkrules.NotInRun(nodeID, runID)
				}
				return err
			}
		}
		var size int64
		var small []byte
		err := tx.QueryRowContext(ctx, `SELECT o.available, o.size, o.content FROM link_objects o JOIN link_run_objects r ON r.object_id = o.id
			WHERE o.id = $1 AND r.run_id = $2`, id, dbID(runID)).Scan(&avail, &size, &small)
		if err == sql.ErrNoRows {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		if !avail {
			return nil
		}
		content = small
		if content == nil {
			h, ok := objectSum(id)
			if !ok {
				return status.Errorf(codes.Internal, "object %.80s: its bytes are a blob, but its id is not a SHA-256", id)
			}
			if content, err = s.cache.load(ctx, h, func() ([]byte, error) { return s.readBlob(ctx, tx, h) }); err != nil {
				return err
			}
		}
		if nodeID != state.SuperLinkNodeID {
			_, err = tx.ExecContext(ctx, `UPDATE link_runs SET bytes_sent = bytes_sent + $1 WHERE id = $2`, size, dbID(runID))
		}
		return err
	})
	if err != nil {
		return nil, false, false, err
	}
	return content, found, avail, nil
}

// ConfirmMessageReceived implements state.LinkState.
func (s *State) ConfirmMessageReceived(ctx context.Context, runID, nodeID uint64, messageID string) error {
	return s.linkWrite(ctx, "ConfirmMessageReceived", func(tx *txn, now float64, ops *linkOps) error {
		if _, err := s.runningRun(ctx, tx, runID, now); err != nil {
			return err
		}
		var one int
		if nodeID != state.SuperLinkNodeID {
			err := tx.QueryRowContext(ctx, `SELECT 1 FROM link_ins WHERE id = $1 AND dst_node = $2 AND run_id = $3`, messageID, dbID(nodeID), dbID(runID)).Scan(&one)
			if err == sql.ErrNoRows {
				return linkrules.NotAddressed(messageID, nodeID, runID)
			}
			if err != nil {
				return err
			}
		}
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM link_run_objects WHERE run_id = $1 AND object_id = $2`, dbID(runID), messageID).Scan(&one)
		if err == sql.ErrNoRows {
			return nil
		}
		if err != nil {
			return err
		}
		return s.deleteObject(ctx, tx, ops, messageID)
	})
}
