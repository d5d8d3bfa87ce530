-- Schema version 4: the Flower 1.29.0 generation (state.LinkState; see
-- link.go). Its times are seconds since the epoch (REAL), as Flower keeps
-- them, but for link_ins.delivered_at (unix microseconds, as task_ins);
-- node and run ids are uint64 kept bit for bit in a signed INTEGER.

-- SuperNodes by public key; seq is the registration order. status is the
-- one last written: a node written 'online' whose online_until has passed
-- is offline since then, and every reader takes it so.
CREATE TABLE link_nodes (
	seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
	id                  INTEGER NOT NULL UNIQUE,
	public_key          BLOB    NOT NULL UNIQUE,
	status              TEXT    NOT NULL,
	heartbeat_interval  REAL    NOT NULL,
	registered_at       REAL    NOT NULL,
	last_activated_at   REAL,
	last_deactivated_at REAL,
	unregistered_at     REAL,
	online_until        REAL
);
CREATE INDEX link_nodes_online ON link_nodes (online_until) WHERE status = 'online';

-- FABs once by their hash: fab is the flwr.proto.Fab (content and
-- verifications).
CREATE TABLE link_fabs (
	hash_str TEXT PRIMARY KEY,
	fab      BLOB NOT NULL
);

-- Runs; seq is the creation order. run is the flwr.proto.Run of what never
-- changes (FAB, config, federation, pending_at), the columns what does.
-- token is the ServerApp's, '' for none; a run whose token_until has passed
-- has failed (readers take it so; the next write records it and releases
-- what the run held). context is the ServerApp's flwr.proto.Context.
CREATE TABLE link_runs (
	seq               INTEGER PRIMARY KEY AUTOINCREMENT,
	id                INTEGER NOT NULL UNIQUE,
	run               BLOB    NOT NULL,
	status            TEXT    NOT NULL,
	sub_status        TEXT    NOT NULL DEFAULT '',
	details           TEXT    NOT NULL DEFAULT '',
	starting_at       TEXT    NOT NULL DEFAULT '',
	running_at        TEXT    NOT NULL DEFAULT '',
	finished_at       TEXT    NOT NULL DEFAULT '',
	bytes_sent        INTEGER NOT NULL DEFAULT 0,
	bytes_recv        INTEGER NOT NULL DEFAULT 0,
	clientapp_runtime REAL    NOT NULL DEFAULT 0,
	token             TEXT    NOT NULL DEFAULT '',
	token_until       REAL    NOT NULL DEFAULT 0,
	context           BLOB    NOT NULL,
	log_bytes         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX link_runs_token ON link_runs (token) WHERE token <> '';
CREATE INDEX link_runs_token_until ON link_runs (token_until) WHERE token <> '';
CREATE INDEX link_runs_status ON link_runs (status, seq);

-- The ServerApps' output; at strictly increases within a run, so that a
-- reader asking for what came after a stamp never misses a line.
CREATE TABLE link_logs (
	seq    INTEGER PRIMARY KEY AUTOINCREMENT,
	run_id INTEGER NOT NULL,
	at     REAL    NOT NULL,
	text   BLOB    NOT NULL
);
CREATE INDEX link_logs_run ON link_logs (run_id, at);

-- Instructions (ServerApp to node): msg is the flwr.proto.Message as pushed
-- (its content travels as objects). delivered_at and delivered_by (the
-- replica) once PullInstruction handed it out; reply_id once its reply
-- came (or was made up); res_delivered once PullReplies handed that out
-- (the pair stays until the run's next PullReplies no longer asks for it).
CREATE TABLE link_ins (
	seq           INTEGER PRIMARY KEY AUTOINCREMENT,
	id            TEXT    NOT NULL UNIQUE,
	run_id        INTEGER NOT NULL,
	dst_node      INTEGER NOT NULL,
	created_at    REAL    NOT NULL,
	ttl           REAL    NOT NULL,
	expires_at    REAL    NOT NULL,
	msg           BLOB    NOT NULL,
	delivered_at  INTEGER,
	delivered_by  INTEGER,
	reply_id      TEXT    NOT NULL DEFAULT '',
	res_delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX link_ins_queue ON link_ins (dst_node, seq) WHERE delivered_at IS NULL;
CREATE INDEX link_ins_unanswered ON link_ins (dst_node, seq) WHERE delivered_at IS NOT NULL AND reply_id = '';
CREATE INDEX link_ins_run ON link_ins (run_id);
CREATE INDEX link_ins_expiry ON link_ins (expires_at);

-- The replies, by their id; ins_id is the instruction they answer.
CREATE TABLE link_replies (
	id     TEXT PRIMARY KEY,
	ins_id TEXT NOT NULL,
	msg    BLOB NOT NULL
);

-- Objects by id (the SHA-256 of their bytes), once, whatever holds them.
-- refs counts the parent objects that name them; available: the content
-- was pushed. content holds the bytes of a small object; those of a large
-- one (link.go: linkBlobMin) are the blob of the same SHA-256 (blobs,
-- blob_chunks), of which each large object available holds one ref.
CREATE TABLE link_objects (
	id        TEXT    PRIMARY KEY,
	refs      INTEGER NOT NULL DEFAULT 0,
	available INTEGER NOT NULL DEFAULT 0,
	size      INTEGER NOT NULL DEFAULT 0,
	content   BLOB
);
-- The children of an object, in the order its tree gave them.
CREATE TABLE link_children (
	parent TEXT    NOT NULL,
	pos    INTEGER NOT NULL,
	child  TEXT    NOT NULL,
	PRIMARY KEY (parent, pos)
);
-- The runs an object belongs to: only they may push or pull it.
CREATE TABLE link_run_objects (
	run_id    INTEGER NOT NULL,
	object_id TEXT    NOT NULL,
	PRIMARY KEY (run_id, object_id)
);
CREATE INDEX link_run_objects_object ON link_run_objects (object_id);
