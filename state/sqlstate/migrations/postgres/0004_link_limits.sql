-- Schema version 4: the bounds of the Flower 1.29.0 generation (the same
-- as SQLite's version 5, see migrations/sqlite), and the node signatures
-- that served calls, which replicas share.

ALTER TABLE link_nodes ADD COLUMN self_registered INTEGER NOT NULL DEFAULT 0;
CREATE INDEX link_nodes_unactivated ON link_nodes (seq) WHERE self_registered = 1 AND status = 'registered' AND last_activated_at IS NULL;

ALTER TABLE link_fabs ADD COLUMN size BIGINT NOT NULL DEFAULT 0;
UPDATE link_fabs SET size = length(fab);

CREATE INDEX link_ins_node_run ON link_ins (dst_node, run_id);

CREATE TABLE link_owed (
	object_id  TEXT   NOT NULL,
	node_id    BIGINT NOT NULL,
	run_id     BIGINT NOT NULL,
	message_id TEXT   NOT NULL,
	PRIMARY KEY (object_id, node_id, run_id, message_id)
);
CREATE INDEX link_owed_pusher ON link_owed (node_id, run_id);
CREATE INDEX link_owed_run ON link_owed (run_id);

CREATE TABLE link_pushers (
	node_id  BIGINT           NOT NULL,
	run_id   BIGINT           NOT NULL,
	bytes    BIGINT           NOT NULL DEFAULT 0,
	deadline DOUBLE PRECISION NOT NULL,
	PRIMARY KEY (node_id, run_id)
);
CREATE INDEX link_pushers_deadline ON link_pushers (deadline);

-- A signature's tag (see LinkState.UseSignature) until it could be
-- accepted no more.
CREATE TABLE link_signatures (
	tag   BYTEA            PRIMARY KEY,
	until DOUBLE PRECISION NOT NULL
);
CREATE INDEX link_signatures_until ON link_signatures (until);

INSERT INTO meta (key, value) VALUES ('link_run_admission', 0) ON CONFLICT (key) DO NOTHING;
INSERT INTO meta (key, value) VALUES ('link_node_admission', 0) ON CONFLICT (key) DO NOTHING;
