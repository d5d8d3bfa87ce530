-- Schema version 3: the Flower 1.29.0 generation (the same tables and
-- columns as SQLite's version 4; see migrations/sqlite for what they hold).
-- Times are seconds since the epoch (DOUBLE PRECISION), but for
-- link_ins.delivered_at (unix microseconds); node and run ids are uint64
-- kept bit for bit in a BIGINT.

CREATE TABLE link_nodes (
	seq                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	id                  BIGINT           NOT NULL UNIQUE,
	public_key          BYTEA            NOT NULL UNIQUE,
	status              TEXT             NOT NULL,
	heartbeat_interval  DOUBLE PRECISION NOT NULL,
	registered_at       DOUBLE PRECISION NOT NULL,
	last_activated_at   DOUBLE PRECISION,
	last_deactivated_at DOUBLE PRECISION,
	unregistered_at     DOUBLE PRECISION,
	online_until        DOUBLE PRECISION
);
CREATE INDEX link_nodes_online ON link_nodes (online_until) WHERE status = 'online';

CREATE TABLE link_fabs (
	hash_str TEXT  PRIMARY KEY,
	fab      BYTEA NOT NULL
);

CREATE TABLE link_runs (
	seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	id                BIGINT           NOT NULL UNIQUE,
	run               BYTEA            NOT NULL,
	status            TEXT             NOT NULL,
	sub_status        TEXT             NOT NULL DEFAULT '',
	details           TEXT             NOT NULL DEFAULT '',
	starting_at       TEXT             NOT NULL DEFAULT '',
	running_at        TEXT             NOT NULL DEFAULT '',
	finished_at       TEXT             NOT NULL DEFAULT '',
	bytes_sent        BIGINT           NOT NULL DEFAULT 0,
	bytes_recv        BIGINT           NOT NULL DEFAULT 0,
	clientapp_runtime DOUBLE PRECISION NOT NULL DEFAULT 0,
	token             TEXT             NOT NULL DEFAULT '',
	token_until       DOUBLE PRECISION NOT NULL DEFAULT 0,
	context           BYTEA            NOT NULL,
	log_bytes         BIGINT           NOT NULL DEFAULT 0
);
CREATE INDEX link_runs_token ON link_runs (token) WHERE token <> '';
CREATE INDEX link_runs_token_until ON link_runs (token_until) WHERE token <> '';
CREATE INDEX link_runs_status ON link_runs (status, seq);

CREATE TABLE link_logs (
	seq    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	run_id BIGINT           NOT NULL,
	at     DOUBLE PRECISION NOT NULL,
	text   BYTEA            NOT NULL
);
CREATE INDEX link_logs_run ON link_logs (run_id, at);

CREATE TABLE link_ins (
	seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	id            TEXT             NOT NULL UNIQUE,
	run_id        BIGINT           NOT NULL,
	dst_node      BIGINT           NOT NULL,
	created_at    DOUBLE PRECISION NOT NULL,
	ttl           DOUBLE PRECISION NOT NULL,
	expires_at    DOUBLE PRECISION NOT NULL,
	msg           BYTEA            NOT NULL,
	delivered_at  BIGINT,
	delivered_by  BIGINT,
	reply_id      TEXT             NOT NULL DEFAULT '',
	res_delivered INTEGER          NOT NULL DEFAULT 0
);
CREATE INDEX link_ins_queue ON link_ins (dst_node, seq) WHERE delivered_at IS NULL;
CREATE INDEX link_ins_unanswered ON link_ins (dst_node, seq) WHERE delivered_at IS NOT NULL AND reply_id = '';
CREATE INDEX link_ins_run ON link_ins (run_id);
CREATE INDEX link_ins_expiry ON link_ins (expires_at);

CREATE TABLE link_replies (
	id     TEXT  PRIMARY KEY,
	ins_id TEXT  NOT NULL,
	msg    BYTEA NOT NULL
);

CREATE TABLE link_objects (
	id        TEXT    PRIMARY KEY,
	refs      BIGINT  NOT NULL DEFAULT 0,
	available INTEGER NOT NULL DEFAULT 0,
	size      BIGINT  NOT NULL DEFAULT 0,
	content   BYTEA
);
CREATE TABLE link_children (
	parent TEXT    NOT NULL,
	pos    INTEGER NOT NULL,
	child  TEXT    NOT NULL,
	PRIMARY KEY (parent, pos)
);
CREATE TABLE link_run_objects (
	run_id    BIGINT NOT NULL,
	object_id TEXT   NOT NULL,
	PRIMARY KEY (run_id, object_id)
);
CREATE INDEX link_run_objects_object ON link_run_objects (object_id);
