package sqlstate

import (
	"context"
	"database/sql/driver"
	"strings"
)

// SQLite parses a statement's text each time it is run as text: the
// driver prepares it, runs it once and finalizes it, and for the small
// queries of a poll the parser is most of the work. So each SQLite
// connection of a State keeps its statements prepared, by text, and runs
// them again with new arguments (the driver resets a statement after each
// use, which also leaves it usable after an error or a context that ended
// mid-query). This happens below database/sql, in a wrapper around the
// driver's connection, for three reasons:
//
//   - database/sql's own cache (a DB.Prepare'd Stmt used through
//     Tx.StmtContext) prepares first on a connection of its choice, which
//     a transaction holding one of the pool's few connections may wait for
//     forever, and it costs allocations and locks on every use;
//   - only the connection sees when a query's rows are closed, so only it
//     knows exactly when a statement is free again (see stmtConn.stmt);
//   - every query of the package gains, without a change where it is run.
//
// PostgreSQL needs none of this: pgx keeps the statements it runs
// prepared on each connection already.

// maxStmts bounds the statements a connection keeps prepared: more than
// the package has distinct queries, so that each is parsed once per
// connection. Texts that vary (a LIMIT) take their turn: the statement
// used least recently goes first.
const maxStmts = 256

// sqliteConn is what database/sql uses of a connection of the SQLite
// driver, which the wrapper must pass on.
type sqliteConn interface {
	driver.Conn
	driver.ConnBeginTx
	driver.ConnPrepareContext
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.SessionResetter
	driver.Validator
}

// sqliteStmt is a statement of the SQLite driver.
type sqliteStmt interface {
	driver.Stmt
	driver.StmtExecContext
	driver.StmtQueryContext
}

// sqliteRows is what database/sql uses of the SQLite driver's rows.
type sqliteRows interface {
	driver.Rows
	driver.RowsColumnTypeDatabaseTypeName
	driver.RowsColumnTypeLength
	driver.RowsColumnTypeNullable
	driver.RowsColumnTypePrecisionScale
	driver.RowsColumnTypeScanType
}

// stmtConnector opens the SQLite driver's connections as stmtConns.
type stmtConnector struct {
	driver.Connector
}

// Connect implements driver.Connector.
func (c stmtConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	sc, ok := conn.(sqliteConn)
	if !ok {
		return conn, nil // a driver that changed: it still works, unprepared
	}
	return newStmtConn(sc, maxStmts), nil
}

// stmtConn is a SQLite connection that keeps up to max statements
// prepared, by text. database/sql uses a connection from one goroutine at
// a time (closing a query's rows too), so it needs no lock of its own.
type stmtConn struct {
	sqliteConn
	max   int
	stmts map[string]*cachedStmt
	// lru is the ring of stmts, the one used last after lru.
	lru cachedStmt
}

// cachedStmt is a prepared statement of a stmtConn.
type cachedStmt struct {
	query      string
	st         sqliteStmt
	busy       bool // its rows are open: running it again would reset them
	prev, next *cachedStmt
}

func newStmtConn(c sqliteConn, max int) *stmtConn {
	sc := &stmtConn{sqliteConn: c, max: max, stmts: map[string]*cachedStmt{}}
	sc.lru.prev, sc.lru.next = &sc.lru, &sc.lru
	return sc
}

// Unwrap returns the driver's connection (what sqlite.Limit looks for).
func (c *stmtConn) Unwrap() driver.Conn { return c.sqliteConn }

// cacheable reports whether query may be kept prepared: one statement (a
// script, such as a migration, is run as text, once).
func cacheable(query string) bool { return !strings.Contains(query, ";") }

// stmt returns the prepared statement of query, preparing it if need be,
// or nil when query is to run as text: a script, or a statement whose
// rows are open (a query run again inside the loop over its own rows),
// which the driver would reset under them.
func (c *stmtConn) stmt(ctx context.Context, query string) (*cachedStmt, error) {
	if c.max <= 0 || !cacheable(query) {
		return nil, nil
	}
	if cs := c.stmts[query]; cs != nil {
		if cs.busy {
			return nil, nil
		}
		cs.unlink()
		c.push(cs)
		return cs, nil
	}
	ds, err := c.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	st, ok := ds.(sqliteStmt)
	if !ok {
		ds.Close()
		c.max = 0 // a driver that changed: run everything as text
		return nil, nil
	}
	for len(c.stmts) >= c.max && c.evict() {
	}
	cs := &cachedStmt{query: query, st: st}
	c.stmts[query] = cs
	c.push(cs)
	return cs, nil
}

// push makes cs the statement used last.
func (c *stmtConn) push(cs *cachedStmt) {
	cs.prev, cs.next = c.lru.prev, &c.lru
	c.lru.prev.next = cs
	c.lru.prev = cs
}

func (cs *cachedStmt) unlink() {
	cs.prev.next, cs.next.prev = cs.next, cs.prev
	cs.prev, cs.next = nil, nil
}

// evict finalizes the statement used least recently whose rows are not
// open, and reports whether there was one (the statements are over max
// while more of them have rows open at once).
func (c *stmtConn) evict() bool {
	for cs := c.lru.next; cs != &c.lru; cs = cs.next {
		if !cs.busy {
			c.drop(cs)
			return true
		}
	}
	return false
}

func (c *stmtConn) drop(cs *cachedStmt) {
	cs.unlink()
	delete(c.stmts, cs.query)
	// The error of finalize is that of the statement's last run, which
	// its caller had already.
	cs.st.Close()
}

// ExecContext implements driver.ExecerContext.
func (c *stmtConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	cs, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	if cs == nil {
		return c.sqliteConn.ExecContext(ctx, query, args)
	}
	// The driver runs it to the end and resets it before it returns.
	return cs.st.ExecContext(ctx, args)
}

// QueryContext implements driver.QueryerContext.
func (c *stmtConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	cs, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	if cs == nil {
		return c.sqliteConn.QueryContext(ctx, query, args)
	}
	rows, err := cs.st.QueryContext(ctx, args)
	if err != nil {
		return nil, err
	}
	r, ok := rows.(sqliteRows)
	if !ok {
		rows.Close()
		c.drop(cs)
		c.max = 0 // a driver that changed: run everything as text
		return c.sqliteConn.QueryContext(ctx, query, args)
	}
	cs.busy = true
	return &cachedRows{sqliteRows: r, cs: cs}, nil
}

// Close finalizes the statements, then closes the connection (database/sql
// closes a connection's rows before it).
func (c *stmtConn) Close() error {
	c.finalize()
	return c.sqliteConn.Close()
}

// finalize finalizes every statement.
func (c *stmtConn) finalize() {
	for c.lru.next != &c.lru {
		c.drop(c.lru.next)
	}
}

// cachedRows are the rows of a cachedStmt, which is busy until they are
// closed. database/sql closes rows at their end, on an error, with the
// transaction and when the context ends, so a statement is never busy for
// longer than its transaction.
type cachedRows struct {
	sqliteRows
	cs *cachedStmt
}

// Close implements driver.Rows: the driver resets the statement.
func (r *cachedRows) Close() error {
	if r.cs == nil {
		return nil
	}
	err := r.sqliteRows.Close()
	r.cs.busy, r.cs = false, nil
	return err
}
