package sqlstate

import (
	"context"
	"database/sql"
	"errors"

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
	// lockMigrations serialises migrations across processes in tx
	// (nothing in SQLite, whose write transaction already does).
	lockMigrations func(ctx context.Context, tx *sql.Tx) error
}

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
