package sqlstate_test

import (
	"context"
	"crypto/rand"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

// smallDisk mounts a tmpfs of size bytes (root only) and returns its path.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the full-disk test needs root (to mount a small tmpfs); CI runs as root")
		}
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}

// TestDiskFull: a push that does not fit on the disk fails with
// Unavailable and a message that names the file and says the disk is
// full; what was committed before is all there, the SuperLink carries on
// with what fits, and the file opens again.
func TestDiskFull(t *testing.T) {
	path := filepath.Join(smallDisk(t, "12m"), "state.db") // an empty state takes 4 MiB (pages of 64 KiB)
	logs := &testkit.SyncBuffer{}
	o := sqlstate.SQLiteOptions{Options: sqlstate.Options{Logger: slog.New(slog.NewTextHandler(logs, nil))}}
	ctx := context.Background()
	s, err := sqlstate.OpenSQLite(ctx, path, o)
	if err != nil {
		t.Fatal(err)
	}
	node, err := s.CreateNode(ctx, state.NewNode{PingInterval: 3600})
	if err != nil {
		t.Fatal(err)
	}
	run, err := s.CreateRun(ctx)
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 16<<20)
	rand.Read(big)
	ti := statetest.TaskIns(run, node, 1.8e9)
	ti.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"p": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: big}}}}}
	_, err = s.PushTaskIns(ctx, []*flwrproto.TaskIns{ti})
	statetest.WantCode(t, "push onto a full disk", err, codes.Unavailable, "the disk is full")
	if err != nil && !strings.Contains(err.Error(), path) {
		t.Errorf("message does not name the file: %v", err)
	}
	if !strings.Contains(logs.String(), "state database failed") {
		t.Errorf("the failure was not logged:\n%s", logs)
	}
	// What fits still goes in.
	small := statetest.TaskIns(run, node, 1.8e9)
	if _, err := s.PushTaskIns(ctx, []*flwrproto.TaskIns{small}); err != nil {
		t.Fatalf("a small push after the full disk: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Logf("Close on a full disk: %v", err)
	}
	s, err = sqlstate.OpenSQLite(ctx, path, o)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	st, err := s.Stats(ctx)
	if err != nil || st.Nodes != 1 || st.Runs != 1 || st.TaskInsWaiting != 1 || st.Blobs != 0 {
		t.Fatalf("after the full disk: %+v %v, want the node, the run and the small task", st, err)
	}
	got, err := s.PullTaskIns(ctx, node, "")
	if err != nil || len(got) != 1 || got[0].TaskId != small.TaskId {
		t.Fatalf("pull after reopen: %v %v", got, err)
	}
}
