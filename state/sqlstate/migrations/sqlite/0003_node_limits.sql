-- Schema version 3: the limits on registered nodes, and revocation.

-- The client certificate a node was created with (certfmt.CertID: its
-- serial and issuer), '' without mutual TLS: revoking that certificate
-- forgets the node.
ALTER TABLE nodes ADD COLUMN certificate TEXT NOT NULL DEFAULT '';
CREATE INDEX nodes_certificate ON nodes (certificate) WHERE certificate <> '';
-- CreateNode counts the nodes of an identity, and finds the one offline
-- the longest to make room.
CREATE INDEX nodes_identity ON nodes (identity, online_until);
CREATE INDEX nodes_online_until ON nodes (online_until);

-- The row CreateNode locks while it checks the limits, so that States
-- sharing the database admit nodes one at a time.
INSERT INTO meta (key, value) VALUES ('node_admission', 0) ON CONFLICT (key) DO NOTHING;
