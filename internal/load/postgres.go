package load

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sepal-fl/sepal/internal/pgtest"
)

// Postgres is a throwaway PostgreSQL server for a load run, started by
// internal/pgtest with PostgreSQL's durable defaults (fsync on), so that
// its cost compares with a SQLite file written with fsync.
type Postgres struct {
	srv *pgtest.Server
	pid int // the postmaster
	dbs atomic.Int64
}

// StartPostgres starts the server (Debian's postgresql package; as the
// user nobody when run as root). Close stops it and removes its files.
func StartPostgres() (*Postgres, error) {
	srv, err := pgtest.StartWith(pgtest.StartOptions{Durable: true})
	if err != nil {
		return nil, fmt.Errorf("starting PostgreSQL for --postgres: %w", err)
	}
	pid, err := PostmasterPID(filepath.Join(srv.Dir, "data"))
	if err != nil {
		srv.Close()
		return nil, err
	}
	return &Postgres{srv: srv, pid: pid}, nil
}

// NewDatabase creates a new, empty database and returns its connection
// string.
func (p *Postgres) NewDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("load_%d", p.dbs.Add(1))
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, p.srv.DSN("postgres"))
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	return p.srv.DSN(name), nil
}

// CPU is the CPU time the server's processes have spent so far (TreeCPU
// of the postmaster).
func (p *Postgres) CPU() (time.Duration, error) { return TreeCPU(p.pid) }

// Close stops the server and removes its files.
func (p *Postgres) Close() error { return p.srv.Close() }
