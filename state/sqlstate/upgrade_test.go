package sqlstate

import (
	"context"
	"database/sql"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/state/statetest"
)

// TestUpgradeFromVersion1: a SQLite file of schema version 1 (written by
// the Sepal before replicas) opens upgraded to the current version, its
// content kept, and a TaskIns delivered before the upgrade and not
// answered goes again to its node (no replica that delivered it lives).
func TestUpgradeFromVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := sqliteDialect.loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	ti := statetest.TaskIns(7, 42, 1.8e9)
	ti.TaskId = "1b0f5a52-3f2c-4a4e-9a55-3a3c2f3c0a11"
	msg, _ := proto.Marshal(ti)
	for _, stmt := range []string{
		`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`,
		ms[0].sql,
		`INSERT INTO schema_migrations VALUES (1, '0001_init.sql', 0)`,
		`INSERT INTO meta VALUES ('heartbeat', 1795638840000000)`,
		`INSERT INTO nodes (id, identity, ping_interval, created_at, online_until) VALUES (42, '', 30, 1795638800000000, 1795638860000000)`,
		`INSERT INTO runs (id, created_at) VALUES (7, 1795638800000000)`,
	} {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%.60s: %v", stmt, err)
		}
	}
	if _, err := db.Exec(`INSERT INTO task_ins (id, run_id, consumer, consumer_identity, expires_at, delivered_at, msg) VALUES ($1, 7, 42, '', 9795638800000000, 1795638830000000, $2)`, ti.TaskId, msg); err != nil {
		t.Fatal(err)
	}
	db.Close()

	logs := &testkit.SyncBuffer{}
	s, err := OpenSQLite(ctx, path, SQLiteOptions{Options: Options{Logger: slog.New(slog.NewTextHandler(logs, nil))}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !strings.Contains(logs.String(), "state database upgraded") || !strings.Contains(logs.String(), "schema_version_was=1") {
		t.Errorf("the upgrade was not logged:\n%s", logs)
	}
	if v := SchemaVersion(); v < 2 {
		t.Fatalf("schema version %d", v)
	}
	got, err := s.PullTaskIns(ctx, 42, "")
	if err != nil || len(got) != 1 || got[0].TaskId != ti.TaskId {
		t.Fatalf("the TaskIns delivered before the upgrade: %v %v, want it again", got, err)
	}
}
