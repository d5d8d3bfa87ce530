-- Schema version 2: several States on one database (replicas.go).

-- Every State open on the database, while it is open: its id, and where it
-- runs (for the log).
CREATE TABLE replicas (
	id         INTEGER PRIMARY KEY,
	host       TEXT    NOT NULL,
	pid        INTEGER NOT NULL,
	started_at INTEGER NOT NULL
);

-- The replica that delivered the TaskIns: if it is gone and the TaskIns is
-- not answered, its node gets it again when it asks.
ALTER TABLE task_ins ADD COLUMN delivered_by INTEGER;
CREATE INDEX task_ins_unanswered ON task_ins (consumer, seq) WHERE delivered_at IS NOT NULL AND answered = 0;
