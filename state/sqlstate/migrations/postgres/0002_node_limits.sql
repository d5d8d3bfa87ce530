-- Schema version 2: the limits on registered nodes, and revocation (the
-- same as SQLite's version 3, see migrations/sqlite).

ALTER TABLE nodes ADD COLUMN certificate TEXT NOT NULL DEFAULT '';
CREATE INDEX nodes_certificate ON nodes (certificate) WHERE certificate <> '';
CREATE INDEX nodes_identity ON nodes (identity, online_until);
CREATE INDEX nodes_online_until ON nodes (online_until);

-- The row CreateNode locks (FOR UPDATE) while it checks the limits, so
-- that the replicas admit nodes one at a time.
INSERT INTO meta (key, value) VALUES ('node_admission', 0) ON CONFLICT (key) DO NOTHING;
