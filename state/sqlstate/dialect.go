package sqlstate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
)

// dialect is what differs between the databases the SQL state runs on.
// The queries in this package are written once, in the SQL that SQLite and
// PostgreSQL share (placeholders $1..., ON CONFLICT, RETURNING); a dialect
// adds only what cannot be shared.
type dialect struct {
	// name is the database's name, for messages.
	name string
	// migrations is the folder of numbered .sql files under migrations/.
	migrations string
	// forUpdate follows a SELECT whose rows the transaction then changes:
	// "" where a write transaction already excludes every other writer
	// (SQLite), " FOR UPDATE" where rows must be locked (PostgreSQL).
	forUpdate string
	// skipLocked follows the SELECT that picks the next TaskIns to
	// deliver, so that racing transactions take different rows instead of
	// waiting for each other ("" in SQLite).
	skipLocked string
	// readOnly begins transactions that only read.
	readOnly *sql.TxOptions
	// serializeWrites: the database takes one writer at a time, so the
	// State queues its own writers rather than have them wait in the
	// database (SQLite).
	serializeWrites bool
	// limit spells a LIMIT of n rows, all of them when n <= 0.
	limit func(n int) string
	// classify maps a database error to a gRPC code and a hint for the
	// operator ("" if none): Unavailable for what a retry may cure (busy,
	// disk full, connection lost), Internal otherwise.
	classify func(error) (codes.Code, string)
	// retry reports whether a transaction that failed with err may simply
	// run again, and how many attempts in all it may take: the database
	// rolled it back as a whole (a deadlock, a serialization failure), or
	// its connection broke before the commit (committing false: nothing
	// was committed). Nil: never.
	retry func(err error, committing bool) (attempts int, ok bool)
	// alive is a SQL condition, with %s standing for an expression that
	// gives a replica id, true while that replica (a State, in this
	// process or another) runs on the database; see replicas.go.
	alive string
	// lockJoin serialises the replicas that join the database, so that
	// each sees the ones that joined before it (nil where a write
	// transaction already excludes every other: SQLite).
	lockJoin func(ctx context.Context, tx *sql.Tx) error
	// ownsDatabase: one process at a time opens the database (SQLite, by
	// its lock), so what only needs to outlive a call, not the process,
	// may stay in the process (the node signatures of
	// LinkState.UseSignature).
	ownsDatabase bool
	// check is the query of Check: it reads the schema version.
	check string
	// writeChunks, if set, writes the chunks of the new array h in tx
	// (rows of blob_chunks, n from 0, chunkSize bytes each) without
	// copying them into buffers of their own; nil: one INSERT a chunk.
	writeChunks func(ctx context.Context, tx *txn, h sum, data []byte) error
	// readChunks, if set, appends the chunks of array h, in order, to out
	// (of capacity its size) without a copy of each chunk on the way; nil:
	// one row a chunk through database/sql.
	readChunks func(ctx context.Context, tx *txn, h sum, out []byte) ([]byte, error)
}

// aliveSQL returns d.alive for the replica id expression expr.
func (d *dialect) aliveSQL(expr string) string { return fmt.Sprintf(d.alive, expr) }

// classifyContext handles the errors every database shares.
func classifyContext(err error) (codes.Code, bool) {
	switch {
	case errors.Is(err, context.Canceled):
		return codes.Canceled, true
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded, true
	case errors.Is(err, sql.ErrConnDone), errors.Is(err, sql.ErrTxDone):
		return codes.Unavailable, true
	}
	return codes.OK, false
}
