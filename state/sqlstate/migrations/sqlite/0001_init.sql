-- The SuperLink state (Sepal schema version 1). Times are unix microseconds
-- on the SuperLink's clock; booleans are 0 or 1; task ids are UUID text.

-- meta holds single values: 'heartbeat', the last time a SuperLink on this
-- file was known to be running (the restart grace is counted from it).
CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value INTEGER NOT NULL
);

-- seq is the join order (GetNodes lists nodes in it).
CREATE TABLE nodes (
	seq           INTEGER PRIMARY KEY AUTOINCREMENT,
	id            INTEGER NOT NULL UNIQUE,
	identity      TEXT    NOT NULL,
	ping_interval REAL    NOT NULL,
	created_at    INTEGER NOT NULL,
	online_until  INTEGER NOT NULL,
	offline       INTEGER NOT NULL DEFAULT 0 -- a missed ping was noticed and logged
);

CREATE TABLE runs (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	id         INTEGER NOT NULL UNIQUE,
	created_at INTEGER NOT NULL,
	last_group TEXT    NOT NULL DEFAULT '',
	ins_pushed INTEGER NOT NULL DEFAULT 0,
	res_pulled INTEGER NOT NULL DEFAULT 0
);

-- A TaskIns until the run's ServerApp has its result (or the sweep forgets
-- it). msg is the TaskIns as pushed, with the data of its large arrays left
-- out: task_blobs says which arrays, and blobs holds their data. seq is the
-- delivery order of each node's queue. answered: a TaskRes is stored (the
-- node's, or the made-up NODE_UNAVAILABLE one); res_delivered_at: when
-- PullTaskRes first delivered it (the pair is kept, its TaskIns arrays
-- released, until the run's next PullTaskRes does not ask for it again).
CREATE TABLE task_ins (
	seq               INTEGER PRIMARY KEY AUTOINCREMENT,
	id                TEXT    NOT NULL UNIQUE,
	run_id            INTEGER NOT NULL,
	consumer          INTEGER NOT NULL,
	consumer_identity TEXT    NOT NULL,
	expires_at        INTEGER NOT NULL,
	delivered_at      INTEGER,
	answered          INTEGER NOT NULL DEFAULT 0,
	res_delivered_at  INTEGER,
	msg               BLOB    NOT NULL
);
CREATE INDEX task_ins_run_delivered ON task_ins (run_id) WHERE res_delivered_at IS NOT NULL;
CREATE INDEX task_ins_queue ON task_ins (consumer, seq) WHERE delivered_at IS NULL;
CREATE INDEX task_ins_expiry ON task_ins (expires_at);

-- The result of a TaskIns, keyed by the TaskIns it answers.
CREATE TABLE task_res (
	ins_id TEXT PRIMARY KEY,
	msg    BLOB NOT NULL
);

-- TaskIns whose result was delivered, remembered until they would have
-- expired, so that a late or repeated result from their consumer is
-- accepted and discarded.
CREATE TABLE gone (
	ins_id            TEXT PRIMARY KEY,
	consumer          INTEGER NOT NULL,
	consumer_identity TEXT    NOT NULL,
	until_at          INTEGER NOT NULL
);
CREATE INDEX gone_until ON gone (until_at);

-- Parameter arrays, once by content (SHA-256), with the number of task_blobs
-- rows that reference them, in chunks of at most a few MiB.
CREATE TABLE blobs (
	hash BLOB PRIMARY KEY,
	size INTEGER NOT NULL,
	refs INTEGER NOT NULL
);
CREATE TABLE blob_chunks (
	hash BLOB    NOT NULL,
	n    INTEGER NOT NULL,
	data BLOB    NOT NULL,
	PRIMARY KEY (hash, n)
);

-- Which array of a task's message (kind 0: the TaskIns, 1: its TaskRes;
-- pos: its place in state.EachArray's order) holds which blob.
CREATE TABLE task_blobs (
	ins_id TEXT    NOT NULL,
	kind   INTEGER NOT NULL,
	pos    INTEGER NOT NULL,
	hash   BLOB    NOT NULL,
	PRIMARY KEY (ins_id, kind, pos)
);
