-- Schema version 5: the bounds of the Flower 1.29.0 generation
-- (state.LinkLimits; see linklimits.go).

-- self_registered: the node registered itself through the Fleet API, and
-- may be forgotten to make room for another.
ALTER TABLE link_nodes ADD COLUMN self_registered INTEGER NOT NULL DEFAULT 0;
CREATE INDEX link_nodes_unactivated ON link_nodes (seq) WHERE self_registered = 1 AND status = 'registered' AND last_activated_at IS NULL;

-- The size of a FAB's content, which LinkLimits.MaxFabBytes bounds.
ALTER TABLE link_fabs ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE link_fabs SET size = length(fab);

-- The instructions of a run to a node: a node with none in a run may not
-- push, pull or confirm there.
CREATE INDEX link_ins_node_run ON link_ins (dst_node, run_id);

-- What nodes (and the ServerApp, node 1) owe: the objects their messages
-- name and they have not pushed, by message. A row goes when the object
-- is pushed or forgotten.
CREATE TABLE link_owed (
	object_id  TEXT    NOT NULL,
	node_id    INTEGER NOT NULL,
	run_id     INTEGER NOT NULL,
	message_id TEXT    NOT NULL,
	PRIMARY KEY (object_id, node_id, run_id, message_id)
);
CREATE INDEX link_owed_pusher ON link_owed (node_id, run_id);
CREATE INDEX link_owed_run ON link_owed (run_id);

-- A node (or the ServerApp) that owes objects in a run: bytes it pushed
-- there since, and when it is forgotten, with the messages it owes them
-- for, unless it pushes again.
CREATE TABLE link_pushers (
	node_id  INTEGER NOT NULL,
	run_id   INTEGER NOT NULL,
	bytes    INTEGER NOT NULL DEFAULT 0,
	deadline REAL    NOT NULL,
	PRIMARY KEY (node_id, run_id)
);
CREATE INDEX link_pushers_deadline ON link_pushers (deadline);

-- The rows CreateLinkRun and RegisterNode lock while they check the
-- limits, so that the replicas admit runs and nodes one at a time.
INSERT INTO meta (key, value) VALUES ('link_run_admission', 0) ON CONFLICT (key) DO NOTHING;
INSERT INTO meta (key, value) VALUES ('link_node_admission', 0) ON CONFLICT (key) DO NOTHING;
