-- The SuperLink state on PostgreSQL (its schema version 1; the same tables
-- and columns as SQLite's versions 1 and 2, see migrations/sqlite). Times
-- are unix microseconds on the SuperLink's clock; booleans are 0 or 1 (so
-- that the SQL of the state is the same text on both databases); task ids
-- are UUID text.

-- meta holds single values: 'heartbeat', the last time a SuperLink on this
-- database was known to be running (the restart grace is counted from it).
CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value BIGINT NOT NULL
);

-- Every SuperLink running on the database (a replica): its id, which keys
-- the session advisory lock that shows it alive, and where it runs.
CREATE TABLE replicas (
	id         BIGINT  PRIMARY KEY,
	host       TEXT    NOT NULL,
	pid        INTEGER NOT NULL,
	started_at BIGINT  NOT NULL
);

-- seq is the join order (GetNodes lists nodes in it).
CREATE TABLE nodes (
	seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	id            BIGINT           NOT NULL UNIQUE,
	identity      TEXT             NOT NULL,
	ping_interval DOUBLE PRECISION NOT NULL,
	created_at    BIGINT           NOT NULL,
	online_until  BIGINT           NOT NULL,
	offline       INTEGER          NOT NULL DEFAULT 0 -- a missed ping was noticed and logged
);

CREATE TABLE runs (
	seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	id         BIGINT NOT NULL UNIQUE,
	created_at BIGINT NOT NULL,
	last_group TEXT   NOT NULL DEFAULT '',
	ins_pushed BIGINT NOT NULL DEFAULT 0,
	res_pulled BIGINT NOT NULL DEFAULT 0
);

-- A TaskIns until the run's ServerApp has its result (or the sweep forgets
-- it); see migrations/sqlite/0001_init.sql. delivered_by: the replica that
-- delivered it.
CREATE TABLE task_ins (
	seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	id                TEXT    NOT NULL UNIQUE,
	run_id            BIGINT  NOT NULL,
	consumer          BIGINT  NOT NULL,
	consumer_identity TEXT    NOT NULL,
	expires_at        BIGINT  NOT NULL,
	delivered_at      BIGINT,
	delivered_by      BIGINT,
	answered          INTEGER NOT NULL DEFAULT 0,
	res_delivered_at  BIGINT,
	msg               BYTEA   NOT NULL
);
CREATE INDEX task_ins_run_delivered ON task_ins (run_id) WHERE res_delivered_at IS NOT NULL;
CREATE INDEX task_ins_queue ON task_ins (consumer, seq) WHERE delivered_at IS NULL;
CREATE INDEX task_ins_unanswered ON task_ins (consumer, seq) WHERE delivered_at IS NOT NULL AND answered = 0;
CREATE INDEX task_ins_expiry ON task_ins (expires_at);

CREATE TABLE task_res (
	ins_id TEXT  PRIMARY KEY,
	msg    BYTEA NOT NULL
);

CREATE TABLE gone (
	ins_id            TEXT   PRIMARY KEY,
	consumer          BIGINT NOT NULL,
	consumer_identity TEXT   NOT NULL,
	until_at          BIGINT NOT NULL
);
CREATE INDEX gone_until ON gone (until_at);

-- Parameter arrays, once by content (SHA-256), in chunks of 1 MiB. The
-- chunks are stored out of line and uncompressed (STORAGE EXTERNAL):
-- parameters do not compress, and trying costs CPU on every write.
CREATE TABLE blobs (
	hash BYTEA  PRIMARY KEY,
	size BIGINT NOT NULL,
	refs BIGINT NOT NULL
);
CREATE TABLE blob_chunks (
	hash BYTEA   NOT NULL,
	n    INTEGER NOT NULL,
	data BYTEA   NOT NULL,
	PRIMARY KEY (hash, n)
);
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE task_blobs (
	ins_id TEXT    NOT NULL,
	kind   INTEGER NOT NULL,
	pos    INTEGER NOT NULL,
	hash   BYTEA   NOT NULL,
	PRIMARY KEY (ins_id, kind, pos)
);
